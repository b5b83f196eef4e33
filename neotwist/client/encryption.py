"""Opening a target with or without encryption, and the key a push or pull then works with.

neo-push and neo-pull do not need to be told that a target is encrypted: the server says so.

- **push**: ``open push`` with ``encrypted = false`` succeeds on a plaintext (or new) target; on an encrypted
  target the server answers ``encryption_mismatch``, and the client unlocks its key and opens again at the
  encrypted sub-path. ``--encrypt`` unlocks first and opens with a new key-check record, which the server keeps
  only if the open creates the target; an existing plaintext target answers ``encryption_mismatch``, which is
  then a refusal (encryption is chosen when a target is created).
- **pull**: ``open read`` answers with ``encrypted`` and the key-check record. The record names the key id, so
  a key file holding another key is refused before any passphrase is asked; then the key is unlocked and
  checked against the record, and a sub-path is re-opened at its encrypted form.
- A grant on a sub-path of an encrypted target is a grant on the *encrypted* path (``neo-key path`` prints
  it for the owner's ``neo-share grant``). Its grantee names the grant as usual, and gives the grant's
  plaintext sub-path with ``--grant-root``, because tokens are computed from the target root.

Nothing is sent to a handle before its key has been checked, so a wrong key or passphrase writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from neotwist import paths
from neotwist.crypto import AuthenticationFailed, WrongKey, WrongPassphrase, keyfile
from neotwist.crypto.chunks import OVERHEAD, ChunkSealer
from neotwist.crypto.keys import MasterKey, TargetKeys, key_check_id
from neotwist.crypto.names import PathCipher
from neotwist.crypto.tree import TreeCipher
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

    def check_id(self, record: bytes) -> None:
        """Refuse a key file holding another key than ``record`` names, before any passphrase is asked."""
        named = key_check_id(record)
        if named is not None and self.key_file().key_id != named.hex():
            raise WrongKey(
                f"the target was encrypted with key {named.hex()}, but {self.path} holds key "
                f"{self.key_file().key_id}: give the right --key-file, or 'neo-key import' that key"
            )


@dataclass
class Crypt:
    """What one handle on an encrypted target works with."""

    master: MasterKey
    keys: TargetKeys
    sealer: ChunkSealer
    tree: TreeCipher
    opened: tuple[str, str] = ("", "")  # (plaintext, encrypted) sub-path the handle was opened at

    @classmethod
    def make(cls, master: MasterKey, keys: TargetKeys, root: str) -> Crypt:
        return cls(master, keys, ChunkSealer(keys), TreeCipher(master, keys, root))

    def plain_error(self, error: RemoteError, below: str = "") -> RemoteError:
        """``error`` with the encrypted path the server names (the opened sub-path joined with ``below``,
        plaintext relative to it) put back in plaintext: the server can only name paths by their tokens."""
        plain, encrypted = self.opened
        enc_below = self.tree.encrypt_subpath(below) if below else ""
        named_enc, named = paths.join(encrypted, enc_below), paths.join(plain, below)
        if not named_enc or named_enc not in error.message:
            return error
        return RemoteError(error.code, error.message.replace(named_enc, named))

    @property
    def id_key(self) -> bytes:
        return self.keys.id_key

    def chunker(self, params: ChunkerParams) -> ChunkerParams:
        """The target's chunker with the keyed seed: where chunk boundaries fall depends on the key, so the
        server cannot recognize a known file by the lengths of its chunks as easily (see docs/encryption.md).
        Every client holding the key cuts alike, so deduplication and delta sync are unchanged."""
        return msgspec.structs.replace(params, seed=self.keys.chunker_seed)


def check_chunker(params: ChunkerParams) -> None:
    """A sealed chunk must fit MAX_CHUNK: the target's largest chunk plus the seal's overhead."""
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


async def open_for_push(
    peer: Peer,
    target: str,
    subpath: str,
    source: KeySource | None,
    encrypt: bool,
    keep_history: bool | None = None,
    grant_root: str = "",
) -> tuple[Opened, Crypt | None]:
    """Open ``target`` at ``subpath`` for a push, creating it (encrypted with ``encrypt``) if it is missing;
    ``keep_history`` goes with every open (see ``Open``); ``grant_root``: see :func:`_place`."""
    if encrypt:
        if source is None:
            raise EncryptionRefused("--encrypt needs a key: create one with 'neo-key init'")
        return await _open_encrypted_push(peer, target, subpath, source, True, keep_history, grant_root)
    try:
        opened = await peer.request(
            Open(rid=0, target=target, path=subpath, mode="push", create=True, keep_history=keep_history)
        )
    except RemoteError as e:
        if e.code != ErrorCode.ENCRYPTION_MISMATCH:
            raise
        if source is None:
            raise EncryptionRefused(f"target {target} is encrypted: this push needs its key") from None
        return await _open_encrypted_push(peer, target, subpath, source, False, keep_history, grant_root)
    assert isinstance(opened, Opened)
    return opened, None


async def _open_encrypted_push(
    peer: Peer,
    target: str,
    subpath: str,
    source: KeySource,
    new: bool,
    keep_history: bool | None,
    grant_root: str,
) -> tuple[Opened, Crypt | None]:
    source.key_file()  # a missing key file is reported before the passphrase is asked
    master = source.master()
    record, keys = master.new_target() if new else (b"", None)
    root, path = _place(master, grant_root, subpath)
    try:
        opened = await peer.request(
            Open(
                rid=0,
                target=target,
                path=path,
                mode="push",
                create=new,
                encrypted=True,
                keep_history=keep_history,
                key_check=record,
            )
        )
    except RemoteError as e:
        if e.code == ErrorCode.ENCRYPTION_MISMATCH and new:
            raise EncryptionRefused(
                f"target {target} exists and is not encrypted; --encrypt only applies when a push creates a "
                "target: push to a new target name"
            ) from None
        raise
    assert isinstance(opened, Opened)
    try:
        check_chunker(opened.chunker)
        if opened.exists or keys is None:  # an existing target: its record decides (and must be this key's)
            keys = master.open_target(opened.key_check)
    except BaseException:
        await _close(peer, opened)
        raise
    return opened, Crypt.make(master, keys, root)


async def open_for_read(
    peer: Peer, target: str, subpath: str, source: KeySource | None, grant_root: str = ""
) -> tuple[Opened, Crypt | None]:
    """Open ``target`` at ``subpath`` for reading; for an encrypted target, check and unlock the key and open
    the encrypted sub-path (``grant_root``: see :func:`_place`)."""
    opened = await peer.request(Open(rid=0, target=target, path=subpath, mode="read"))
    assert isinstance(opened, Opened)
    if not opened.encrypted:
        return opened, None
    if source is None:
        await _close(peer, opened)
        raise EncryptionRefused(f"target {target} is encrypted: reading it needs its key")
    try:
        source.check_id(opened.key_check)  # a foreign key file is refused before the passphrase is asked
        master = source.master()
        keys = master.open_target(opened.key_check)
        check_chunker(opened.chunker)
    except BaseException:
        await _close(peer, opened)
        raise
    root, path = _place(master, grant_root, subpath)
    crypt = Crypt.make(master, keys, root)
    crypt.opened = (subpath, path)
    if path == subpath:
        return opened, crypt
    await _close(peer, opened)
    again = await peer.request(Open(rid=0, target=target, path=path, mode="read"))
    assert isinstance(again, Opened)
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
            decrypted = self.crypt.tree.decrypt_listing(entries)
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

    remote = crypt.tree.encrypt_subpath(plain)
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
