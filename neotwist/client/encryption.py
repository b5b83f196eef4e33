"""Opening a target with or without encryption, and the key a push or pull then works with.

neo-push and neo-pull do not need to be told that a target is encrypted: the server says so. But the server
is the adversary (docs/encryption.md), so what it says is checked against what this client already knows:

- **Pins** (:mod:`neotwist.client.pins`). Once this client has pushed to or read an encrypted target, it pins
  ``(address, account, target) -> key id``. A server that later calls that target plaintext, or names another
  key, is refused with :class:`EncryptionDowngrade` (exit 3): otherwise it could make the next push store new
  files in plaintext, or a pull accept plaintext it forged. ``--require-encryption`` refuses plaintext the same
  way on a client that has no pin yet.
- **No plaintext sub-path before the encryption is known.** A pinned target is opened at its encrypted
  sub-path at once. Otherwise a sub-path is only sent after the handle root (``""``, which is a grantee's grant
  root) told whether the target is encrypted; then it is opened in its right form.
- **push**: ``open push`` with ``encrypted = false`` succeeds on a plaintext (or new) target; on an encrypted
  target the server answers ``encryption_mismatch``, and the client unlocks its key and opens again at the
  encrypted sub-path (a push to a sub-path first opens the root without ``create``, so that the sub-path goes
  out only in the right form). ``--encrypt`` (and a pin) unlocks first and opens with a new key-check record,
  which the server keeps only if the open creates the target; an existing plaintext target answers
  ``encryption_mismatch``, which is then a refusal (encryption is chosen when a target is created).
- **pull** (and neo-ls, neo-check): ``open read`` of the root answers with ``encrypted`` and the key-check
  record. The record names the key id, so a key file holding another key is refused before any passphrase is
  asked; then the key is unlocked and checked against the record, and a sub-path is opened in its encrypted
  form (the close of the root and that open share one round trip).
- A grant on a sub-path of an encrypted target is a grant on the *encrypted* path (``neo-key path`` prints
  it for the owner's ``neo-share grant``). Its grantee names the grant as usual, and gives the grant's
  plaintext sub-path with ``--grant-root``, because tokens are computed from the target root.

Nothing is sent to a handle before its key has been checked, so a wrong key or passphrase writes nothing.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from neotwist import paths
from neotwist.chunking import DEFAULT_PARAMS
from neotwist.client.pins import TargetPin
from neotwist.crypto import AuthenticationFailed, WrongKey, WrongPassphrase, keyfile
from neotwist.crypto.chunks import OVERHEAD, ChunkSealer
from neotwist.crypto.keys import MasterKey, TargetKeys, key_check_id
from neotwist.crypto.names import TOKEN_CHARS, PathCipher
from neotwist.crypto.tree import Decrypted, TreeCipher
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, RemoteError
from neotwist.wire.messages import ChunkerParams, Close, Entry, Open, Opened
from neotwist.wire.peer import Peer


class EncryptionRefused(Exception):
    """The target's encryption and the request do not fit (one line, says what to do)."""


class KeySource:
    """The client's key: a key file and a way to get its passphrase. Unlocked at most once per run."""

    def __init__(self, path: Path | None, passphrase: Callable[[str], str | None]) -> None:
        self.path = Path(path) if path is not None else keyfile.default_path()
        self._passphrase = passphrase
        self._file: keyfile.KeyFile | None = None
        self._master: MasterKey | None = None

    def key_file(self) -> keyfile.KeyFile:
        """The parsed key file (KeyFileError if there is none: the message says how to get one)."""
        if self._file is None:
            self._file = keyfile.load(self.path)
        return self._file

    def master(self) -> MasterKey:
        """The unlocked master key (asks for the passphrase the first time)."""
        if self._master is None:
            kf = self.key_file()
            passphrase = self._passphrase(str(self.path))
            if passphrase is None:
                raise WrongPassphrase(
                    f"the key file {self.path} needs its passphrase: use --passphrase-stdin or NEO_PASSPHRASE, "
                    "or run on a terminal"
                )
            self._master = MasterKey(keyfile.unlock(kf, passphrase, f"the key file {self.path}"))
        return self._master

    def check_id(self, key_id: str | None, claim: str = "") -> None:
        """Refuse a key file holding another key than ``key_id`` (None: no key is named), before any passphrase
        is asked. ``claim`` says who named that key (by default, the target's key-check record)."""
        if key_id is not None and self.key_file().key_id != key_id:
            said = claim or f"the target was encrypted with key {key_id}"
            raise WrongKey(
                f"{said}, but {self.path} holds key {self.key_file().key_id}: give the right --key-file, or "
                "'neo-key import' that key"
            )


_TOKEN = f"[A-Za-z0-9_-]{{{TOKEN_CHARS}}}"
_TOKEN_PATH = re.compile(f"(?<![A-Za-z0-9_-]){_TOKEN}(?:/{_TOKEN})*(?![A-Za-z0-9_-])")
"""An encrypted path as a server message can name it: tokens joined by '/' (see :mod:`neotwist.crypto.names`)."""


@dataclass
class Crypt:
    """What one handle on an encrypted target works with.

    Server errors name paths as the server knows them, by their tokens (``opened`` joined with the request's
    path). Every request on the handle is made inside :meth:`plain_errors`, which puts the paths this handle
    has named back in plaintext: the sub-path it was opened at, paths it encrypted (:meth:`encrypt_subpath`) and
    paths of the listings it decrypted (:meth:`decrypt_listing`). A path it never named stays a token."""

    master: MasterKey
    keys: TargetKeys
    sealer: ChunkSealer
    tree: TreeCipher
    opened: tuple[str, str]  # (plaintext, encrypted) sub-path the handle was opened at
    _named: dict[str, str] = field(default_factory=dict)  # encrypted -> plaintext, relative to the handle root
    _listings: list[dict[str, str]] = field(default_factory=list)  # Decrypted.remote (plaintext -> encrypted)

    @classmethod
    def make(cls, master: MasterKey, keys: TargetKeys, root: str, opened: tuple[str, str]) -> Crypt:
        """``root``: the handle root's plaintext path from the target root; ``opened``: (plaintext, encrypted)
        sub-path the handle was opened at, as the server names it (from the grant root)."""
        return cls(master, keys, ChunkSealer(keys), TreeCipher(master, keys, root), opened)

    def encrypt_subpath(self, plain: str) -> str:
        """The server path of ``plain`` (relative to the handle root), remembered to name it in errors."""
        encrypted = self.tree.encrypt_subpath(plain)
        self._named[encrypted] = plain
        return encrypted

    def decrypt_listing(self, entries: list[Entry]) -> Decrypted:
        """:meth:`TreeCipher.decrypt_listing`, its paths remembered to name them in errors (the mapping is kept
        by reference and only inverted when an error needs it; thread-safe)."""
        decrypted = self.tree.decrypt_listing(entries)
        self._listings.append(decrypted.remote)
        return decrypted

    def _plain_of(self, encrypted: str) -> str | None:
        """The plaintext of ``encrypted`` (relative to the handle root), if this handle named it."""
        if not encrypted:
            return ""
        found = self._named.get(encrypted)
        if found is None:
            for remote in self._listings:
                self._named.update({enc: plain for plain, enc in remote.items()})
            self._listings.clear()
            found = self._named.get(encrypted)
        return found

    def plain_error(self, error: RemoteError) -> RemoteError:
        """``error`` with each encrypted path it names that this handle knows put back in plaintext (the
        server can only name paths by their tokens, from the sub-path the handle was opened at)."""
        plain_root, enc_root = self.opened

        def plain(match: re.Match[str]) -> str:
            named = match.group(0)
            if not enc_root:
                rel = named
            elif named == enc_root:
                rel = ""
            elif named.startswith(enc_root + "/"):
                rel = named[len(enc_root) + 1 :]
            else:
                return named  # not below this handle: not one of its paths
            found = self._plain_of(rel)
            return named if found is None else paths.join(plain_root, found)

        message = _TOKEN_PATH.sub(plain, error.message)
        return error if message == error.message else RemoteError(error.code, message)

    @contextlib.contextmanager
    def plain_errors(self) -> Iterator[None]:
        """Raise a RemoteError from within with its paths in plaintext (see :meth:`plain_error`)."""
        try:
            yield
        except RemoteError as e:
            raise self.plain_error(e) from None

    @property
    def id_key(self) -> bytes:
        return self.keys.id_key

    def chunker(self, params: ChunkerParams) -> ChunkerParams:
        """The target's chunker with the keyed seed: where chunk boundaries fall depends on the key, so the
        server cannot recognize a known file by the lengths of its chunks as easily (see docs/encryption.md).
        Every client holding the key cuts alike, so deduplication and delta sync are unchanged."""
        return msgspec.structs.replace(params, seed=self.keys.chunker_seed)


def plain_errors(crypt: Crypt | None) -> contextlib.AbstractContextManager[None]:
    """:meth:`Crypt.plain_errors` for an encrypted handle; nothing to translate for a plaintext one."""
    return crypt.plain_errors() if crypt is not None else contextlib.nullcontext()


RECORD_CHUNKER = DEFAULT_PARAMS
"""The chunker a key-check record of format 1 fixes (its seed is replaced by the keyed one). The server keeps
a target's chunker in its catalog, out of the key's reach: a server that names another one (tiny chunks tell
it more about sizes and what files share) is refused. A future chunker gets a new record format whose tag
covers it."""


def check_chunker(params: ChunkerParams) -> None:
    """The target's chunker must be the one its key-check record fixes; and a sealed chunk must fit
    MAX_CHUNK: the target's largest chunk plus the seal's overhead."""
    fixed = RECORD_CHUNKER
    if (params.algorithm, params.min_size, params.avg_size, params.max_size) != (
        fixed.algorithm, fixed.min_size, fixed.avg_size, fixed.max_size,
    ):  # fmt: skip
        raise EncryptionDowngrade(
            f"the server names a chunker for this encrypted target ({params.algorithm}, {params.min_size}/"
            f"{params.avg_size}/{params.max_size} bytes) other than the one its key fixes ({fixed.min_size}/"
            f"{fixed.avg_size}/{fixed.max_size}): refusing; nothing was sent or written"
        )
    if params.max_size + OVERHEAD > limits.MAX_CHUNK:
        raise EncryptionRefused(
            f"the target's chunker cuts chunks of up to {params.max_size} bytes; sealed they would exceed "
            f"MAX_CHUNK ({limits.MAX_CHUNK})"
        )


def _place(master: MasterKey, grant_root: str, subpath: str) -> tuple[str, str]:
    """(plaintext path of the handle root from the target root, the path to open). Tokens hash their parent's
    encrypted path from the *target* root, so a grantee, whose handle paths start below its grant's root, must
    know that root in plaintext (``--grant-root``) to compute them."""
    cipher = PathCipher(master.token_key)
    full = f"{grant_root}/{subpath}" if grant_root and subpath else grant_root or subpath
    full_enc, base_enc = cipher.encrypt_path(full), cipher.encrypt_path(grant_root)
    return full, (full_enc[len(base_enc) + 1 :] if base_enc else full_enc)


async def _close(peer: Peer, opened: Opened) -> None:
    await peer.request(Close(rid=0, handle=opened.handle))


class EncryptionDowngrade(EncryptionRefused):
    """The server calls a target plaintext, or encrypted with another key, that this client has pinned as
    encrypted (or that ``--require-encryption`` requires to be): refused like a changed host key (exit 3)."""


def _unlock(source: KeySource | None, missing: str, key_id: str | None = None, claim: str = "") -> MasterKey:
    """The unlocked key for an encrypted target: refused with ``missing`` when this run has no key source, and
    a key file holding another key than ``key_id`` (pinned, or named by the key-check record; ``claim`` says
    which: see :meth:`KeySource.check_id`) is refused before the passphrase is asked. A missing key file is
    reported before the passphrase is asked too (``master`` reads the file first)."""
    if source is None:
        raise EncryptionRefused(missing)
    source.check_id(key_id, claim)
    return source.master()


def _pinned_claim(target: str, pinned: str | None, pin: TargetPin | None) -> str:
    """Who names the key a pinned target needs, for :meth:`KeySource.check_id`."""
    if pinned is None or pin is None:
        return ""
    return f"target {target} is pinned as encrypted with key {pinned} ({pin.where})"


def _refuse_claim(
    target: str, opened_encrypted: bool, named: bytes | None, pinned: str | None, pin: TargetPin | None, required: bool
) -> None:
    """Raise EncryptionDowngrade when what the server says about ``target`` contradicts its pin (or
    ``--require-encryption``); return when it fits."""
    if pinned is not None and pin is not None:
        if not opened_encrypted:
            raise EncryptionDowngrade(
                f"the server says target {target} is not encrypted, but this client has seen it encrypted with key "
                f"{pinned} ({pin.where}): refusing, nothing was pushed or written (a server must not turn an "
                f"encrypted target into plaintext); if the target was deliberately removed and re-created, run "
                f"'neo-key forget {pin.remote}'"
            )
        if named is None or named.hex() != pinned:
            other = named.hex() if named is not None else "an unknown key"
            raise EncryptionDowngrade(
                f"the server says target {target} is encrypted with {other}, but this client has seen it encrypted "
                f"with key {pinned} ({pin.where}): refusing, nothing was pushed or written; if the target was "
                f"deliberately removed and re-created, run 'neo-key forget {pin.remote}'"
            )
    elif required and not opened_encrypted:
        raise EncryptionDowngrade(
            f"the server says target {target} is not encrypted, and --require-encryption was given: refusing, "
            "nothing was pushed or written"
        )


def _pin(pin: TargetPin | None, master: MasterKey, pinned: str | None) -> None:
    """Remember that this target is encrypted with ``master`` (after its key-check record verified). Nothing is
    written, nor the pin file's lock taken, when it is pinned so already (``pinned``, the key id looked up before
    the open): an encrypted target must stay usable with a read-only config directory."""
    if pin is not None and pinned != master.id.hex():
        pin.record(master.id.hex())


async def _reopen(peer: Peer, opened: Opened, message: Open) -> Opened:
    """Close ``opened`` and open ``message`` in the same round trip (the server answers in order)."""
    closing = peer.request(Close(rid=0, handle=opened.handle))
    opening = peer.request(message)
    try:
        await closing
    except BaseException:
        opening.addErrback(lambda _f: None)
        raise
    again = await opening
    assert isinstance(again, Opened)
    return again


async def open_for_push(
    peer: Peer,
    target: str,
    subpath: str,
    source: KeySource | None,
    encrypt: bool,
    keep_history: bool | None = None,
    grant_root: str = "",
    pin: TargetPin | None = None,
    require_encryption: bool = False,
    create: bool = True,
) -> tuple[Opened, Crypt | None]:
    """Open ``target`` at ``subpath`` for a push, creating it (encrypted with ``encrypt``) if it is missing;
    ``keep_history`` goes with every open (see ``Open``); ``grant_root``: see :func:`_place`. Without
    ``create`` (a dry run) a missing target is the server's NO_SUCH_TARGET error, and nothing is created.

    A plaintext sub-path is never sent before the target is known not to be encrypted: a pinned (or
    ``require_encryption``) target is opened encrypted at once; otherwise a push to a sub-path first opens the
    handle root, without creating anything, to learn the target's encryption."""
    paths.check_local(subpath)  # a bad sub-path is refused as the server would, before anything is opened
    found = pin.lookup() if pin is not None else None
    pinned = found.key_id if found is not None else None
    if encrypt or pinned is not None or require_encryption:
        what = "--encrypt" if encrypt else f"target {target} is encrypted: this push"
        return await _open_encrypted_push(
            peer, target, subpath, source, f"{what} needs a key: create one with 'neo-key init'", encrypt,
            keep_history, grant_root, pin, pinned, require_encryption, create,
        )  # fmt: skip
    message = Open(
        rid=0, target=target, path=paths.to_wire(subpath), mode="push", create=create, keep_history=keep_history
    )
    try:
        opened = await (_probe_then_open(peer, target, message) if subpath else peer.request(message))
    except RemoteError as e:
        if e.code != ErrorCode.ENCRYPTION_MISMATCH:
            raise
        return await _open_encrypted_push(
            peer, target, subpath, source, f"target {target} is encrypted: this push needs its key", False,
            keep_history, grant_root, pin, None, False, create,
        )  # fmt: skip
    assert isinstance(opened, Opened)
    return opened, None


async def _probe_then_open(peer: Peer, target: str, message: Open) -> Opened:
    """Open the handle root for a push without creating anything, and only then ``message`` (at the plaintext
    sub-path): an encrypted target answers the first open with ENCRYPTION_MISMATCH, before the sub-path is
    sent; a missing one with NO_SUCH_TARGET (the push creates it in plaintext)."""
    try:
        probe = await peer.request(Open(rid=0, target=target, path="", mode="push"))
    except RemoteError as e:
        if e.code != ErrorCode.NO_SUCH_TARGET:
            raise
        created = await peer.request(message)
        assert isinstance(created, Opened)
        return created
    assert isinstance(probe, Opened)
    return await _reopen(peer, probe, message)


async def _open_encrypted_push(
    peer: Peer,
    target: str,
    subpath: str,
    source: KeySource | None,
    missing: str,
    encrypt: bool,
    keep_history: bool | None,
    grant_root: str,
    pin: TargetPin | None,
    pinned: str | None,
    required: bool,
    may_create: bool = True,
) -> tuple[Opened, Crypt | None]:
    """The encrypted open of a push. It creates the target with a new key-check record when ``encrypt`` asks,
    or when the target is pinned (a pinned target that is gone is re-created encrypted, never in plaintext).
    ``missing``: the refusal when this run has no key."""
    master = _unlock(source, missing, pinned, _pinned_claim(target, pinned, pin))
    create = (encrypt or pinned is not None) and may_create
    record, keys = master.new_target() if create else (b"", None)
    root, path = _place(master, grant_root, subpath)
    try:
        opened = await peer.request(
            Open(
                rid=0,
                target=target,
                path=path,
                mode="push",
                create=create,
                encrypted=True,
                keep_history=keep_history,
                key_check=record,
            )
        )
    except RemoteError as e:
        if e.code == ErrorCode.ENCRYPTION_MISMATCH:
            _refuse_claim(target, False, None, pinned, pin, required)
            if encrypt:
                raise EncryptionRefused(
                    f"target {target} exists and is not encrypted; --encrypt only applies when a push creates a "
                    "target: push to a new target name"
                ) from None
        if e.code == ErrorCode.NO_SUCH_TARGET and not create and may_create:
            raise EncryptionRefused(
                f"there is no target {target}, and --require-encryption creates no plaintext target: add --encrypt "
                "to create it encrypted"
            ) from None
        raise
    assert isinstance(opened, Opened)
    try:
        named = key_check_id(opened.key_check) if opened.exists or keys is None else master.id
        _refuse_claim(target, opened.encrypted, named, pinned, pin, required)
        if not opened.encrypted:
            raise EncryptionDowngrade(
                f"the server opened target {target} without encryption for an encrypted push: refusing, nothing "
                "was sent"
            )
        check_chunker(opened.chunker)
        if opened.exists or keys is None:  # an existing target: its record decides (and must be this key's)
            keys = master.open_target(opened.key_check)
        _pin(pin, master, pinned)
    except BaseException:
        await _close(peer, opened)
        raise
    return opened, Crypt.make(master, keys, root, (subpath, path))


async def open_for_read(
    peer: Peer,
    target: str,
    subpath: str,
    source: KeySource | None,
    grant_root: str = "",
    pin: TargetPin | None = None,
    require_encryption: bool = False,
) -> tuple[Opened, Crypt | None]:
    """Open ``target`` at ``subpath`` for reading; for an encrypted target, check and unlock the key and open
    the encrypted sub-path (``grant_root``: see :func:`_place`).

    A plaintext sub-path is never sent before the target is known not to be encrypted: a pinned target's
    sub-path is opened at its encrypted form at once; otherwise the handle root is opened first, and the
    sub-path re-opened in the form the answer calls for (the close and the open share one round trip)."""
    paths.check_local(subpath)  # a bad sub-path is refused as the server would, before anything is opened
    found = pin.lookup() if pin is not None else None
    pinned = found.key_id if found is not None else None
    if pinned is not None and subpath:
        master = _unlock(
            source, f"target {target} is encrypted: this needs its key", pinned, _pinned_claim(target, pinned, pin)
        )
        root, path = _place(master, grant_root, subpath)
        opened = await peer.request(Open(rid=0, target=target, path=path, mode="read"))
        assert isinstance(opened, Opened)
        try:
            _refuse_claim(target, opened.encrypted, key_check_id(opened.key_check), pinned, pin, require_encryption)
            keys = master.open_target(opened.key_check)
            check_chunker(opened.chunker)
        except BaseException:
            await _close(peer, opened)
            raise
        return opened, Crypt.make(master, keys, root, (subpath, path))
    opened = await peer.request(Open(rid=0, target=target, path="", mode="read"))
    assert isinstance(opened, Opened)
    try:
        _refuse_claim(target, opened.encrypted, key_check_id(opened.key_check), pinned, pin, require_encryption)
    except BaseException:
        await _close(peer, opened)
        raise
    if not opened.encrypted:
        if not subpath:
            return opened, None
        return await _reopen(peer, opened, Open(rid=0, target=target, path=paths.to_wire(subpath), mode="read")), None
    named = key_check_id(opened.key_check)
    try:
        # a foreign key file is refused before the passphrase is asked
        master = _unlock(
            source, f"target {target} is encrypted: reading it needs its key", named.hex() if named else None
        )
        keys = master.open_target(opened.key_check)
        check_chunker(opened.chunker)
        _pin(pin, master, pinned)
    except BaseException:
        await _close(peer, opened)
        raise
    root, path = _place(master, grant_root, subpath)
    crypt = Crypt.make(master, keys, root, (subpath, path))
    if not path:
        return opened, crypt
    again = await _reopen(peer, opened, Open(rid=0, target=target, path=path, mode="read"))
    if again.key_check != opened.key_check:
        await _close(peer, again)
        raise WrongKey("the target's key-check record changed between two opens; try again")
    return again, crypt


# --- listings of encrypted targets (neo-ls) ---------------------------------------------------------------


class Namer:
    """Plaintext names for the encrypted paths that history listings (versions, deleted files, snapshot roots)
    return: the server has no metadata in those records, so the snapshot that holds a path is listed and
    decrypted (once per snapshot), which also authenticates what is shown."""

    def __init__(self, peer: Peer, handle: int, crypt: Crypt) -> None:
        self.peer = peer
        self.handle = handle
        self.crypt = crypt
        self._snapshots: dict[int, dict[str, Entry]] = {}
        self.errors: list[str] = []

    async def tree(self, snapshot: int) -> dict[str, Entry]:
        """Encrypted relative path -> plaintext entry, for every entry of ``snapshot`` below the handle root."""
        got = self._snapshots.get(snapshot)
        if got is None:
            from neotwist.client import stash

            _, entries = await stash.entries(self.peer, self.handle, snapshot, "", True)
            decrypted = self.crypt.decrypt_listing(entries)
            self.errors.extend(decrypted.errors)
            by_remote = {decrypted.remote[e.path]: e for e in decrypted.entries}
            got = self._snapshots[snapshot] = by_remote
        return got

    async def entry(self, snapshot: int, remote: str) -> Entry | None:
        return (await self.tree(snapshot)).get(remote)


async def decrypt_versions(peer: Peer, handle: int, crypt: Crypt, plain: str, records: list[Any]) -> list[Any]:
    """``records`` (VersionRecord of the encrypted path of ``plain``) with their real kind, mode, mtime and
    size, read from each version's authenticated metadata; AuthenticationFailed if one does not open."""
    from neotwist.client import stash

    remote = crypt.encrypt_subpath(plain)
    out = []
    for r in records:
        _, entries = await stash.entries(peer, handle, r.snapshot, remote, False)
        if not entries or entries[0].path != remote:
            raise AuthenticationFailed(f"{plain}: snapshot {r.snapshot} does not hold the version it should")
        e = crypt.tree.open_known(entries[0], plain)
        out.append(msgspec.structs.replace(r, kind=e.kind, mode=e.mode, mtime_ns=e.mtime_ns, size=e.size))
    return out


async def decrypt_deleted(namer: Namer, records: list[Any]) -> list[Any]:
    """``records`` (DeletedRecord) with plaintext paths and real sizes and mtimes, from the snapshot that last
    held each; records that cannot be named are left out (``namer.errors`` says why)."""
    out = []
    for r in records:
        e = await namer.entry(r.last_snapshot, r.path)
        if e is None:
            namer.errors.append(f"a deleted entry of snapshot {r.last_snapshot} could not be named")
            continue
        out.append(msgspec.structs.replace(r, path=e.path, kind=e.kind, size=e.size, mtime_ns=e.mtime_ns))
    return out
