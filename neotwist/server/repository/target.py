"""One target: its chunk store (packs + chunk index) and its snapshots, behind a thread-safe API.

Every method does blocking disk work and is meant to run in the reactor's thread pool. Three locks keep the
threads apart without serializing everything:

- ``_store_lock`` guards the pack writer and the *pending* chunks (appended to a pack, not yet indexed);
- ``_lock`` guards the writer connection to ``index.sqlite`` (chunk rows, push staging, commits);
- ``_reader_lock`` guards a second, read-only connection, so pulls and ``missing`` queries proceed (WAL) while
  a long commit holds the writer;
- ``_gc_lock`` makes "this chunk is present" answers (:meth:`missing`, :meth:`store_chunks`) and the garbage
  collector's sweep exclusive, and guards the *protected* set: the chunks an active push relies on (see
  :mod:`.gc`);
- ``_maintenance_lock`` runs one garbage collection or check at a time.

Lock order is maintenance, gc, store, then writer or reader; nothing takes a lock while holding a later one,
so there is no deadlock. Chunk verification (decompression and hashing) runs before any lock is taken, so
several uploads verify in parallel.

Durability order: pack bytes are fsynced, then their chunk rows are committed (:meth:`Target.flush`), then a
push commit that references them (:class:`~neotwist.server.repository.push.Push`). Until flushed, a new chunk
lives in the in-memory pending map, which :meth:`missing` and duplicate puts consult, so a client never
uploads the same chunk twice in one session.
"""

# ruff: noqa: S608  (SQL text is built only from constants and generated table names; values are bound)

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from twisted.logger import Logger

from neotwist import paths
from neotwist.atomicfile import fsync_dir
from neotwist.codec import verify_upload
from neotwist.server.repository import check as check_module
from neotwist.server.repository import damage, gc, history, index
from neotwist.server.repository.history import snapshot_columns, snapshot_info
from neotwist.server.repository.packs import HEADER_SIZE, PackStore, RecordDamaged, make_dirs
from neotwist.server.repository.push import Push
from neotwist.server.repository.records import (
    CheckReport,
    DeletedInfo,
    GcResult,
    PruneResult,
    SnapshotInfo,
    TargetMeta,
    Usage,
    VersionInfo,
)
from neotwist.server.repository.space import Reserve
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, NeoError
from neotwist.wire.messages import Entry

AUTO_FLUSH = 32 * 1024 * 1024
"""Pending (appended, unindexed) bytes that trigger a flush, so a killed server keeps most uploaded chunks."""

RECLAIM_INTERVAL = 60.0
"""Seconds between collections that reclaim aborted pushes' chunks (see :meth:`Target.push_ended`)."""

ABANDONED_GRACE = 900.0
"""Seconds an aborted push's chunks are kept for a client that reconnects and resumes, unless space is short."""

log = Logger()

_IN_BATCH = 500
"""Ids per ``IN (...)`` query: well under SQLite's host-parameter limit."""

_PAGE = 512
"""Rows fetched per query while listing; the lock is released between pages."""

_Location = tuple[int, int, int, int, int]
"""(pack, offset, length, codec, size) of a stored chunk."""

_VIEW = "first <= :s AND (last IS NULL OR last > :s)"
"""The versions alive in snapshot :s."""

_ENTRY_COLUMNS = "path, kind, mode, mtime_ns, size, chunks, link, meta"


class ChunkRejected(NeoError):
    """A chunk of a batch failed verification; ``index`` says which (the rest of the batch was not stored)."""

    def __init__(self, index: int, error: NeoError) -> None:
        super().__init__(error.code, error.message)
        self.index = index


class OverBudget(NeoError):
    """A batch of chunks would store ``needed`` new bytes, over the budget it was given (the session words the
    quota refusal)."""

    def __init__(self, needed: int) -> None:
        super().__init__(ErrorCode.QUOTA_EXCEEDED, f"{needed} new bytes are over the budget")
        self.needed = needed


class Target:
    """A target opened from its directory (``ROOT/t<id>``). Owned by the :class:`Repository` that opened it:
    callers share it, hold it while they use it and must not close it (the repository closes it once nobody
    holds it, see :meth:`Repository.release`).

    ``read_only`` opens an existing target for inspection only (``neo-admin check`` beside a running server):
    both connections are read-only, nothing is created, and the pack writer is never opened, so no pack is
    truncated or appended to; methods that would write raise NeoError(PERMISSION_DENIED).
    """

    def __init__(
        self, meta: TargetMeta, directory: Path, *, read_only: bool = False, reserve: Reserve | None = None
    ) -> None:
        self.meta = meta
        self.directory = directory
        self.read_only = read_only
        self.reserve = reserve
        db_path = directory / "index.sqlite"
        if read_only:
            if not db_path.exists():
                raise NeoError(ErrorCode.DAMAGED, f"target {meta.name}: {db_path} is missing")
            self._db = index.connect_read_only(db_path)
            self._reader = index.connect_read_only(db_path)
        else:
            make_dirs(directory / "packs")
            created = not db_path.exists()
            self._db = index.connect(db_path, index.INDEX_SCHEMA, index.INDEX_MIGRATIONS)
            if created:
                fsync_dir(directory)
            self._reader = index.connect(db_path, None)
        self._lock = threading.Lock()
        self._reader_lock = threading.Lock()
        self._packs = PackStore(directory / "packs")
        self._store_lock = threading.Lock()
        self._pending: dict[bytes, _Location] = {}
        self._pending_bytes = 0
        self._push_numbers = itertools.count(1)
        self._gc_lock = threading.Lock()
        self._active_pushes = 0
        self._protected: set[bytes] = set()
        self._uncommitted_bytes = 0  # stored anew since no push was active, or since the last collection
        self._aborted_since_collect = False
        self._aborted_at = 0.0
        self._last_collect = -RECLAIM_INTERVAL
        self._maintenance_lock = threading.Lock()
        self._closed = False

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise NeoError(ErrorCode.PERMISSION_DENIED, f"cannot {what}: target {self.meta.name} is open read-only")

    def __repr__(self) -> str:
        return f"<Target {self.meta.id} {self.meta.name!r} of account {self.meta.account_id}>"

    # --- chunks ------------------------------------------------------------------------------------------

    def missing(self, ids: Sequence[bytes]) -> list[bool]:
        """For each id: True when it is neither stored nor pending (the client must upload it).

        While a push is active on this target, the ids answered present are protected from garbage collection
        until the last active push ends: the client will reference them without uploading them.
        """
        result = [True] * len(ids)
        with self._gc_lock:
            with self._store_lock:
                pending = self._pending
                for i, chunk_id in enumerate(ids):
                    if chunk_id in pending:
                        result[i] = False
            ask = [chunk_id for chunk_id, m in zip(ids, result, strict=True) if m]
            found: set[bytes] = set()
            with self._reader_lock:
                for start in range(0, len(ask), _IN_BATCH):
                    batch = ask[start : start + _IN_BATCH]
                    marks = ",".join("?" * len(batch))
                    found.update(
                        bytes(r[0])
                        for r in self._reader.execute(f"SELECT id FROM chunks WHERE id IN ({marks})", batch)
                    )
            if found:
                result = [m and chunk_id not in found for chunk_id, m in zip(ids, result, strict=True)]
            if self._active_pushes:
                self._protected.update(chunk_id for chunk_id, m in zip(ids, result, strict=True) if not m)
        return result

    def _indexed(self, chunk_id: bytes) -> _Location | None:
        with self._reader_lock:
            row = self._reader.execute(
                "SELECT pack, offset, length, codec, size FROM chunks WHERE id = ?", (chunk_id,)
            ).fetchone()
        return None if row is None else (row[0], row[1], row[2], row[3], row[4])

    def store_chunk(self, chunk_id: bytes, codec: int, size: int, data: bytes) -> bool:
        """Verify and append one chunk; True if it was new, False if already stored or pending.

        Raises NeoError: CHUNK_MISMATCH (bytes do not match id or size), ENCRYPTION_MISMATCH (codec not
        allowed in this target), LIMIT_EXCEEDED / BAD_MESSAGE (out of bounds), STORAGE (disk refused).
        """
        return self.store_chunks([(chunk_id, codec, size, data)]) == 1

    def store_chunks(self, chunks: Sequence[tuple[bytes, int, int, bytes]], budget: int | None = None) -> int:
        """Verify and append ``(id, codec, size, data)`` chunks in order under one lock; return how many were
        new. Every chunk is verified before any is appended, so a bad one stores nothing of the batch and
        raises :class:`ChunkRejected` naming its index (errors as :meth:`store_chunk`). With ``budget``, a
        batch whose new chunks would store more bytes than that stores nothing and raises :class:`OverBudget`
        (a quota)."""
        return self.store_chunks_sized(chunks, budget)[0]

    def store_chunks_sized(
        self, chunks: Sequence[tuple[bytes, int, int, bytes]], budget: int | None = None
    ) -> tuple[int, int]:
        """:meth:`store_chunks`, returning (chunks stored anew, their stored bytes): what the batch added to the
        store, which a push confined to a sub-path must never be told (see the session's quota checks)."""
        self._writable("store chunks")
        with self._store_lock:
            held = {c[0] for c in chunks if c[0] in self._pending}
        skipped: set[int] = set()
        for n, (chunk_id, codec, size, data) in enumerate(chunks):
            if chunk_id in held or self._indexed(chunk_id) is not None:
                skipped.add(n)  # stored already: this copy is dropped unread, so it costs no decompression
                continue
            self._verify(n, chunk_id, codec, size, data)
        new = new_bytes = 0
        with self._gc_lock, self._store_lock:
            pending = self._pending
            fresh: dict[bytes, tuple[int, int, bytes]] = {}
            for n, (chunk_id, codec, size, data) in enumerate(chunks):
                if chunk_id not in pending and chunk_id not in fresh and self._indexed(chunk_id) is None:
                    if n in skipped:  # collected or discarded since it was found stored: check it now (rare,
                        self._verify(n, chunk_id, codec, size, data)  # so under the lock); never store it unchecked
                    fresh[chunk_id] = (codec, size, data)
            if budget is not None:
                needed = sum(len(data) for _codec, _size, data in fresh.values())
                if needed > budget:
                    raise OverBudget(needed)
            if fresh and self.reserve is not None:  # refused before anything is written: nothing to discard
                self.reserve.check(self.directory, sum(HEADER_SIZE + len(f[2]) for f in fresh.values()))
            with self._discarding_on_error():
                for chunk_id, (codec, size, data) in fresh.items():
                    self._open_writer()
                    pack, offset = self._packs.append(chunk_id, codec, size, data)
                    pending[chunk_id] = (pack, offset, len(data), codec, size)
                    self._pending_bytes += HEADER_SIZE + len(data)
                    new += 1
                    new_bytes += len(data)
            self._uncommitted_bytes += new_bytes
            full = self._pending_bytes >= AUTO_FLUSH
            if self._active_pushes:  # uploaded or found present: a push will reference them
                self._protected.update(c[0] for c in chunks)
        if full:
            self.flush()
        return new, new_bytes

    def _verify(self, n: int, chunk_id: bytes, codec: int, size: int, data: bytes) -> None:
        """Check the ``n``-th chunk of a batch against its id; ChunkRejected naming it otherwise."""
        try:
            verify_upload(chunk_id, codec, size, data, encrypted=self.meta.encrypted)
        except NeoError as e:
            raise ChunkRejected(n, e) from None

    def _open_writer(self) -> None:
        """Called with the store lock held."""
        self._writable("write packs")
        if not self._packs.writing:
            last, committed = self._committed_end()
            self._packs.open_writer(last if last else None, committed)

    def _committed_end(self) -> tuple[int, int]:
        """(last pack, its committed size) per the index; (0, 0) before any chunk is stored."""
        with self._reader_lock:
            row = self._reader.execute("SELECT id, size FROM packs ORDER BY id DESC LIMIT 1").fetchone()
        return (0, 0) if row is None else (row[0], row[1])

    def flush(self) -> None:
        """Make every pending chunk durable and indexed (fsync the pack, then one transaction)."""
        self.flush_mark()

    def flush_mark(self) -> tuple[int, int]:
        """:meth:`flush`, returning the chunk store's position (pack, offset) after it: every chunk stored
        before the flush lies before that position, and every chunk stored later at or after it."""
        with self._store_lock:
            if self._pending or self._packs.dirty:  # dirty: records copied by compaction, or a new pack
                with self._discarding_on_error():
                    touched = self._packs.sync()
                    self._index_pending(touched)
                self._packs.synced(touched)
                self._pending.clear()
                self._pending_bytes = 0
            if self._packs.writing:
                return self._packs.position()
        return self._committed_end()

    def _index_pending(self, touched: dict[int, int]) -> None:
        """One transaction: the pending chunks' rows, the counters, and the packs' committed ends ``touched``
        (called with the store lock held, after the packs were fsynced)."""
        rows = [(chunk_id, *loc) for chunk_id, loc in self._pending.items()]
        stored = sum(loc[2] for loc in self._pending.values())
        with self._lock, index.storage_errors("index chunks"), index.transaction(self._db) as db:
            cur = db.executemany(
                "INSERT OR IGNORE INTO chunks (id, pack, offset, length, codec, size) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            if cur.rowcount == len(rows):
                db.execute(
                    "UPDATE counters SET chunks = chunks + ?, stored_bytes = stored_bytes + ?", (len(rows), stored)
                )
            else:  # some were indexed already (cannot happen with one writer): recount
                db.execute(
                    "UPDATE counters SET (chunks, stored_bytes) = "
                    "(SELECT count(*), coalesce(sum(length), 0) FROM chunks)"
                )
            db.executemany(
                "INSERT INTO packs (id, size) VALUES (?, ?) "
                "ON CONFLICT (id) DO UPDATE SET size = max(size, excluded.size)",
                sorted(touched.items()),
            )

    @contextmanager
    def _discarding_on_error(self) -> Iterator[None]:
        """Called with the store lock held, around appends and flushes: if any of them fails, every chunk not
        yet committed to the index is forgotten (pending map, pack writer, touched pack ends; see
        :meth:`PackStore.discard`). Their bytes may not be durable, and a later flush must never index them:
        the clients are told they are missing and upload them again. A committed snapshot only ever refers to
        chunks whose rows were committed after their bytes were fsynced."""
        try:
            yield
        except BaseException:
            self._pending.clear()
            self._pending_bytes = 0
            self._packs.discard()
            try:  # give the discarded bytes back to the disk now (truncating needs no free space)
                self._open_writer()
            except NeoError:
                pass  # the next append tries again
            raise

    def store_epoch(self) -> int:
        """A number that changes whenever uncommitted appends are discarded (see :meth:`_discarding_on_error`):
        garbage collection compares it before and after flushing the records it copied, and points no row at
        a copy that a discard may have dropped."""
        with self._store_lock:
            return self._packs.epoch

    def locate(self, ids: Sequence[bytes]) -> dict[bytes, _Location]:
        """Where each stored (or pending) chunk of ``ids`` is, in one index query per _IN_BATCH ids; ids that are
        not stored are absent from the result."""
        found: dict[bytes, _Location] = {}
        with self._store_lock:
            pending = self._pending
            for chunk_id in ids:
                loc = pending.get(chunk_id)
                if loc is not None:
                    found[chunk_id] = loc
        ask = list({chunk_id for chunk_id in ids if chunk_id not in found})
        with self._reader_lock:
            for start in range(0, len(ask), _IN_BATCH):
                batch = ask[start : start + _IN_BATCH]
                marks = ",".join("?" * len(batch))
                for row in self._reader.execute(
                    f"SELECT id, pack, offset, length, codec, size FROM chunks WHERE id IN ({marks})", batch
                ):
                    found[bytes(row[0])] = (row[1], row[2], row[3], row[4], row[5])
        return found

    def read_located(self, chunk_id: bytes, loc: _Location | None) -> tuple[int, int, bytes]:
        """(codec, raw size, stored bytes) of a chunk at ``loc`` (from :meth:`locate`); NeoError(DAMAGED) if it is
        not stored or its record does not check out."""
        if loc is None:
            raise NeoError(ErrorCode.DAMAGED, f"chunk {chunk_id.hex()} is not stored")
        try:
            return self._read_at(chunk_id, loc)
        except NeoError as e:
            # Compaction may have moved the record (and deleted its old pack) since ``loc`` was looked up:
            # look once more before calling it damaged.
            again = self.locate([chunk_id]).get(chunk_id)
            if again is None or again == loc:
                if isinstance(e, RecordDamaged) and again == loc and damage.on_read(self, chunk_id, loc, e):
                    raise NeoError(e.code, f"{e.message}; marked damaged: {damage.HEAL_HINT}") from None
                raise e from None
            return self._read_at(chunk_id, again)

    def _read_at(self, chunk_id: bytes, loc: _Location) -> tuple[int, int, bytes]:
        pack, offset, length, codec, size = loc
        got_codec, got_size, data = self._packs.read(pack, offset, length, chunk_id)
        if (got_codec, got_size) != (codec, size):
            raise RecordDamaged(f"chunk {chunk_id.hex()}: record disagrees with the index")
        return codec, size, data

    def read_chunk(self, chunk_id: bytes) -> tuple[int, int, bytes]:
        """(codec, raw size, stored bytes) of a chunk; NeoError(DAMAGED) if it is not stored or its record
        does not check out."""
        with self._store_lock:
            loc = self._pending.get(chunk_id)
        return self.read_located(chunk_id, loc if loc is not None else self._indexed(chunk_id))

    # --- pushes ------------------------------------------------------------------------------------------

    def begin_push(self, root: str, delete: bool, parent: int | None = None) -> Push:
        """Start staging a new snapshot of the tree at ``root`` (a target-relative path, '' = everything); with
        ``parent``, staging only the changes since that snapshot (see :class:`Push`). Raises DISK_FULL while the
        free space is below the reserve."""
        self._writable("push")
        paths.check_path(root)
        if self.reserve is not None:
            self.reserve.check(self.directory)
        return Push(self, root, delete, next(self._push_numbers), parent)

    def push_started(self) -> None:
        """Count an active push: from now until it ends, the chunks it is told are present and the chunks it
        uploads are protected from garbage collection. :class:`Push` calls this and :meth:`push_ended`."""
        with self._gc_lock:
            self._active_pushes += 1

    def push_ended(self, *, aborted: bool = False) -> None:
        """A push committed (its chunks are now referenced) or was aborted; the last one to end drops the
        protected set.

        The chunks an aborted push (failed, refused, or its connection lost) stored anew may be referenced by
        nothing. They are kept for ABANDONED_GRACE, so a client that reconnects resumes from them, and then
        reclaimed by a garbage collection (:meth:`reclaim`, which the server calls periodically) without
        waiting for a prune; at once, in this thread, when the free space is short (the collection deletes
        packs that hold nothing live first, so it works on a full disk). At most one such collection per
        RECLAIM_INTERVAL: a client that aborts push after push cannot keep the target collecting."""
        with self._gc_lock:
            self._active_pushes -= 1
            if aborted and self._uncommitted_bytes > 0:
                self._aborted_since_collect = True
                self._aborted_at = time.monotonic()
            if self._active_pushes <= 0:
                self._active_pushes = 0
                self._protected.clear()
                if not self._aborted_since_collect:
                    self._uncommitted_bytes = 0  # every push since the last collection committed
        if aborted:
            self.reclaim()

    def reclaim_wanted(self, now: float | None = None) -> bool:
        """Whether chunks an aborted push left are due for collection (see :meth:`push_ended`)."""
        now = time.monotonic() if now is None else now
        with self._gc_lock:
            if (
                self._active_pushes
                or not self._aborted_since_collect
                or self.read_only
                or self._closed
                or now - self._last_collect < RECLAIM_INTERVAL
            ):
                return False
            due = now - self._aborted_at >= ABANDONED_GRACE
        return due or (self.reserve is not None and self.reserve.tight(self.directory))

    @property
    def awaiting_reclaim(self) -> bool:
        """True while chunks an aborted push left wait for :meth:`reclaim`: the repository keeps the target open
        until then. Read without a lock (a hint: the repository asks while holding its own lock, which a
        collection holding the gc lock must never make it wait for)."""
        return self._aborted_since_collect and not self.read_only

    def reclaim(self) -> GcResult | None:
        """Collect garbage if :meth:`reclaim_wanted`; its result, or None. A failure is logged, never raised:
        the push that ended has nothing to do with it, and the next reclaim or prune tries again."""
        if not self.reclaim_wanted():
            return None
        try:
            return self.collect_garbage()
        except NeoError as e:
            log.warn("cannot reclaim the space of an aborted push in {target}: {why}", target=self, why=e.message)
            return None

    # --- snapshots and entries ---------------------------------------------------------------------------

    def latest(self) -> SnapshotInfo | None:
        with self._reader_lock:
            row = self._reader.execute(
                f"SELECT {snapshot_columns(self._reader)} FROM snapshots WHERE pruned = 0 ORDER BY id DESC LIMIT 1"
            ).fetchone()
        return None if row is None else snapshot_info(row)

    def snapshot(self, snapshot_id: int) -> SnapshotInfo | None:
        with self._reader_lock:
            row = self._reader.execute(
                f"SELECT {snapshot_columns(self._reader)} FROM snapshots WHERE id = ? AND pruned = 0", (snapshot_id,)
            ).fetchone()
        return None if row is None else snapshot_info(row)

    def snapshot_count(self) -> int:
        with self._reader_lock:
            return int(self._reader.execute("SELECT count(*) FROM snapshots WHERE pruned = 0").fetchone()[0])

    def snapshots(self) -> list[SnapshotInfo]:
        """Every kept (not pruned) snapshot, ascending by id."""
        with self._reader_lock:
            return history.snapshots(self._reader)

    def versions(self, path: str) -> list[VersionInfo]:
        """Every stored version of ``path`` that a kept snapshot holds, oldest first (see
        :class:`VersionInfo`). Raises BAD_PATH, NO_SUCH_PATH (no kept snapshot has anything there)."""
        with self._reader_lock:
            return history.versions(self._reader, path)

    def deleted(self, path: str) -> list[DeletedInfo]:
        """Paths at or below ``path`` ('' = everything) that the current view lacks but a kept snapshot still
        holds, newest version of each, sorted by path. Raises BAD_PATH."""
        with self._reader_lock:
            return history.deleted(self._reader, path)

    # --- retention and maintenance -----------------------------------------------------------------------

    def prune(self, remove: Sequence[int]) -> PruneResult:
        """Mark the snapshots ``remove`` pruned and drop the versions no kept snapshot holds any more, in one
        transaction. Unknown and already pruned ids are ignored. Raises CONFLICT (nothing changed) if
        ``remove`` names the latest snapshot. The space goes back to the disk at :meth:`collect_garbage`."""
        self._writable("prune")
        with self._lock:
            return history.prune(self._db, remove)

    def collect_garbage(self) -> GcResult:
        """Delete the chunks no version references and compact packs with much dead space (see :mod:`.gc`).
        Safe while pushes and pulls run; one collection at a time."""
        self._writable("collect garbage")
        with self._maintenance_lock:
            with self._gc_lock:
                self._aborted_since_collect = False
                self._uncommitted_bytes = 0
                self._last_collect = time.monotonic()
            return gc.collect(self)

    def apply_no_history(self) -> GcResult | None:
        """For a target that keeps no history (``meta.keep_history`` False): prune every snapshot but the
        latest at once (so nothing older is listable), and collect garbage when that dropped versions (their
        chunks may now be unreferenced). Returns the collection's result, None when none ran or the target
        keeps history."""
        if self.meta.keep_history:
            return None
        self._writable("prune")
        with self._lock:
            older = [
                row[0]
                for row in self._db.execute(
                    "SELECT id FROM snapshots WHERE pruned = 0 AND id < (SELECT max(id) FROM snapshots)"
                )
            ]
            result = history.prune(self._db, older)
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
            return check_module.check(self, verify_data, progress, root, repair)

    def mark_damaged(self, found: Sequence[damage.Found], forget: Sequence[bytes] = ()) -> int:
        """Mark damaged chunks and forget marked ones nothing refers to (see :mod:`.damage`); return how many were
        marked now. The one write a read-only target allows: through a writer connection of its own, so a repair
        from ``neo-admin`` beside the running server goes through SQLite's locking like any writer."""
        if not self.read_only:
            with self._lock, index.storage_errors("mark damaged chunks"):
                return damage.mark(self._db, found, forget)
        with index.storage_errors("mark damaged chunks"):
            db = index.connect(self.directory / "index.sqlite", index.INDEX_SCHEMA, index.INDEX_MIGRATIONS)
            try:
                return damage.mark(db, found, forget)
            finally:
                db.close()

    def list_entries(self, snapshot_id: int, path: str, recursive: bool) -> Iterator[Entry]:
        """The entries of ``snapshot_id`` at and below ``path`` (target-relative paths), sorted by path (UTF-8
        byte order); with ``recursive=False`` only ``path`` and its direct children.

        Raises at once (not on first iteration): BAD_PATH, NO_SUCH_SNAPSHOT, NO_SUCH_PATH when nothing is at
        or below ``path`` (never for the root ''). Rows are fetched in pages with the lock released between
        them; a committed snapshot's view never changes, so pages are consistent. A file with more than
        MAX_FILE_CHUNK_IDS chunk ids comes as several records, all but the last with ``more``.
        """
        paths.check_path(path)
        if self.snapshot(snapshot_id) is None:
            raise NeoError(
                ErrorCode.NO_SUCH_SNAPSHOT, f"no snapshot {snapshot_id} in target {self.meta.name}"
            )
        lo, hi = (path + "/", path + "0") if path else ("", None)
        upper = "" if hi is None else " AND path < :hi"
        with self._reader_lock:
            top = self._reader.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM versions WHERE path = :p AND {_VIEW}",
                {"p": path, "s": snapshot_id},
            ).fetchone()
            if top is None and path:
                below = self._reader.execute(
                    f"SELECT 1 FROM versions WHERE path > :lo{upper} AND {_VIEW} LIMIT 1",
                    {"lo": lo, "hi": hi, "s": snapshot_id},
                ).fetchone()
                if below is None:
                    raise NeoError(ErrorCode.NO_SUCH_PATH, f"nothing at {path!r} in snapshot {snapshot_id}")
        children = "" if recursive else " AND instr(substr(path, :cut), '/') = 0"
        sql = (
            f"SELECT {_ENTRY_COLUMNS} FROM versions WHERE path > :after{upper} AND {_VIEW}{children} "
            f"ORDER BY path LIMIT {_PAGE}"
        )
        return self._iter_entries(top, sql, {"after": lo, "hi": hi, "s": snapshot_id, "cut": len(lo) + 1})

    def _iter_entries(self, top: tuple | None, sql: str, params: dict[str, object]) -> Iterator[Entry]:
        if top is not None:
            yield from _records(top)
        while True:
            with self._reader_lock:
                rows = self._reader.execute(sql, params).fetchall()
            for row in rows:
                yield from _records(row)
            if len(rows) < _PAGE:
                return
            params["after"] = rows[-1][0]

    def file_chunks(self, snapshot_id: int, path: str) -> bytes | None:
        """The concatenated chunk ids of the file at ``path`` in ``snapshot_id``; None if no file is there."""
        with self._reader_lock:
            row = self._reader.execute(
                f"SELECT chunks FROM versions WHERE path = :p AND kind = 'f' AND {_VIEW}",
                {"p": path, "s": snapshot_id},
            ).fetchone()
        return None if row is None else bytes(row[0])

    def usage(self) -> Usage:
        """Stored bytes and chunks include pending (written, not yet indexed) ones: what a quota counts."""
        with self._store_lock:
            pending_chunks = len(self._pending)
            pending_bytes = sum(loc[2] for loc in self._pending.values())
        with self._reader_lock:
            chunks, stored = self._reader.execute("SELECT chunks, stored_bytes FROM counters").fetchone()
            row = self._reader.execute(
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
        shrunk = 0
        for db, lock in ((self._db, self._lock), (self._reader, self._reader_lock)):
            if lock.acquire(blocking=False):
                try:
                    if not self._closed:
                        db.execute("PRAGMA shrink_memory")
                        shrunk += 1
                finally:
                    lock.release()
        return shrunk

    def close(self) -> None:
        """Flush pending chunks and release files. Idempotent."""
        if self._closed:
            return
        try:
            if not self.read_only:
                self.flush()
        finally:
            self._closed = True
            with self._store_lock:
                self._packs.close()
            with self._lock:
                self._db.close()
            with self._reader_lock:
                self._reader.close()

    # --- for Push ----------------------------------------------------------------------------------------

    @property
    def writer(self) -> tuple[sqlite3.Connection, threading.Lock]:
        """The writer connection and its lock (used by :class:`Push`)."""
        return self._db, self._lock

    # --- for views confined to a sub-path (issue 5) --------------------------------------------------------

    def version_counts(self) -> tuple[int, int]:
        """(file and symlink versions, directory versions) kept, over all history: what SpacePerFile and
        SpacePerDir charge for. One scan of ``versions``."""
        with self._reader_lock:
            files, dirs = self._reader.execute(
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
        with self._reader_lock:
            yield self._reader


def _records(row: tuple) -> Iterator[Entry]:
    """One version row as wire entries: a file with more chunk ids than one record carries is split."""
    path, kind, mode, mtime_ns, size, chunks, link, meta = row
    step = limits.MAX_FILE_CHUNK_IDS * limits.ID_SIZE
    if len(chunks) <= step:
        yield Entry(path, kind, mode, mtime_ns, size, bytes(chunks), link, bytes(meta))
        return
    for start in range(0, len(chunks), step):
        more = start + step < len(chunks)
        yield Entry(
            path, kind, mode, mtime_ns, size, bytes(chunks[start : start + step]), link, bytes(meta), more
        )
