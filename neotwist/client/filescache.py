"""The push's files cache: skip reading files that have not changed since the last successful push.

One cache file per (server address, account, target, sub-path, absolute local root, and how the target names
chunks: plaintext BLAKE3 or one encrypted target's keyed BLAKE3, see :meth:`FilesCache.bind`) in the user cache dir maps
each pushed file's relative path to ``(size, mtime_ns, inode, ctime_ns, chunk ids)``. A file whose four stat
values all match is not read: its chunk ids are reused. ctime is included because it changes on every write
and cannot be set by ``touch``, so a file rewritten with its old mtime is still noticed.

The cache is trusted only for chunk ids. The server checks at commit that every referenced chunk exists; when
it does not (the target was pruned or recreated), the push retries once with the cache disabled. The cache is
saved (atomically: :func:`neotwist.atomicfile.atomic_write`) only after a successful commit, and holds exactly the
files of that push, so deleted files fall out of it.

It also keeps, for the push that wrote it, the snapshot that push committed and a digest of every entry it
sent (by the path the server knows it by): the next push to the same place, when that snapshot is still the
target's latest, sends only the entries whose digest changed and names the paths that are gone
(``push_begin.parent``), instead of listing the whole tree again.

Files modified within the last second before the push started are not remembered: their mtime may not have
ticked yet for a write still to come (the same guard git and borg use for "racy" timestamps).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import msgspec
import platformdirs

from neotwist import paths
from neotwist.atomicfile import atomic_write


class CacheEntry(msgspec.Struct, array_like=True):
    """(size, mtime_ns, inode, ctime_ns, concatenated 32-byte chunk ids, extra record). ``extra`` (owner, xattrs:
    neotwist.client.metadata) spares the walk an ``llistxattr`` per unchanged file: a chown or setxattr changes
    the ctime. Caches written before it existed have 5 fields (extra None: unknown)."""

    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int
    ids: bytes
    extra: bytes | None = None


_FORMAT = 1
_RACY_NS = 1_000_000_000


class _CacheFile(msgspec.Struct, array_like=True):
    format: int
    key: str
    files: dict[str, CacheEntry]
    snapshot: int | None = None  # the snapshot the push that wrote it committed (caches before it: None)
    entries: dict[str, bytes] = msgspec.field(default_factory=dict)  # server path -> digest of its records


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_CacheFile)


def cache_key(address: str, account: str, target: str, subpath: str, local_root: str) -> str:
    """The text that names one cache (stored in the file too, so a hash collision is noticed)."""
    return "\0".join((address, account, target, subpath, os.path.abspath(local_root)))


def default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("neophytos")) / "files"


class FilesCache:
    """Lookups from the previous push and the entries of the current one.

    ``lookup`` and ``remember`` are plain dict operations, cheap enough to call per file from any thread.
    """

    def __init__(self, key: str, directory: Path | None = None, *, start_ns: int | None = None) -> None:
        self.directory = directory if directory is not None else default_cache_dir()
        self._name(key)
        self.old: dict[str, CacheEntry] = {}
        self.new: dict[str, CacheEntry] = {}
        self.old_snapshot: int | None = None  # what the last push committed, and the entries it sent
        self.old_entries: dict[str, bytes] = {}
        self.snapshot: int | None = None  # what this push committed (set before save), and the entries it sent
        self.new_entries: dict[str, bytes] = {}
        self.racy_after = (start_ns if start_ns is not None else time.time_ns()) - _RACY_NS
        self.load_error: str | None = None

    def _name(self, key: str) -> None:
        self.key = key
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        self.path = self.directory / f"{digest}.cache"

    def bind(self, keying: str) -> None:
        """Tie the cache to how the target names chunks (``plaintext``, or ``encrypted <fingerprint>``), known
        once the target is open: ids of one keying are never looked up under another, even if a target is
        deleted and re-created under the same name with or without encryption, or with a new key."""
        self._name(f"{self.key}\0{keying}")

    def load(self) -> None:
        """Read the previous cache; a missing, damaged or foreign file just means an empty cache."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            self.load_error = f"cannot read files cache {self.path}: {e.strerror}"
            return
        try:
            cached = _decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            self.load_error = f"ignoring damaged files cache {self.path}: {e}"
            return
        if cached.format == _FORMAT and cached.key == paths.to_wire(self.key):
            try:  # paths are kept in their wire text (see neotwist.paths.to_wire)
                self.old = {paths.from_wire(path): entry for path, entry in cached.files.items()}
                self.old_snapshot, self.old_entries = cached.snapshot, cached.entries  # keyed by wire paths
            except ValueError as e:
                self.load_error = f"ignoring damaged files cache {self.path}: {e}"

    def lookup(self, path: str, size: int, mtime_ns: int, inode: int, ctime_ns: int) -> bytes | None:
        """The chunk ids of ``path`` if its stat values match the last push, else None."""
        entry = self.old.get(path)
        if entry is None:
            return None
        if entry.size != size or entry.mtime_ns != mtime_ns or entry.inode != inode or entry.ctime_ns != ctime_ns:
            return None
        if len(entry.ids) % 32:
            return None
        return entry.ids

    def lookup_extra(self, path: str, size: int, mtime_ns: int, inode: int, ctime_ns: int) -> bytes | None:
        """The extra record of ``path`` if its stat values match the last push (and it was remembered)."""
        entry = self.old.get(path)
        if entry is None or entry.extra is None:
            return None
        if entry.size != size or entry.mtime_ns != mtime_ns or entry.inode != inode or entry.ctime_ns != ctime_ns:
            return None
        return entry.extra

    def remember(
        self, path: str, size: int, mtime_ns: int, inode: int, ctime_ns: int, ids: bytes, extra: bytes | None = None
    ) -> None:
        """Record ``path`` for the next push (unless its timestamps are too recent to be trusted)."""
        if mtime_ns >= self.racy_after or ctime_ns >= self.racy_after:
            return
        self.new[path] = CacheEntry(size, mtime_ns, inode, ctime_ns, ids, extra)

    def save(self) -> None:
        """Write the current push's entries atomically (call only after a successful commit)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        files = {paths.to_wire(path): entry for path, entry in self.new.items()}
        body = _encoder.encode(
            _CacheFile(
                format=_FORMAT,
                key=paths.to_wire(self.key),
                files=files,
                snapshot=self.snapshot,
                entries=self.new_entries,
            )
        )
        atomic_write(self.path, body)
