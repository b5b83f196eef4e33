"""The key a push or pull works with, a handle's ciphers, and the checks of what a server says about encryption.

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

The open itself, in that order, is :mod:`neotwist.client.remotetarget`'s; this module holds what it works with:
the key (:class:`KeySource`), a handle's ciphers (:class:`Crypt`), and the checks of what the server says.
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
from neotwist.crypto import AuthenticationFailed, WrongKey, WrongPassphrase, keyfile
from neotwist.crypto.chunks import OVERHEAD, ChunkSealer
from neotwist.crypto.keys import MasterKey, TargetKeys
from neotwist.crypto.names import TOKEN_CHARS, PathCipher
from neotwist.crypto.tree import Decrypted, TreeCipher
from neotwist.wire import limits
from neotwist.wire.errors import RemoteError
from neotwist.wire.messages import ChunkerParams, Entry
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

        reason = _TOKEN_PATH.sub(plain, error.reason)
        path = None if error.path is None else _TOKEN_PATH.sub(plain, error.path)
        if reason == error.reason and path == error.path:
            return error
        return RemoteError(error.code, reason, path)

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


def place(master: MasterKey, grant_root: str, subpath: str) -> tuple[str, str]:
    """(plaintext path of the handle root from the target root, the path to open). Tokens hash their parent's
    encrypted path from the *target* root, so a grantee, whose handle paths start below its grant's root, must
    know that root in plaintext (``--grant-root``) to compute them."""
    cipher = PathCipher(master.token_key)
    full = f"{grant_root}/{subpath}" if grant_root and subpath else grant_root or subpath
    full_enc, base_enc = cipher.encrypt_path(full), cipher.encrypt_path(grant_root)
    return full, (full_enc[len(base_enc) + 1 :] if base_enc else full_enc)


class EncryptionDowngrade(EncryptionRefused):
    """The server calls a target plaintext, or encrypted with another key, that this client has pinned as
    encrypted (or that ``--require-encryption`` requires to be): refused like a changed host key (exit 3)."""


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
