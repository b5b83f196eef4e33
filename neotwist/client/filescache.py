"""The push's files cache: skip reading files that have not changed since the last successful push.

One cache file per (server address, account, target, sub-path, absolute local root, and how the target names
chunks: plaintext BLAKE3 or one encrypted target's keyed BLAKE3, see :meth:`FilesCache.bind`) in the user cache
dir maps each pushed file's relative path to ``(size, mtime_ns, inode, ctime_ns, chunk ids, extra)``. A file whose
four stat values all match is not read: its chunk ids are reused. ctime is included because it changes on every
write and cannot be set by ``touch``, so a file rewritten with its old mtime is still noticed.

The cache is an SQLite database (stdlib ``sqlite3``), not a dict: a push of a million files would otherwise hold
two dicts of a million entries each (the last push's and this one's, about 1 KB per file with the entry
digests below). The last push's cache is attached read-only and read a directory at a time, as the walk reaches
each directory; this push's is written, a few thousand rows per statement, into a new database next to it,
which replaces the old one (``os.replace`` after an fsync) only after a successful commit, so a crash or a
failed push leaves the old cache. Memory is the two databases' page caches (:data:`PAGE_CACHE_KIB` each), the
rows waiting to be written (:data:`FLUSH_ROWS`), the old rows of the directory being walked and the old entry
digests of the directories of one batch's entries, whatever the number of files.

The cache is trusted only for chunk ids. The server checks at commit that every referenced chunk exists; when
it does not (the target was pruned or recreated), the push retries once with the cache disabled. The new cache
holds exactly the files of this push, so deleted files fall out of it.

It also keeps, for the push that wrote it, the snapshot that push committed and a digest of every entry it
sent (by the path the server knows it by): the next push to the same place, when that snapshot is still the
target's latest, sends only the entries whose digest changed and names the paths that are gone
(``push_begin.parent``), instead of listing the whole tree again. A --delete push lists the whole tree once
after a push without it: that one kept in its snapshot paths gone locally that its digests do not name.

Files modified within the last second before the push started are not remembered: their mtime may not have
ticked yet for a write still to come (the same guard git and borg use for "racy" timestamps).
"""

# ruff: noqa: S608  (SQL text is built only from constant table names; values are bound)

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import platformdirs

from neotwist import paths
from neotwist.atomicfile import fsync_dir
from neotwist.client.scan import SameDir

_FORMAT = 2  # 1 was one msgpack map, read and written whole (``<digest>.cache``)
_RACY_NS = 1_000_000_000

PAGE_CACHE_KIB = 4096
"""SQLite page cache of each of the two databases (the last push's, this one's), in KiB."""

FLUSH_ROWS = 4096
"""Remembered files and entry digests kept in memory before they are written (one row per directory)."""

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS {db}.meta (format INTEGER NOT NULL, key TEXT NOT NULL, snapshot INTEGER)",
    "CREATE TABLE IF NOT EXISTS {db}.files (dir TEXT NOT NULL, seq INTEGER NOT NULL, rows BLOB NOT NULL,"
    " n INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (dir, seq)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS {db}.entries (dir TEXT NOT NULL, seq INTEGER NOT NULL, rows BLOB NOT NULL,"
    " n INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (dir, seq)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS {db}.dirs (dir TEXT PRIMARY KEY, signature BLOB NOT NULL, items INTEGER NOT NULL,"
    " files INTEGER NOT NULL, complete INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS {db}.flags (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
)
"""One SQLite row holds many files of one directory (a msgpack map of name to :class:`CacheEntry`, or to the
entry digest; ``n`` is how many), and a directory is read in one query: the walk and the listing go a directory
at a time. One row or one query per file made SQLite hand the GIL back and forth between the push's threads
around every file: an unchanged re-push of 100,000 files took 157 us per file, against 36 us with the old dicts.

``dirs`` holds each walked directory's signature (:class:`~neotwist.client.scan.SameDir`: its items' names and
``lstat`` values) and counts; ``complete`` is set at :meth:`FilesCache.save` when this push remembered every
regular file of it and noted an entry digest for every item (none was racy, changed while read, unreadable or
skipped); a directory with an item too recent to trust (a symlink, say) has no row. A later push that finds a
directory with the same signature and ``complete`` takes its rows of ``files`` and ``entries`` over whole, in
SQL (:meth:`FilesCache.see_dir`), and makes no record of its items: there is no per-file Python work for it.
Caches written before ``dirs`` existed are read as before, without that shortcut."""

ROOT_ENTRY_DIR = "/"
"""Where the push root's own entry digest is kept in ``entries`` (no relative path's directory is "/"): apart
from the digests of the root directory's items, which it would otherwise be counted with."""


class CacheBroken(OSError):
    """This push's cache could not be written, so it cannot tell what this push no longer has (:meth:`FilesCache.gone`):
    a push that lists only its changes must list everything instead."""


class CacheEntry(msgspec.Struct, array_like=True):
    """(size, mtime_ns, inode, ctime_ns, concatenated 32-byte chunk ids, extra record). ``extra`` (owner, xattrs:
    neotwist.client.metadata) spares the walk an ``llistxattr`` per unchanged file: a chown or setxattr changes
    the ctime."""

    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int
    ids: bytes
    extra: bytes | None = None


_encode = msgspec.msgpack.Encoder().encode
_decode_files = msgspec.msgpack.Decoder(dict[str, CacheEntry]).decode
_decode_entries = msgspec.msgpack.Decoder(dict[str, bytes]).decode


def _split(path: str) -> tuple[str, str]:
    """(directory, name) of a '/'-separated path ('' is the root's directory)."""
    directory, _, name = path.rpartition("/")
    return directory, name


def _entry_key(path: str) -> tuple[str, str]:
    """(directory, name) under which the entry digest of the server path ``path`` is kept."""
    return (ROOT_ENTRY_DIR, "") if path == "" else _split(path)


_COMPLETE = (
    "UPDATE main.dirs SET complete ="
    " (files = coalesce((SELECT sum(f.n) FROM main.files f WHERE f.dir = dirs.dir), 0)"
    " AND items = coalesce((SELECT sum(e.n) FROM main.entries e WHERE e.dir = dirs.dir), 0))"
)
"""Mark the directories this push remembered whole (see ``dirs`` in :data:`_SCHEMA`)."""


def cache_key(address: str, account: str, target: str, subpath: str, local_root: str) -> str:
    """The text that names one cache (stored in the file too, so a hash collision is noticed)."""
    return "\0".join((address, account, target, subpath, os.path.abspath(local_root)))


def default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("neophytos")) / "files"


class FilesCache:
    """Lookups from the previous push, and what the current one remembers for the next.

    Every method may be called from any thread (one lock guards the connection); a lookup is a dict lookup
    in the rows of the directory last asked about (one query per directory), and :meth:`old_entries` reads
    the directories of the paths it is given once each. Call :meth:`close` when done (:meth:`save` closes
    too): it removes the unsaved new database.
    """

    def __init__(self, key: str, directory: Path | None = None, *, start_ns: int | None = None) -> None:
        self.directory = directory if directory is not None else default_cache_dir()
        self._name(key)
        self.old_snapshot: int | None = None  # what the last push committed (its entries are in old.entries)
        self.snapshot: int | None = None  # what this push committed (set before save)
        # The entry digests name every entry of the snapshot: the push named what was gone (--delete). A push
        # without it keeps in its snapshot what is gone locally, which its digests do not name: a later --delete
        # push must then list everything once, or what was gone before it would stay in the snapshot for good.
        self.old_whole = False  # of the last push's cache
        self.whole = False  # of this push's (set before save)
        self.racy_after = (start_ns if start_ns is not None else time.time_ns()) - _RACY_NS
        self.load_error: str | None = None
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._new_path: Path | None = None
        self._has_old = False
        self._old_dirs = False  # the last push's cache has signatures of directories
        self._files_dir: str | None = None  # the directory whose old rows are in _dir_files
        self._dir_files: dict[str, CacheEntry] = {}
        self._entries_dir: str | None = None  # the directory whose old entry digests are in _dir_entries
        self._dir_entries: dict[str, bytes] = {}
        self._broken: str | None = None  # why this push's cache cannot be written (it is then not saved)
        self._files: dict[str, dict[str, CacheEntry]] = {}  # waiting to be written: directory -> name -> entry
        self._entries: dict[str, dict[str, bytes]] = {}
        self._dirs: list[tuple[str, bytes, int, int]] = []  # directories' signatures, waiting to be written
        self._taken: list[tuple[str]] = []  # directories taken whole (see see_dir), their rows waiting to be copied
        self._waiting = 0  # files, entries and directories in them, and directories taken whole
        self._seq = 0  # of rows written; above every seq of the last push's cache (its rows are copied as they are)
        self.dirs_taken = 0  # directories taken whole from the last push (see :meth:`see_dir`)

    def _name(self, key: str) -> None:
        self.key = key
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        self.path = self.directory / f"{digest}.db"
        self._legacy = self.directory / f"{digest}.cache"  # the msgpack format: replaced at the next save

    def bind(self, keying: str) -> None:
        """Tie the cache to how the target names chunks (``plaintext``, or ``encrypted <fingerprint>``), known
        once the target is open: ids of one keying are never looked up under another, even if a target is
        deleted and re-created under the same name with or without encryption, or with a new key."""
        self._name(f"{self.key}\0{keying}")

    # --- the connection -------------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """This push's new database (created on first use, in the cache directory so the rename is atomic).
        Raises OSError when it cannot be made."""
        if self._db is None:
            try:
                self._db = self._create()
            except (OSError, sqlite3.Error) as e:
                self._broken = f"cannot write files cache in {self.directory}: {e}"
                raise OSError(self._broken) from e
        return self._db

    def _create(self) -> sqlite3.Connection:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._new_path = self.directory / f".{self.path.stem}-{os.getpid()}-{id(self):x}.new"
        self._new_path.unlink(missing_ok=True)
        fd = os.open(self._new_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # private from the start
        os.close(fd)
        db = sqlite3.connect(self._new_path, uri=False, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=OFF")  # a half-written new cache is never renamed into place
        db.execute("PRAGMA synchronous=OFF")  # save() fsyncs it once
        db.execute("PRAGMA locking_mode=EXCLUSIVE")  # nobody else opens it: no lock calls per statement
        db.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
        for statement in _SCHEMA:
            db.execute(statement.format(db="main"))
        return db

    def load(self) -> None:
        """Attach the previous cache; a missing, damaged or foreign file just means an empty cache."""
        with self._lock:
            try:
                db = self._connection()
            except OSError as e:
                self.load_error = str(e)
                return
            if self._has_old:
                db.execute("DETACH DATABASE old")
                self._has_old = self._old_dirs = False
            self.old_snapshot = None
            self.old_whole = False
            if not self.path.exists():
                return
            try:
                # immutable: the file is only ever replaced by a rename, never written in place, so SQLite need not
                # lock it and check it for changes around every lookup (a dozen system calls per file)
                db.execute("ATTACH DATABASE ? AS old", (self.path.absolute().as_uri() + "?mode=ro&immutable=1",))
            except sqlite3.Error as e:
                self.load_error = f"cannot read files cache {self.path}: {e}"
                return
            try:
                db.execute(f"PRAGMA old.cache_size=-{PAGE_CACHE_KIB}")
                row = db.execute("SELECT format, key, snapshot FROM old.meta").fetchone()
                for table in ("old.files", "old.entries"):
                    db.execute(f"SELECT dir, seq, rows FROM {table} LIMIT 1")
            except sqlite3.Error as e:
                db.execute("DETACH DATABASE old")
                self.load_error = f"ignoring damaged files cache {self.path}: {e}"
                return
            if row is None or row[0] != _FORMAT or row[1] != paths.to_wire(self.key):
                db.execute("DETACH DATABASE old")  # another key that hashed alike, or another format
                return
            self._has_old = True
            self._files_dir = self._entries_dir = None
            self.old_snapshot = row[2]
            tables = {name for (name,) in db.execute("SELECT name FROM old.sqlite_master WHERE type = 'table'")}
            if "flags" in tables:
                whole = db.execute("SELECT value FROM old.flags WHERE name = 'whole'").fetchone()
                self.old_whole = whole is not None and whole[0] == 1
            self._old_dirs = "dirs" in tables
            for table in ("old.files", "old.entries"):
                self._seq = max(self._seq, db.execute(f"SELECT coalesce(max(seq), 0) FROM {table}").fetchone()[0])

    def begin(self) -> None:
        """Start this push's cache afresh (a push that runs again, after a refused commit, remembers anew)."""
        with self._lock:
            self._files.clear()
            self._entries.clear()
            self._dirs.clear()
            self._taken.clear()
            self._waiting = 0
            self.dirs_taken = 0
            if self._db is not None and self._broken is None:
                try:
                    self._db.execute("DELETE FROM main.files")
                    self._db.execute("DELETE FROM main.entries")
                    self._db.execute("DELETE FROM main.dirs")
                except sqlite3.Error as e:
                    self._broken = f"cannot write files cache {self._new_path}: {e}"

    # --- the last push -------------------------------------------------------------------------------------

    def _old_file(self, path: str) -> CacheEntry | None:
        if not self._has_old:
            return None
        directory, name = _split(paths.to_wire(path))
        with self._lock:
            if directory != self._files_dir:  # the walk moved on: read this directory's rows
                self._dir_files = self._read_dir("old.files", directory, _decode_files)
                self._files_dir = directory
            return self._dir_files.get(name)

    def _read_dir(self, table: str, directory: str, decode: Any) -> dict[str, Any]:
        """One directory's rows of ``table`` (the lock held), later pieces over earlier ones."""
        assert self._db is not None
        out: dict[str, Any] = {}
        for (blob,) in self._db.execute(f"SELECT rows FROM {table} WHERE dir = ? ORDER BY seq", (directory,)):
            out.update(decode(blob))
        return out

    def lookup(self, path: str, size: int, mtime_ns: int, inode: int, ctime_ns: int) -> bytes | None:
        """The chunk ids of ``path`` if its stat values match the last push, else None."""
        return self.find(path, size, mtime_ns, inode, ctime_ns)[0]

    def find(
        self, path: str, size: int, mtime_ns: int, inode: int, ctime_ns: int
    ) -> tuple[bytes | None, bytes | None]:
        """``(chunk ids, None)`` if the stat values of ``path`` match the last push; else ``(None, the chunk ids
        the last push stored for it)``: where the chunks of its new version likely grew from, the bases of
        deltas (None for a file it did not store). The walk asks once per file, and the previous ids travel
        with the file to the reactor, which would otherwise read its directory's rows again, a batch later."""
        e = self._old_file(path)
        if e is None or len(e.ids) % 32:
            return None, None
        if (e.size, e.mtime_ns, e.inode, e.ctime_ns) != (size, mtime_ns, inode, ctime_ns):
            return None, e.ids
        return e.ids, None

    def lookup_extra(self, path: str, size: int, mtime_ns: int, inode: int, ctime_ns: int) -> bytes | None:
        """The extra record of ``path`` if its stat values match the last push (and it was remembered)."""
        e = self._old_file(path)
        if e is None or (e.size, e.mtime_ns, e.inode, e.ctime_ns) != (size, mtime_ns, inode, ctime_ns):
            return None
        return e.extra

    def old_entry(self, path: str) -> bytes | None:
        """The digest of the entries the last push sent for the server path ``path`` (None: it sent none)."""
        return self.old_entries([path])[0]

    def old_entries(self, paths: list[str]) -> list[bytes | None]:
        """:meth:`old_entry` of each of ``paths``, reading each directory's rows once: a batch's entries visit
        its directories twice (the entries the walk made, then those of the files read), so looking them up one
        at a time read each directory's rows two to three times. The rows of the directory with the most of
        ``paths`` are kept for the next call: a directory bigger than a batch fills it and goes on in the next
        one (read again for each batch, a directory of N items would cost N * N / BATCH_ITEMS rows read)."""
        if not self._has_old:
            return [None] * len(paths)
        keys = [_entry_key(path) for path in paths]
        with self._lock:
            rows: dict[str, dict[str, bytes]] = {}
            counts: Counter[str] = Counter(directory for directory, _name in keys)
            for directory in counts:
                rows[directory] = (
                    self._dir_entries
                    if directory == self._entries_dir
                    else self._read_dir("old.entries", directory, _decode_entries)
                )
            if counts:
                self._entries_dir = counts.most_common(1)[0][0]
                self._dir_entries = rows[self._entries_dir]
        return [rows[directory].get(name) for directory, name in keys]

    def gone(self) -> Iterator[str]:
        """The server paths the last push sent entries for and this one did not, a directory at a time. Raises
        CacheBroken (before naming any) when this push's rows could not all be written: the directories whose
        rows were lost would all look gone."""
        if not self._has_old:
            return
        with self._lock:
            self._flush()
            if self._broken is not None:
                raise CacheBroken(self._broken)
        last: str | None = None
        while True:
            with self._lock:
                assert self._db is not None
                # only directories with a row that this push's cache does not hold as it is (one taken over
                # whole has all of its rows): the others lost no name
                row = self._db.execute(
                    "SELECT min(o.dir) FROM old.entries o WHERE (? IS NULL OR o.dir > ?) AND NOT EXISTS "
                    "(SELECT 1 FROM main.entries m WHERE m.dir = o.dir AND m.seq = o.seq AND m.rows = o.rows)",
                    (last, last),
                ).fetchone()
                if row[0] is None:
                    return
                last = row[0]
                if last == ROOT_ENTRY_DIR:
                    continue
                old = self._read_dir("old.entries", last, _decode_entries)
                new = self._read_dir("main.entries", last, _decode_entries)
            for name in sorted(old.keys() - new.keys()):
                if name:  # the root's own digest (in a cache that kept it with its items): never gone
                    yield f"{last}/{name}" if last else name

    # --- this push -----------------------------------------------------------------------------------------

    def remember(
        self, path: str, size: int, mtime_ns: int, inode: int, ctime_ns: int, ids: bytes, extra: bytes | None = None
    ) -> None:
        """Record ``path`` for the next push (unless its timestamps are too recent to be trusted)."""
        if mtime_ns >= self.racy_after or ctime_ns >= self.racy_after:
            return
        directory, name = _split(paths.to_wire(path))
        with self._lock:
            self._files.setdefault(directory, {})[name] = CacheEntry(size, mtime_ns, inode, ctime_ns, ids, extra)
            self._queued()

    def note_entry(self, path: str, digest: bytes) -> None:
        """Record the digest of the entries this push sent (or would have sent) for the server path ``path``."""
        directory, name = _entry_key(path)
        with self._lock:
            self._entries.setdefault(directory, {})[name] = digest
            self._queued()

    def see_dir(self, summary: SameDir, take: bool) -> bool:
        """Record a walked directory's signature for the next push; with ``take``, and when the last push
        recorded the same signature for it and remembered all of it (``complete``), take its rows over: its
        files' cache rows and its items' entry digests are copied in SQL, and True says that the push need
        make no record of its items (the snapshot the last push committed, still the latest, holds them)."""
        directory = paths.to_wire(summary.path)
        with self._lock:
            # An item too recent to trust (see SameDir.newest_ns) may change again without changing the
            # signature: such a directory is not recorded, so the next push walks it item by item.
            if summary.newest_ns < self.racy_after:
                self._dirs.append((directory, summary.signature, summary.items, summary.files))
                self._queued()
            if not (take and self._old_dirs and self._broken is None):
                return False
            db = self._connection()
            row = db.execute(
                "SELECT signature, items, files, complete FROM old.dirs WHERE dir = ?", (directory,)
            ).fetchone()
            if row is None or (bytes(row[0]), row[1], row[2], row[3]) != (
                summary.signature, summary.items, summary.files, 1,
            ):  # fmt: skip
                return False
            # Its rows are copied with the next flush, in one transaction with the others (a transaction per
            # directory was a quarter of an unchanged 50,000-file push). Should that copy fail, this push's
            # cache is not saved; the snapshot still holds the directory's items either way.
            self._taken.append((directory,))
            self._queued()
            self.dirs_taken += 1
            return True

    def remembered(self) -> Iterator[str]:
        """The paths this push remembered so far (for tests and diagnostics)."""
        with self._lock:
            self._flush()
            dirs = [d for (d,) in self._connection().execute("SELECT DISTINCT dir FROM main.files ORDER BY dir")]
            names = [(d, n) for d in dirs for n in sorted(self._read_dir("main.files", d, _decode_files))]
        return (paths.from_wire(f"{d}/{n}" if d else n) for d, n in names)

    def _queued(self) -> None:
        """One more row waits to be written (the lock held): write them all once there are FLUSH_ROWS."""
        self._waiting += 1
        if self._waiting >= FLUSH_ROWS:
            self._flush()

    def _flush(self) -> None:
        """Write the waiting rows (the lock held). A failure (a full disk, say) does not stop the push: this
        push's cache is then not saved, and the next push reads what the last good one wrote."""
        if not self._files and not self._entries and not self._dirs and not self._taken:
            return
        try:
            if self._broken is None:
                db = self._connection()
                db.execute("BEGIN")
                try:
                    for table in ("files", "entries") if self._taken else ():
                        db.executemany(
                            f"INSERT INTO main.{table} (dir, seq, rows, n) "
                            f"SELECT dir, seq, rows, n FROM old.{table} WHERE dir = ?",
                            self._taken,
                        )
                    for table, waiting in (("main.files", self._files), ("main.entries", self._entries)):
                        for directory, rows in waiting.items():
                            self._seq += 1
                            row = (directory, self._seq, _encode(rows), len(rows))
                            db.execute(f"INSERT INTO {table} (dir, seq, rows, n) VALUES (?, ?, ?, ?)", row)
                    db.executemany("INSERT OR REPLACE INTO main.dirs VALUES (?, ?, ?, ?, 0)", self._dirs)
                    db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                    raise
        except (OSError, sqlite3.Error) as e:
            if self._broken is None:
                self._broken = f"cannot write files cache {self._new_path}: {e}"
        finally:
            self._files.clear()
            self._entries.clear()
            self._dirs.clear()
            self._taken.clear()
            self._waiting = 0

    def save(self) -> None:
        """Make this push's cache the one the next push reads (call only after a successful commit): fsynced,
        then renamed over the old one. Closes the cache."""
        with self._lock:
            try:
                db = self._connection()
                self._flush()
                if self._broken is not None:
                    raise OSError(self._broken)
                db.execute(_COMPLETE)
                db.execute("DELETE FROM main.meta")
                db.execute("DELETE FROM main.flags")
                db.execute("INSERT INTO main.flags VALUES ('whole', ?)", (int(self.whole),))
                db.execute("INSERT INTO main.meta VALUES (?, ?, ?)", (_FORMAT, paths.to_wire(self.key), self.snapshot))
                if self._has_old:
                    db.execute("DETACH DATABASE old")
                    self._has_old = self._old_dirs = False
                db.close()
                self._db = None
                assert self._new_path is not None
                with open(self._new_path, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(self._new_path, self.path)
                self._new_path = None
                self._legacy.unlink(missing_ok=True)
                fsync_dir(self.directory)
            except sqlite3.Error as e:
                raise OSError(str(e)) from e
            finally:
                self._close()

    def close(self) -> None:
        """Forget this push's unsaved cache (its file is removed); the old one stays as it was."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        self._has_old = self._old_dirs = False
        self._files_dir = self._entries_dir = None
        self._dir_files, self._dir_entries = {}, {}
        self._files.clear()
        self._entries.clear()
        self._dirs.clear()
        self._taken.clear()
        if self._new_path is not None:
            self._new_path.unlink(missing_ok=True)
            self._new_path = None
