"""One target: its chunk store and its snapshots, behind a thread-safe API.

A :class:`Target` composes the target's index connections (:class:`~.index.Connections`, a writer and a reader,
each behind its own lock) and its :class:`~.chunkstore.ChunkStore` (the pack files and chunk rows, with the store
and gc locks), and adds the snapshots and versions: listings, pushes (:class:`~.push.Push`), prunes, garbage
collection (:mod:`.gc`) and check (:mod:`.check`). Every method does blocking disk work and is meant to run in
the reactor's thread pool.

Five locks keep the threads apart without serializing everything, taken in this order (nothing takes a lock
while holding a later one, so there is no deadlock):

1. the *maintenance lock* (here): one garbage collection or check at a time, and none while the target is
   removed;
2. the chunk store's *gc lock*: "present" answers and the collector's sweep are exclusive;
3. the chunk store's *store lock*: the pack writer and the pending chunks;
4. and 5. the index's *writer* and *reader* locks, each held for one statement or transaction.
"""

# ruff: noqa: S608  (SQL text is built only from constants and generated table names; values are bound)

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from twisted.logger import Logger

from neotwist import paths
from neotwist.atomicfile import fsync_dir
from neotwist.server.repository import check as check_module
from neotwist.server.repository import damage, gc, history, index
from neotwist.server.repository.chunkstore import DEFAULT_SIZES, ChunkStore, Location, StoreSizes
from neotwist.server.repository.errors import Damaged, NoSuchPath, NoSuchSnapshot, RepositoryError
from neotwist.server.repository.history import snapshot_columns, snapshot_info
from neotwist.server.repository.packs import make_dirs
from neotwist.server.repository.push import Push
from neotwist.server.repository.records import (
    CheckReport,
    DeletedInfo,
    GcResult,
    PruneResult,
    SnapshotInfo,
    StoredEntry,
    TargetMeta,
    Usage,
    VersionInfo,
)
from neotwist.server.repository.space import Reserve

log = Logger()

_ENTRY_COLUMNS = "path, kind, mode, mtime_ns, size, chunks, link, meta"


class Target:
    """A target opened from its directory (``ROOT/t<id>``). Owned by the :class:`Repository` that opened it:
    callers share it, hold it while they use it and must not close it (the repository closes it once nobody
    holds it, see :meth:`Repository.release`).

    ``read_only`` opens an existing target for inspection only (``neo-admin check`` beside a running server):
    both connections are read-only, nothing is created, and the pack writer is never opened, so no pack is
    truncated or appended to; methods that would write raise ReadOnly.
    """

    def __init__(
        self,
        meta: TargetMeta,
        directory: Path,
        *,
        read_only: bool = False,
        reserve: Reserve | None = None,
        sizes: StoreSizes = DEFAULT_SIZES,
    ) -> None:
        self.meta = meta
        self.directory = directory
        self.read_only = read_only
        self._page = sizes.list_page
        db_path = directory / "index.sqlite"
        if read_only:
            if not db_path.exists():
                raise Damaged(f"target {meta.name}: {db_path} is missing")
            self.index = index.Connections(db_path, read_only=True)
        else:
            make_dirs(directory / "packs")
            created = not db_path.exists()
            self.index = index.Connections(db_path)
            if created:
                fsync_dir(directory)
        self.chunks = ChunkStore(
            directory,
            self.index,
            name=meta.name,
            encrypted=meta.encrypted,
            read_only=read_only,
            reserve=reserve,
            sizes=sizes,
            on_abandoned=self.reclaim,
        )
        """The pack files and chunk rows; the methods below that concern chunks hand on to it."""
        self._push_numbers = itertools.count(1)
        self._maintenance_lock = threading.Lock()
        self._closed = False

    def _writable(self, what: str) -> None:
        self.chunks.writable(what)

    @property
    def reserve(self) -> Reserve | None:
        """The free space pushes and new chunks must leave (None: no reserve); the chunk store's."""
        return self.chunks.reserve

    @reserve.setter
    def reserve(self, reserve: Reserve | None) -> None:
        self.chunks.reserve = reserve

    def __repr__(self) -> str:
        return f"<Target {self.meta.id} {self.meta.name!r} of account {self.meta.account_id}>"

    # --- chunks (see :class:`ChunkStore`) -------------------------------------------------------------------

    def missing(self, ids: Sequence[bytes]) -> list[bool]:
        """See :meth:`ChunkStore.missing`."""
        return self.chunks.missing(ids)

    def store_chunks(self, chunks: Sequence[tuple[bytes, int, int, bytes]], budget: int | None = None) -> int:
        """See :meth:`ChunkStore.store_chunks`."""
        return self.store_chunks_sized(chunks, budget)[0]

    def store_chunks_sized(
        self, chunks: Sequence[tuple[bytes, int, int, bytes]], budget: int | None = None
    ) -> tuple[int, int]:
        """See :meth:`ChunkStore.store_chunks_sized`."""
        return self.chunks.store_chunks_sized(chunks, budget)

    def locate(self, ids: Sequence[bytes]) -> dict[bytes, Location]:
        """See :meth:`ChunkStore.locate`."""
        return self.chunks.locate(ids)

    def read_located(self, chunk_id: bytes, loc: Location | None) -> tuple[int, int, bytes]:
        """See :meth:`ChunkStore.read_located`."""
        return self.chunks.read_located(chunk_id, loc)

    def flush(self) -> None:
        """Make every pending chunk durable and indexed (see :meth:`ChunkStore.flush`)."""
        self.chunks.flush()

    def mark_damaged(self, found: Sequence[damage.Found], forget: Sequence[bytes] = ()) -> int:
        """See :meth:`ChunkStore.mark_damaged`."""
        return self.chunks.mark_damaged(found, forget)

    def reclaim_wanted(self, now: float | None = None) -> bool:
        """Whether chunks an aborted push left are due for collection (see :meth:`ChunkStore.push_ended`)."""
        return self.chunks.reclaim_wanted(now)

    @property
    def awaiting_reclaim(self) -> bool:
        """See :attr:`ChunkStore.awaiting_reclaim`: the repository keeps the target open until then."""
        return self.chunks.awaiting_reclaim

    def reclaim(self) -> GcResult | None:
        """Collect garbage if :meth:`reclaim_wanted`; its result, or None. A failure is logged, never raised:
        the push that ended has nothing to do with it, and the next reclaim or prune tries again."""
        if not self.reclaim_wanted():
            return None
        try:
            return self.collect_garbage()
        except RepositoryError as e:
            log.warn("cannot reclaim the space of an aborted push in {target}: {why}", target=self, why=e.message)
            return None

    # --- pushes ------------------------------------------------------------------------------------------

    def begin_push(self, root: str, delete: bool, parent: int | None = None) -> Push:
        """Start staging a new snapshot of the tree at ``root`` (a target-relative path, '' = everything); with
        ``parent``, staging only the changes since that snapshot (see :class:`Push`). Raises DiskFull while the
        free space is below the reserve."""
        self._writable("push")
        paths.check_path(root)
        if self.reserve is not None:
            self.reserve.check(self.directory)
        return Push(self.chunks, self.meta.encrypted, root, delete, next(self._push_numbers), parent)

    # --- snapshots and entries ---------------------------------------------------------------------------

    def latest(self) -> SnapshotInfo | None:
        with self.index.reading() as reader:
            row = reader.execute(
                f"SELECT {snapshot_columns(reader)} FROM snapshots WHERE pruned = 0 ORDER BY id DESC LIMIT 1"
            ).fetchone()
        return None if row is None else snapshot_info(row)

    def snapshot(self, snapshot_id: int) -> SnapshotInfo | None:
        with self.index.reading() as reader:
            row = reader.execute(
                f"SELECT {snapshot_columns(reader)} FROM snapshots WHERE id = ? AND pruned = 0", (snapshot_id,)
            ).fetchone()
        return None if row is None else snapshot_info(row)

    def snapshot_count(self) -> int:
        with self.index.reading() as reader:
            return int(reader.execute("SELECT count(*) FROM snapshots WHERE pruned = 0").fetchone()[0])

    def snapshots(self) -> list[SnapshotInfo]:
        """Every kept (not pruned) snapshot, ascending by id."""
        with self.index.reading() as reader:
            return history.snapshots(reader)

    def versions(self, path: str) -> list[VersionInfo]:
        """Every stored version of ``path`` that a kept snapshot holds, oldest first (see
        :class:`VersionInfo`). Raises BadPath, NoSuchPath (no kept snapshot has anything there)."""
        with self.index.reading() as reader:
            return history.versions(reader, path)

    def deleted(self, path: str) -> list[DeletedInfo]:
        """Paths at or below ``path`` ('' = everything) that the current view lacks but a kept snapshot still
        holds, newest version of each, sorted by path. Raises BadPath."""
        with self.index.reading() as reader:
            return history.deleted(reader, path)

    # --- retention and maintenance -----------------------------------------------------------------------

    def prune(self, remove: Sequence[int]) -> PruneResult:
        """Mark the snapshots ``remove`` pruned and drop the versions no kept snapshot holds any more, in one
        transaction. Unknown and already pruned ids are ignored. Raises LatestSnapshot (nothing changed) if
        ``remove`` names the latest snapshot. The space goes back to the disk at :meth:`collect_garbage`."""
        self._writable("prune")
        with self.index.writing() as db:
            return history.prune(db, remove)

    def collect_garbage(self) -> GcResult:
        """Delete the chunks no version references and compact packs with much dead space (see :mod:`.gc`).
        Safe while pushes and pulls run; one collection at a time."""
        self._writable("collect garbage")
        with self._maintenance_lock:
            self.chunks.collection_started()
            return gc.collect(self.chunks)

    def apply_no_history(self) -> GcResult | None:
        """For a target that keeps no history (``meta.keep_history`` False): prune every snapshot but the
        latest at once (so nothing older is listable), and collect garbage when that dropped versions (their
        chunks may now be unreferenced). Returns the collection's result, None when none ran or the target
        keeps history."""
        if self.meta.keep_history:
            return None
        self._writable("prune")
        with self.index.writing() as db:
            older = [
                row[0]
                for row in db.execute(
                    "SELECT id FROM snapshots WHERE pruned = 0 AND id < (SELECT max(id) FROM snapshots)"
                )
            ]
            result = history.prune(db, older)
        if result.versions_removed == 0:
            return None
        return self.collect_garbage()

    def check(
        self,
        verify_data: bool = False,
        progress: Callable[[int, int], None] | None = None,
        root: str | None = None,
        repair: bool = False,
    ) -> CheckReport:
        """Check that the index and the packs agree (every record read and its header and CRC checked); with
        ``verify_data`` also that every plaintext chunk decompresses and hashes to its id. ``progress(done,
        total)`` is called now and then with stored bytes checked so far and in all. With ``root``, only the
        chunks that versions at or below it reference (a handle confined to a granted sub-path). Read-only: safe
        on a target a running server is using, and on a read-only target (see :mod:`.check`). ``repair`` marks
        what it finds damaged, so the next push of the intact file heals it (see :meth:`mark_damaged`)."""
        with self._maintenance_lock:
            return check_module.check(self.chunks, verify_data, progress, root, repair)

    def list_entries(self, snapshot_id: int, path: str, recursive: bool) -> Iterator[StoredEntry]:
        """The entries of ``snapshot_id`` at and below ``path`` (target-relative paths), sorted by path (UTF-8
        byte order); with ``recursive=False`` only ``path`` and its direct children.

        Raises at once (not on first iteration): BadPath, NoSuchSnapshot, NoSuchPath when nothing is at
        or below ``path`` (never for the root ''). Rows are fetched in pages with the lock released between
        them; a committed snapshot's view never changes, so pages are consistent.
        """
        paths.check_path(path)
        if self.snapshot(snapshot_id) is None:
            raise NoSuchSnapshot(snapshot_id, self.meta.name)
        lo, hi = (path + "/", path + "0") if path else ("", None)
        upper = "" if hi is None else " AND path < :hi"
        with self.index.reading() as reader:
            top = reader.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM versions WHERE path = :p AND {index.VIEW}",
                {"p": path, "s": snapshot_id},
            ).fetchone()
            if top is None and path:
                below = reader.execute(
                    f"SELECT 1 FROM versions WHERE path > :lo{upper} AND {index.VIEW} LIMIT 1",
                    {"lo": lo, "hi": hi, "s": snapshot_id},
                ).fetchone()
                if below is None:
                    raise NoSuchPath(path, snapshot_id)
        children = "" if recursive else " AND instr(substr(path, :cut), '/') = 0"
        sql = (
            f"SELECT {_ENTRY_COLUMNS} FROM versions WHERE path > :after{upper} AND {index.VIEW}{children} "
            f"ORDER BY path LIMIT {self._page}"
        )
        return self._iter_entries(top, sql, {"after": lo, "hi": hi, "s": snapshot_id, "cut": len(lo) + 1})

    def _iter_entries(self, top: tuple | None, sql: str, params: dict[str, object]) -> Iterator[StoredEntry]:
        if top is not None:
            yield _stored(top)
        while True:
            with self.index.reading() as reader:
                rows = reader.execute(sql, params).fetchall()
            for row in rows:
                yield _stored(row)
            if len(rows) < self._page:
                return
            params["after"] = rows[-1][0]

    def usage(self) -> Usage:
        """Stored bytes and chunks include pending (written, not yet indexed) ones: what a quota counts."""
        pending_chunks, pending_bytes = self.chunks.pending()
        with self.index.reading() as reader:
            chunks, stored = reader.execute("SELECT chunks, stored_bytes FROM counters").fetchone()
            row = reader.execute(
                "SELECT files, dirs FROM snapshots WHERE pruned = 0 ORDER BY id DESC LIMIT 1"
            ).fetchone()
        files, dirs = (0, 0) if row is None else row
        return Usage(stored + pending_bytes, chunks + pending_chunks, files, dirs)

    def shrink_memory(self) -> int:
        """Give back the page cache of each index connection nobody is using right now; return how many were
        shrunk. Never waits: a connection whose lock is taken is in use and keeps its cache. The server calls
        this now and then, so a long-running process that has touched many targets does not keep a 64 MiB
        cache per connection of each (a target stays open while it is used, and a while after: see
        :class:`Repository`)."""
        return self.index.shrink_memory()

    def close(self) -> None:
        """Flush pending chunks and release files. Idempotent."""
        if self._closed:
            return
        try:
            self.chunks.close()
        finally:
            self._closed = True
            self.index.close()

    # --- for views confined to a sub-path --------------------------------------------------------

    def version_counts(self) -> tuple[int, int]:
        """(file and symlink versions, directory versions) kept, over all history: what SpacePerFile and
        SpacePerDir charge for. One scan of ``versions``."""
        with self.index.reading() as reader:
            files, dirs = reader.execute(
                "SELECT coalesce(sum(kind != 'd'), 0), coalesce(sum(kind = 'd'), 0) FROM versions"
            ).fetchone()
        return int(files), int(dirs)

    @contextmanager
    def maintenance(self) -> Iterator[None]:
        """Hold off garbage collection and check (waits for a running one): used while the target is removed."""
        with self._maintenance_lock:
            yield

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The read connection, under its lock (used by :mod:`.view`)."""
        with self.index.reading() as reader:
            yield reader


_stored = StoredEntry._make
"""A ``versions`` row of :data:`_ENTRY_COLUMNS` as a record (SQLite hands BLOBs over as bytes)."""
