"""A target opened on the server once: its handle, its encryption and pin, and every request made on it.

:meth:`RemoteTarget.open_read` and :meth:`RemoteTarget.open_push` run the whole open in one place: the pin
lookup, the probe of an encrypted target, the key check and the re-open at an encrypted sub-path (the rules are
in :mod:`neotwist.client.encryption`'s docstring). What comes back knows whether the target is encrypted (its
``crypt``), its chunker (keyed for an encrypted target), and whether it existed; requests made on it
(:meth:`~RemoteTarget.snapshots`, :meth:`~RemoteTarget.entries`, :meth:`~RemoteTarget.check` ...) name paths
in plaintext in their errors, and decrypt what they list. Callers never see a handle number.

Refusals are typed: :class:`~neotwist.client.encryption.EncryptionRefused` and its
:class:`~neotwist.client.encryption.EncryptionDowngrade`, the crypto errors of the key, and
:class:`~neotwist.wire.errors.RemoteError` (a ``code`` and, where the server names one, a ``path``) for what the
server refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from neotwist import paths
from neotwist.client import stash
from neotwist.client.encryption import (
    Crypt,
    EncryptionDowngrade,
    EncryptionRefused,
    KeySource,
    Namer,
    check_chunker,
    decrypt_deleted,
    decrypt_versions,
    place,
    plain_errors,
)
from neotwist.client.pins import TargetPin
from neotwist.crypto import WrongKey
from neotwist.crypto.keys import MasterKey, key_check_id
from neotwist.wire.errors import ErrorCode, RemoteError
from neotwist.wire.messages import (
    CheckReport,
    ChunkerParams,
    Close,
    DeletedRecord,
    Entry,
    Open,
    Opened,
    Pruned,
    RemoveTarget,
    SnapshotRecord,
    TargetRemoved,
    VersionRecord,
)
from neotwist.wire.peer import Peer


@dataclass(frozen=True)
class Access:
    """What this client brings to an open besides the target's name: its key (asked for only when an encrypted
    target is met), the target's encryption pin (None: pins are not used), ``--require-encryption``, and
    ``--grant-root`` (a grant on a sub-path of an encrypted target: that sub-path in plaintext)."""

    keys: KeySource | None = None
    pin: TargetPin | None = None
    require_encryption: bool = False
    grant_root: str = ""


class RemoteTarget:
    """One open handle on a target (see the module docstring). Made by :meth:`open_read` / :meth:`open_push`."""

    def __init__(self, peer: Peer, name: str, subpath: str, opened: Opened, crypt: Crypt | None) -> None:
        self.peer = peer
        self.name = name
        self.subpath = subpath  # in plaintext, from the handle root the account sees
        self.opened = opened
        self.crypt = crypt
        self.refused: list[str] = []  # entries whose names or metadata failed authentication (left out)
        self._namer: Namer | None = None

    # --- opening -----------------------------------------------------------------------------------------

    @classmethod
    async def open_read(cls, peer: Peer, name: str, subpath: str = "", access: Access = Access()) -> RemoteTarget:
        """Open ``name`` at ``subpath`` for reading; an encrypted target's key is checked and unlocked and its
        sub-path opened in its encrypted form."""
        return await _Opening(peer, name, subpath, access).read()

    @classmethod
    async def open_push(
        cls,
        peer: Peer,
        name: str,
        subpath: str = "",
        access: Access = Access(),
        *,
        encrypt: bool = False,
        keep_history: bool | None = None,
        create: bool = True,
    ) -> RemoteTarget:
        """Open ``name`` at ``subpath`` for a push, creating it (encrypted with ``encrypt``) if it is missing;
        ``keep_history`` goes with every open (see ``Open``). Without ``create`` (a dry run) a missing target is
        the server's NO_SUCH_TARGET error, and nothing is created."""
        return await _Opening(peer, name, subpath, access).push(encrypt, keep_history, create)

    @classmethod
    async def open_root(cls, peer: Peer, name: str, need_snapshot: bool = True) -> RemoteTarget:
        """Open the whole of ``name`` for requests that name no path (prune, remove), without its key: such
        requests need none, encrypted or not. ``need_snapshot``: StashError when the target holds none yet."""
        opened = await peer.request(Open(rid=0, target=name, path="", mode="read"))
        if not isinstance(opened, Opened):
            raise stash.StashError(f"the server answered open with {type(opened).__name__}")
        target = cls(peer, name, "", opened, None)
        if need_snapshot:
            target.require_snapshot()
        return target

    # --- what it is --------------------------------------------------------------------------------------

    @property
    def handle(self) -> int:
        return self.opened.handle

    @property
    def encrypted(self) -> bool:
        return self.crypt is not None

    @property
    def key_id(self) -> str | None:
        """The id (hex) of the key an encrypted target was opened with; its pin names this key from now on."""
        return self.crypt.master.id.hex() if self.crypt is not None else None

    @property
    def exists(self) -> bool:
        """False when this open created the target (a push's first)."""
        return self.opened.exists

    @property
    def latest(self) -> int | None:
        return self.opened.latest

    @property
    def chunker(self) -> ChunkerParams:
        """The chunker to cut files with: the target's, with the keyed seed for an encrypted target."""
        return self.opened.chunker if self.crypt is None else self.crypt.chunker(self.opened.chunker)

    def require_snapshot(self) -> None:
        """StashError (one line, says to push first) when the target holds no snapshot yet."""
        if not self.opened.exists or self.opened.latest is None:
            raise stash.StashError(f"target {self.name} has no snapshot yet; push to it first")

    def plain_errors(self) -> contextlib.AbstractContextManager[None]:
        """Around requests on this handle: a RemoteError from within names paths in plaintext."""
        return plain_errors(self.crypt)

    @property
    def namer(self) -> Namer | None:
        """Plaintext names for the encrypted paths history records carry (None for a plaintext target)."""
        if self.crypt is not None and self._namer is None:
            self._namer = Namer(self.peer, self.handle, self.crypt)
        return self._namer

    # --- requests ----------------------------------------------------------------------------------------

    async def snapshots(self, named: bool = True) -> list[SnapshotRecord]:
        """The kept snapshots, oldest first (an encrypted target's push roots named in plaintext, unless not
        ``named``: that costs a listing of each snapshot)."""
        with self.plain_errors():
            records = await stash.snapshots(self.peer, self.handle)
            namer = self.namer
            if namer is None or not named:
                return records
            return [await _named_root(namer, r) for r in records]

    async def entries(
        self, snapshot: int | None = None, path: str = "", recursive: bool = True
    ) -> tuple[int, list[Entry]]:
        """(snapshot id, entries at and below ``path``) of ``snapshot`` (None: the latest), decrypted for an
        encrypted target; entries that failed authentication are left out and named in :attr:`refused`."""
        with self.plain_errors():
            wanted = paths.to_wire(path) if self.crypt is None or not path else self.crypt.encrypt_subpath(path)
            snap, entries = await stash.entries(self.peer, self.handle, snapshot, wanted, recursive)
            if self.crypt is not None:
                decrypted = self.crypt.decrypt_listing(entries)
                self.refused.extend(decrypted.errors)
                entries = decrypted.entries
            return snap, entries

    async def versions(self, path: str) -> list[VersionRecord]:
        """Every stored version of ``path`` (relative to the handle root), oldest first."""
        with self.plain_errors():
            crypt = self.crypt
            wanted = crypt.encrypt_subpath(path) if crypt is not None else paths.to_wire(path)
            records = await stash.versions(self.peer, self.handle, wanted)
            if crypt is not None:
                records = await decrypt_versions(self.peer, self.handle, crypt, path, records)
            return records

    async def deleted(self) -> list[DeletedRecord]:
        """Paths missing from the current view that a kept snapshot still holds."""
        with self.plain_errors():
            records = await stash.deleted(self.peer, self.handle)
            namer = self.namer
            return records if namer is None else await decrypt_deleted(namer, records)

    async def check(
        self, verify_data: bool = False, on_progress: Callable[[int, int], None] | None = None, repair: bool = False
    ) -> CheckReport:
        """The server's check of the target (``repair``: mark what is damaged); damaged files named in
        plaintext when the key can name them."""
        with self.plain_errors():
            report = await stash.check(self.peer, self.handle, verify_data, on_progress, repair)
            namer = self.namer
            if namer is None or not report.files:
                return report
            named = []
            for f in report.files:
                e = await namer.entry(f.snapshots[-1], f.path) if f.snapshots else None
                named.append(msgspec.structs.replace(f, path=e.path if e is not None else f"(encrypted) {f.path}"))
            return msgspec.structs.replace(report, files=named)

    async def prune(self, policy: dict[str, Any], dry_run: bool = False) -> Pruned:
        """Apply a retention policy (``keep_last`` ... ``keep_within``) to the whole target."""
        with self.plain_errors():
            return await stash.prune(self.peer, self.handle, policy, dry_run)

    async def remove(self) -> TargetRemoved:
        """Remove the whole target (needs the full right; the handle is closed)."""
        reply = await self.peer.request(RemoveTarget(rid=0, handle=self.handle))
        if not isinstance(reply, TargetRemoved):
            raise stash.StashError(f"the server answered remove_target with {type(reply).__name__}")
        return reply

    async def close(self) -> None:
        await self.peer.request(Close(rid=0, handle=self.handle))

    @property
    def errors(self) -> list[str]:
        """What could not be named or listed (decryption refusals), one line each."""
        return self.refused + (self._namer.errors if self._namer is not None else [])


async def _named_root(namer: Namer, record: SnapshotRecord) -> SnapshotRecord:
    """A snapshot record whose push root (an encrypted path) is shown in plaintext."""
    if not record.root:
        return record
    e = await namer.entry(record.id, record.root)
    return msgspec.structs.replace(record, root=e.path if e is not None else "(unnamed)")


# --- the one open flow ----------------------------------------------------------------------------------------


class _Opening:
    """One open of a target, from the pin lookup to the handle a :class:`RemoteTarget` keeps.

    A plaintext sub-path is never sent before the target is known not to be encrypted: a pinned (or, for a
    push, ``--require-encryption``) target is opened encrypted at once; otherwise the handle root is opened
    first and the sub-path re-opened in the form the answer calls for (a close and an open share one round
    trip). Nothing is sent to a handle before its key has been checked."""

    def __init__(self, peer: Peer, name: str, subpath: str, access: Access) -> None:
        paths.check_local(subpath)  # a bad sub-path is refused as the server would, before anything is opened
        self.peer = peer
        self.name = name
        self.subpath = subpath
        self.access = access
        self.grant_root = access.grant_root.strip("/")
        pin = access.pin
        found = pin.lookup() if pin is not None else None
        self.pinned: str | None = found.key_id if found is not None else None

    def _made(self, opened: Opened, crypt: Crypt | None) -> RemoteTarget:
        return RemoteTarget(self.peer, self.name, self.subpath, opened, crypt)

    # --- the wire ---

    async def _open(self, message: Open) -> Opened:
        opened = await self.peer.request(message)
        assert isinstance(opened, Opened)
        return opened

    async def _close(self, opened: Opened) -> None:
        await self.peer.request(Close(rid=0, handle=opened.handle))

    async def _reopen(self, opened: Opened, message: Open) -> Opened:
        """Close ``opened`` and open ``message`` in the same round trip (the server answers in order)."""
        closing = self.peer.request(Close(rid=0, handle=opened.handle))
        opening = self.peer.request(message)
        try:
            await closing
        except BaseException:
            opening.addErrback(lambda _f: None)
            raise
        again = await opening
        assert isinstance(again, Opened)
        return again

    async def _checked(self, opened: Opened, check: Callable[[], Crypt | None]) -> Crypt | None:
        """``check()`` on what the server said; on any refusal the handle is closed before it is raised."""
        try:
            return check()
        except BaseException:
            await self._close(opened)
            raise

    # --- the key and the pin ---

    def _unlock(self, missing: str, key_id: str | None = None, claim: str = "") -> MasterKey:
        """The unlocked key: refused with ``missing`` when this run has no key source; a key file holding another
        key than ``key_id`` is refused before the passphrase is asked (``claim`` says who named that key)."""
        source = self.access.keys
        if source is None:
            raise EncryptionRefused(missing)
        source.check_id(key_id, claim)
        return source.master()

    def _pinned_claim(self) -> str:
        pin = self.access.pin
        if self.pinned is None or pin is None:
            return ""
        return f"target {self.name} is pinned as encrypted with key {self.pinned} ({pin.where})"

    def _refuse_claim(self, encrypted: bool, named: bytes | None, required: bool) -> None:
        """EncryptionDowngrade when what the server says about the target contradicts its pin (or
        ``required``, --require-encryption)."""
        target, pinned, pin = self.name, self.pinned, self.access.pin
        if pinned is not None and pin is not None:
            if not encrypted:
                raise EncryptionDowngrade(
                    f"the server says target {target} is not encrypted, but this client has seen it encrypted with "
                    f"key {pinned} ({pin.where}): refusing, nothing was pushed or written (a server must not turn "
                    f"an encrypted target into plaintext); if the target was deliberately removed and re-created, "
                    f"run 'neo-key forget {pin.remote}'"
                )
            if named is None or named.hex() != pinned:
                other = named.hex() if named is not None else "an unknown key"
                raise EncryptionDowngrade(
                    f"the server says target {target} is encrypted with {other}, but this client has seen it "
                    f"encrypted with key {pinned} ({pin.where}): refusing, nothing was pushed or written; if the "
                    f"target was deliberately removed and re-created, run 'neo-key forget {pin.remote}'"
                )
        elif required and not encrypted:
            raise EncryptionDowngrade(
                f"the server says target {target} is not encrypted, and --require-encryption was given: refusing, "
                "nothing was pushed or written"
            )

    def _pin(self, master: MasterKey) -> None:
        """Remember that the target is encrypted with ``master`` (after its key-check record verified). Nothing
        is written, nor the pin file's lock taken, when it is pinned so already: an encrypted target must stay
        usable with a read-only config directory."""
        pin = self.access.pin
        if pin is not None and self.pinned != master.id.hex():
            pin.record(master.id.hex())

    # --- read ---

    async def read(self) -> RemoteTarget:
        target, subpath, required = self.name, self.subpath, self.access.require_encryption
        if self.pinned is not None and subpath:
            # pinned: the sub-path goes out at once, in its encrypted form
            master = self._unlock(f"target {target} is encrypted: this needs its key", self.pinned,
                                  self._pinned_claim())  # fmt: skip
            root, path = place(master, self.grant_root, subpath)
            opened = await self._open(Open(rid=0, target=target, path=path, mode="read"))

            def pinned() -> Crypt:
                self._refuse_claim(opened.encrypted, key_check_id(opened.key_check), required)
                keys = master.open_target(opened.key_check)
                check_chunker(opened.chunker)
                return Crypt.make(master, keys, root, (subpath, path))

            return self._made(opened, await self._checked(opened, pinned))
        opened = await self._open(Open(rid=0, target=target, path="", mode="read"))
        await self._checked(opened, lambda: self._refuse_claim(opened.encrypted, key_check_id(opened.key_check),
                                                                 required))  # fmt: skip
        if not opened.encrypted:
            if subpath:
                plain = Open(rid=0, target=target, path=paths.to_wire(subpath), mode="read")
                opened = await self._reopen(opened, plain)
            return self._made(opened, None)
        named = key_check_id(opened.key_check)

        def unlocked() -> Crypt:
            # a foreign key file is refused before the passphrase is asked
            master = self._unlock(f"target {target} is encrypted: reading it needs its key",
                                  named.hex() if named else None)  # fmt: skip
            keys = master.open_target(opened.key_check)
            check_chunker(opened.chunker)
            self._pin(master)
            root, path = place(master, self.grant_root, subpath)
            return Crypt.make(master, keys, root, (subpath, path))

        crypt = await self._checked(opened, unlocked)
        assert crypt is not None
        path = crypt.opened[1]
        if not path:
            return self._made(opened, crypt)
        again = await self._reopen(opened, Open(rid=0, target=target, path=path, mode="read"))
        if again.key_check != opened.key_check:
            await self._close(again)
            raise WrongKey("the target's key-check record changed between two opens; try again")
        return self._made(again, crypt)

    # --- push ---

    async def push(self, encrypt: bool, keep_history: bool | None, create: bool = True) -> RemoteTarget:
        target, subpath = self.name, self.subpath
        if encrypt or self.pinned is not None or self.access.require_encryption:
            what = "--encrypt" if encrypt else f"target {target} is encrypted: this push"
            return await self._encrypted_push(f"{what} needs a key: create one with 'neo-key init'", encrypt,
                                              keep_history, pinned=True, may_create=create)  # fmt: skip
        message = Open(rid=0, target=target, path=paths.to_wire(subpath), mode="push", create=create,
                       keep_history=keep_history)  # fmt: skip
        try:
            opened = await (self._probe_then_open(message) if subpath else self._open(message))
        except RemoteError as e:
            if e.code != ErrorCode.ENCRYPTION_MISMATCH:
                raise
            return await self._encrypted_push(f"target {target} is encrypted: this push needs its key", False,
                                              keep_history, pinned=False, may_create=create)  # fmt: skip
        return self._made(opened, None)

    async def _probe_then_open(self, message: Open) -> Opened:
        """Open the handle root for a push without creating anything, and only then ``message`` (at the
        plaintext sub-path): an encrypted target answers the first open with ENCRYPTION_MISMATCH, before the
        sub-path is sent; a missing one with NO_SUCH_TARGET (the push creates it in plaintext)."""
        try:
            probe = await self._open(Open(rid=0, target=self.name, path="", mode="push"))
        except RemoteError as e:
            if e.code != ErrorCode.NO_SUCH_TARGET:
                raise
            return await self._open(message)
        return await self._reopen(probe, message)

    async def _encrypted_push(
        self, missing: str, encrypt: bool, keep_history: bool | None, *, pinned: bool, may_create: bool = True
    ) -> RemoteTarget:
        """The encrypted open of a push. It creates the target with a new key-check record when ``encrypt``
        asks, or when the target is pinned (a pinned target that is gone is re-created encrypted, never in
        plaintext). ``missing``: the refusal when this run has no key. ``pinned``: the pin and
        --require-encryption apply (not after a plaintext open found the target encrypted). Without
        ``may_create`` (a dry run) nothing is created."""
        target, subpath = self.name, self.subpath
        key_pin = self.pinned if pinned else None
        required = self.access.require_encryption if pinned else False
        master = self._unlock(missing, key_pin, self._pinned_claim() if pinned else "")
        create = (encrypt or key_pin is not None) and may_create
        record, keys = master.new_target() if create else (b"", None)
        root, path = place(master, self.grant_root, subpath)
        if not pinned:
            self.pinned = None
        try:
            opened = await self._open(Open(rid=0, target=target, path=path, mode="push", create=create,
                                           encrypted=True, keep_history=keep_history, key_check=record))  # fmt: skip
        except RemoteError as e:
            if e.code == ErrorCode.ENCRYPTION_MISMATCH:
                self._refuse_claim(False, None, required)
                if encrypt:
                    raise EncryptionRefused(
                        f"target {target} exists and is not encrypted; --encrypt only applies when a push creates "
                        "a target: push to a new target name"
                    ) from None
            if e.code == ErrorCode.NO_SUCH_TARGET and not create and may_create:
                raise EncryptionRefused(
                    f"there is no target {target}, and --require-encryption creates no plaintext target: add "
                    "--encrypt to create it encrypted"
                ) from None
            raise

        def checked() -> Crypt:
            nonlocal keys
            named = key_check_id(opened.key_check) if opened.exists or keys is None else master.id
            self._refuse_claim(opened.encrypted, named, required)
            if not opened.encrypted:
                raise EncryptionDowngrade(
                    f"the server opened target {target} without encryption for an encrypted push: refusing, "
                    "nothing was sent"
                )
            check_chunker(opened.chunker)
            if opened.exists or keys is None:  # an existing target: its record decides (and must be this key's)
                keys = master.open_target(opened.key_check)
            self._pin(master)
            return Crypt.make(master, keys, root, (subpath, path))

        return self._made(opened, await self._checked(opened, checked))
