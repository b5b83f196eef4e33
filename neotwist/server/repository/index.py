"""The SQLite files of the repository: their schemas and how connections to them are opened.

``catalog.sqlite`` (one per repository) lists the targets; ``t<id>/index.sqlite`` (one per target) maps chunk
ids to pack records and holds the snapshots and file versions. Both use WAL (readers never block the writer)
and ``synchronous=FULL``: a commit that returned is on disk, which is what lets a client forget what it
pushed.

Versions use an interval ("stash") model: a row is one version of one path, alive from snapshot ``first`` up
to (not including) snapshot ``last``; ``last IS NULL`` marks the current version. An unchanged file costs
nothing per snapshot, and the view of snapshot S is ``first <= S AND (last IS NULL OR last > S)``.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from twisted.logger import Logger

from neotwist.server.repository.errors import DiskFull, StorageFailed

log = Logger()

VIEW = "first <= :s AND (last IS NULL OR last > :s)"
"""The ``versions`` rows alive in snapshot ``:s``: its view (see above)."""

SCHEMA_VERSION = 1
"""Stored in ``PRAGMA user_version`` of both files; later versions migrate forward from it."""

BUSY_TIMEOUT = 60.0
"""Seconds a connection waits for another's write lock before its statement fails ("database is locked")."""

CACHE_BYTES = 64 * 1024 * 1024
"""Page cache each index connection may grow to while in use (``PRAGMA cache_size``): big commits touch many
index pages. Given back once the target is let go of (:meth:`Connections.shrink_memory`)."""

WAL_KEEP = 512 * 1024
"""Bytes of write-ahead log left on disk after a big write. SQLite copies the log into the database at its
checkpoints but leaves the file at its largest size, so after a first push the index was on disk twice (the
log of an encrypted stdlib sample alone was 5 MiB). A commit that left more than this truncates the log
(:meth:`Connections.trim_wal`), and ``journal_size_limit`` makes SQLite cut it back to this size whenever it
starts the log over."""

CATALOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS targets (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    encrypted INTEGER NOT NULL,
    chunker_algorithm TEXT NOT NULL,
    chunker_min INTEGER NOT NULL,
    chunker_avg INTEGER NOT NULL,
    chunker_max INTEGER NOT NULL,
    chunker_seed INTEGER NOT NULL,
    keep_history INTEGER NOT NULL DEFAULT 1,
    key_check BLOB NOT NULL DEFAULT x'',  -- encrypted targets: the client's key-check record (opaque)
    UNIQUE (account_id, name)
);
"""

CATALOG_MIGRATIONS = (
    # 1 -> 2 (encryption): encrypted targets keep the key-check record their creator sent.
    "ALTER TABLE targets ADD COLUMN key_check BLOB NOT NULL DEFAULT x'';",
)
"""Scripts that bring an older ``catalog.sqlite`` forward, one per version after SCHEMA_VERSION; a new file
gets the current schema directly. The file's ``user_version`` is SCHEMA_VERSION + len(CATALOG_MIGRATIONS)."""

DAMAGED_SCHEMA = """
CREATE TABLE IF NOT EXISTS damaged (
    id BLOB PRIMARY KEY,          -- 32-byte chunk id, never also in chunks
    pack INTEGER,                 -- where its bad record was (NULL: it was referenced but not stored)
    offset INTEGER,
    length INTEGER,
    why TEXT NOT NULL,            -- what was wrong with it
    time REAL NOT NULL            -- when it was marked (server time)
) WITHOUT ROWID;

CREATE TRIGGER IF NOT EXISTS damaged_healed AFTER INSERT ON chunks
BEGIN
    DELETE FROM damaged WHERE id = NEW.id;
END;
"""
"""Chunks marked damaged (see :mod:`.damage`): moved out of ``chunks``, so ``have`` answers "missing" and the next
push of the intact file uploads them; storing one anew (a row inserted into ``chunks``) heals it."""

INDEX_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    id BLOB PRIMARY KEY,          -- 32-byte chunk id
    pack INTEGER NOT NULL,        -- pack number
    offset INTEGER NOT NULL,      -- offset of the record header in the pack
    length INTEGER NOT NULL,      -- stored bytes (after the header)
    codec INTEGER NOT NULL,       -- 0 raw, 1 zstd, 2 sealed
    size INTEGER NOT NULL         -- raw size
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS packs (
    id INTEGER PRIMARY KEY,       -- pack number
    size INTEGER NOT NULL         -- bytes of the pack that are committed; anything after is a crash orphan
);

CREATE TABLE IF NOT EXISTS counters (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    chunks INTEGER NOT NULL,
    stored_bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (id, chunks, stored_bytes) VALUES (1, 0, 0);

CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,           -- server time, never before the previous snapshot's
    files INTEGER NOT NULL,       -- non-directory entries in the view
    dirs INTEGER NOT NULL,        -- directory entries in the view
    changed INTEGER NOT NULL,     -- versions this snapshot added
    deleted INTEGER NOT NULL,     -- paths this snapshot removed
    new_chunks INTEGER NOT NULL,  -- referenced chunks stored since the previous snapshot
    new_bytes INTEGER NOT NULL,
    root TEXT NOT NULL,           -- the push root (sub-path) that produced it
    delete_mode INTEGER NOT NULL, -- the push removed unlisted paths under root
    mark_pack INTEGER NOT NULL,   -- pack position of the chunk store at commit: chunks at or after the
    mark_offset INTEGER NOT NULL, -- previous snapshot's mark are "new" for the next one
    pruned INTEGER NOT NULL DEFAULT 0, -- 1 = removed by retention: never listed again (see history.py)
    label BLOB NOT NULL DEFAULT x''    -- host, source, tags, warnings (see server/labels.py); x'' = none recorded
);

CREATE TABLE IF NOT EXISTS versions (
    path TEXT NOT NULL,           -- relative to the target root, '/'-separated, '' = the root
    first INTEGER NOT NULL,       -- snapshot that added this version
    last INTEGER,                 -- first snapshot where it no longer exists; NULL = current
    kind TEXT NOT NULL,           -- 'f', 'd', 'l'
    mode INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    size INTEGER NOT NULL,
    chunks BLOB NOT NULL,         -- concatenated 32-byte chunk ids
    link TEXT NOT NULL,
    meta BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS versions_path ON versions (path, first);
CREATE UNIQUE INDEX IF NOT EXISTS versions_current ON versions (path) WHERE last IS NULL;
""" + DAMAGED_SCHEMA
"""``versions_current`` finds a path's current version in one probe and guarantees there is at most one."""

INDEX_MIGRATIONS = (
    # 1 -> 2 (healing): chunks found damaged wait in ``damaged`` until a push stores them again.
    DAMAGED_SCHEMA,
    # 2 -> 3 (snapshot labels): what each snapshot says about itself; older snapshots have none.
    "ALTER TABLE snapshots ADD COLUMN label BLOB NOT NULL DEFAULT x'';",
)
"""Scripts that bring an older ``index.sqlite`` forward (as CATALOG_MIGRATIONS for the catalog)."""


def _statements(script: str) -> Iterator[str]:
    """The SQL statements of ``script``, one at a time (so they can run inside one explicit transaction:
    ``executescript`` would commit it first)."""
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            yield buf
            buf = ""
    if buf.strip():
        yield buf


def _apply_schema(db: sqlite3.Connection, schema: str, migrations: tuple[str, ...]) -> None:
    """Create or migrate forward, in one transaction: two processes opening a new or old file at once cannot
    interleave the DDL, and a failed migration leaves the file as it was."""
    latest = SCHEMA_VERSION + len(migrations)
    with transaction(db):
        found = db.execute("PRAGMA user_version").fetchone()[0]
        if found > latest:
            raise StorageFailed(f"{db} was written by a newer Neophytos (schema {found})")
        if found == latest:
            return  # brought forward by another process since connect looked: nothing to write
        if found:
            for script in migrations[found - SCHEMA_VERSION :]:
                for statement in _statements(script):
                    db.execute(statement)
        for statement in _statements(schema):
            db.execute(statement)
        db.execute(f"PRAGMA user_version={latest}")


def connect(path: Path, schema: str | None, migrations: tuple[str, ...] = ()) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit ``BEGIN``/``COMMIT``), shareable between
    threads (callers serialize use with a lock), WAL, durable commits; ``schema`` is applied when given, after
    ``migrations`` bring an older file forward."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute(f"PRAGMA cache_size=-{CACHE_BYTES // 1024}")
        db.execute(f"PRAGMA journal_size_limit={WAL_KEEP}")
        # A file at the latest version got its whole schema in the transaction that set it: opening it again
        # (targets are reopened after being closed for idleness) writes nothing and waits for no lock.
        latest = SCHEMA_VERSION + len(migrations)
        if schema is not None and db.execute("PRAGMA user_version").fetchone()[0] != latest:
            _apply_schema(db, schema, migrations)
    except BaseException:
        db.close()
        raise
    return db


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot write to ``path`` (SQLite refuses: "attempt to write a readonly database"),
    for tools that inspect a repository a running server owns (``neo-admin check``). WAL lets it read while
    the server writes; temp tables still work. Raises sqlite3.OperationalError if the file does not exist."""
    uri = "file:" + urllib.parse.quote(str(path.absolute())) + "?mode=ro"
    db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT)
    try:
        db.execute(f"PRAGMA cache_size=-{CACHE_BYTES // 1024}")
    except BaseException:
        db.close()
        raise
    return db


DISK_FULL_TEXT = "the server's disk is full"
"""How a full disk is named, to the client and in the log: never as an authentication failure or an internal
error."""

_SQLITE_FULL = 13
"""``SQLITE_FULL``: "database or disk is full" (also what ``PRAGMA max_page_count`` gives)."""


def storage_error(what: str, e: sqlite3.OperationalError | OSError) -> StorageFailed:
    """The error for a failed write, fsync or transaction: DiskFull for a full disk or quota (SQLite's
    SQLITE_FULL, ENOSPC, EDQUOT), StorageFailed for anything else (an I/O error, a lock held too long). Logged (see
    :func:`logged`): the client is told, and so is the operator."""
    if isinstance(e, sqlite3.OperationalError):
        full = getattr(e, "sqlite_errorcode", None) == _SQLITE_FULL
        reason = str(e)
    else:
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        reason = e.strerror or str(e)
    if full:
        return logged(DiskFull(f"cannot {what}: {DISK_FULL_TEXT}", what))
    return logged(StorageFailed(f"cannot {what}: {reason}", what))


_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)
_SQLITE_STORAGE = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_READONLY")
"""SQLite's errors of a full, failing, busy or read-only disk (extended codes start with these names). Not
SQLITE_CANTOPEN: a file that cannot be opened at all is a broken setup, or no descriptor left (told apart
elsewhere)."""


def is_storage_failure(e: BaseException) -> bool:
    """Whether ``e`` is the disk failing a read or a write (SQLite: full, I/O error, busy or locked, read-only;
    ENOSPC, EDQUOT, EIO, EROFS), rather than a bug: such a failure is told as :func:`storage_error` says, never
    as an internal error or a wrong password."""
    if isinstance(e, sqlite3.OperationalError):
        name = getattr(e, "sqlite_errorname", "")
        return name.startswith(_SQLITE_STORAGE)
    return isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS


LOG_EVERY = 10.0
"""Seconds between log lines about storage failures of one kind: a full disk fails every upload at once."""

_last_logged: dict[type[StorageFailed], tuple[float, int]] = {}
_log_lock = threading.Lock()

_Failed = TypeVar("_Failed", bound=StorageFailed)


def logged(error: _Failed) -> _Failed:
    """Log a storage failure for the operator, at most once per LOG_EVERY per kind (a full disk, or any other
    failure; saying how many more there were), and return it."""
    now = time.monotonic()
    kind = type(error)
    with _log_lock:
        last, quiet = _last_logged.get(kind, (-LOG_EVERY, 0))
        if now - last < LOG_EVERY:
            _last_logged[kind] = (last, quiet + 1)
            return error
        _last_logged[kind] = (now, 0)
    more = f" (and {quiet} more like it)" if quiet else ""
    log.warn("storage: {message}{more}", message=error.message, more=more)
    return error


@contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Report SQLite's operational failures (disk full, I/O error, locked too long) as DiskFull or
    StorageFailed (see :func:`storage_error`): the transaction they interrupted was rolled back (see
    :func:`transaction`), so nothing was committed, and the client can be told so."""
    try:
        yield
    except sqlite3.OperationalError as e:
        raise storage_error(what, e) from None


@contextmanager
def transaction(db: sqlite3.Connection, *, immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """``BEGIN [IMMEDIATE]`` ... ``COMMIT``; on any error, ``ROLLBACK`` and re-raise that error.

    SQLite itself rolls back on some failures (a full disk, an I/O error during the commit) and keeps the
    transaction open on others (a ``COMMIT`` that found the database locked): the rollback is issued only
    while a transaction is still open, so the error the caller sees is always the one that happened, never
    "cannot rollback - no transaction is active". A failed rollback is not allowed to hide it either.
    """
    db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the connection rolls back when it is closed; the first error is the one to report
        raise


class Connections:
    """A target's two connections to its ``index.sqlite``, each behind its own lock: the *writer* (chunk rows,
    push staging, commits, prunes) and a *reader*, so pulls and ``missing`` queries proceed (WAL) while a long
    commit holds the writer. ``read_only`` opens both read-only (``neo-admin check`` beside a running server).

    Use them only through :meth:`writing` and :meth:`reading`: the lock is held for exactly the block."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        if read_only:
            self._db = connect_read_only(path)
            self._reader = connect_read_only(path)
        else:
            self._db = connect(path, INDEX_SCHEMA, INDEX_MIGRATIONS)
            self._reader = connect(path, None)
        self._lock = threading.Lock()
        self._reader_lock = threading.Lock()
        self.closed = False

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """The writer connection, under the writer lock."""
        with self._lock:
            yield self._db

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The read connection, under the reader lock."""
        with self._reader_lock:
            yield self._reader

    def trim_wal(self) -> bool:
        """Copy the write-ahead log into the database and truncate it, if it is longer than WAL_KEEP; whether it
        was truncated. Called after big writes (a commit), under the writer lock. It never waits for readers: a
        reader still using the log (a listing, a restore) makes it give up at once (the log then stays until
        the next big write or the close), and SQLite's own checkpoints go on as before."""
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            if wal.stat().st_size <= WAL_KEEP:
                return False
        except FileNotFoundError:
            return False
        with self._lock:
            if self.closed:
                return False
            db = self._db
            try:
                db.execute("PRAGMA busy_timeout=0")
                try:
                    busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                finally:
                    db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
            except sqlite3.Error as e:  # what was committed stays committed; the log is only longer
                log.warn("storage: cannot truncate the write-ahead log of {path}: {e}", path=self.path, e=e)
                return False
        return not busy

    def shrink_memory(self) -> int:
        """Give back the page cache of each connection nobody is using right now; how many were shrunk. Never
        waits: a connection whose lock is taken is in use and keeps its cache."""
        shrunk = 0
        for db, lock in ((self._db, self._lock), (self._reader, self._reader_lock)):
            if lock.acquire(blocking=False):
                try:
                    if not self.closed:
                        db.execute("PRAGMA shrink_memory")
                        shrunk += 1
                finally:
                    lock.release()
        return shrunk

    def close(self) -> None:
        self.closed = True
        with self._lock:
            self._db.close()
        with self._reader_lock:
            self._reader.close()
