"""A target's chunk store: its pack files and the chunk rows of its index, behind a thread-safe API.

Every method does blocking disk work and is meant to run in the reactor's thread pool. The store owns two locks
of its own and uses the index's two (:class:`~neotwist.server.repository.index.Connections`):

- the *store lock* guards the pack writer and the *pending* chunks (appended to a pack, not yet indexed);
- the *gc lock* makes "this chunk is present" answers (:meth:`ChunkStore.missing`, :meth:`ChunkStore.store_chunks`)
  and the garbage collector's sweep exclusive (:meth:`ChunkStore.sweeping`), and guards the *protected* set: the
  chunks an active push relies on (see :mod:`.gc`);
- the index's writer and reader locks, each held only for one statement or transaction.

Lock order is gc, store, then writer or reader (the target's maintenance lock comes before them all);
nothing takes a lock while holding a later one, so there is no deadlock. Chunk verification (decompression and
hashing) runs before any lock is taken, so several uploads verify in parallel.

Durability order: pack bytes are fsynced, then their chunk rows are committed (:meth:`ChunkStore.flush`), then
a push commit that references them (:class:`~neotwist.server.repository.push.Push`). Until flushed, a new chunk
lives in the in-memory pending map, which :meth:`ChunkStore.missing` and duplicate puts consult, so a client
never uploads the same chunk twice in one session.

Garbage collection (:mod:`.gc`), check (:mod:`.check`) and damage marks (:mod:`.damage`) work through the public
methods below and :attr:`ChunkStore.packs`, never through the locks or the pending map.
"""

# ruff: noqa: S608  (SQL text is built only from constants; values are bound)

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neotwist.codec import CodecError, verify_upload
from neotwist.server.repository import damage, index
from neotwist.server.repository.errors import (
    ChunkRejected,
    Damaged,
    OverBudget,
    ReadOnly,
    RecordDamaged,
    RepositoryError,
)
from neotwist.server.repository.packs import HEADER_SIZE, PACK_SIZE, PackStore
from neotwist.server.repository.space import Reserve

AUTO_FLUSH = 32 * 1024 * 1024
"""Pending (appended, unindexed) bytes that trigger a flush, so a killed server keeps most uploaded chunks."""

PROTECTED_MAX = 65_536
"""Chunk ids that active pushes rely on, remembered one by one (about 6 MB); past it everything is protected
until they end (see :meth:`ChunkStore._protect`)."""

RECLAIM_INTERVAL = 60.0
"""Seconds between collections that reclaim aborted pushes' chunks (see :meth:`ChunkStore.push_ended`)."""

ABANDONED_GRACE = 900.0
"""Seconds an aborted push's chunks are kept for a client that reconnects and resumes, unless space is short."""

_IN_BATCH = 500
"""Ids per ``IN (...)`` query: well under SQLite's host-parameter limit."""

Location = tuple[int, int, int, int, int]
"""(pack, offset, length, codec, size) of a stored chunk."""


@dataclass(frozen=True)
class StoreSizes:
    """The sizes a store works with: what a deployment never changes, and tests make small to reach the edges
    (many packs, early flushes, short listing pages) with little data."""

    pack_bytes: int = PACK_SIZE  # a pack file is rotated near this size
    auto_flush: int = AUTO_FLUSH  # pending bytes that trigger a flush
    list_page: int = 512  # version rows fetched per query while listing (the lock is released between pages)


DEFAULT_SIZES = StoreSizes()


class ChunkStore:
    """The chunks of the target in ``directory`` (its ``packs/`` and the chunk rows of ``connections``).

    ``name`` and ``encrypted`` are the target's (messages; which codecs are allowed). ``read_only``: nothing is
    written (``neo-admin check`` beside a running server). ``on_abandoned`` is called after an aborted push has
    ended, in its thread: the target decides whether to collect what it left (see :meth:`push_ended`)."""

    def __init__(
        self,
        directory: Path,
        connections: index.Connections,
        *,
        name: str,
        encrypted: bool,
        read_only: bool = False,
        reserve: Reserve | None = None,
        sizes: StoreSizes = DEFAULT_SIZES,
        on_abandoned: Callable[[], object] = lambda: None,
    ) -> None:
        self.directory = directory
        self.index = connections
        self.name = name
        self.encrypted = encrypted
        self.read_only = read_only
        self.reserve = reserve
        self.auto_flush = sizes.auto_flush
        self.packs = PackStore(directory / "packs", pack_size=sizes.pack_bytes)
        """The pack files. Reading records, sizes, paths and removing whole packs need no lock (PackStore keeps
        its own readers); appending goes through :meth:`store_chunks` and :meth:`append_records` only."""
        self._on_abandoned = on_abandoned
        self._store_lock = threading.Lock()
        self._pending: dict[bytes, Location] = {}
        self._pending_bytes = 0
        self._gc_lock = threading.Lock()
        self._active_pushes = 0
        self._protected: set[bytes] = set()
        self._protect_all = False  # more than PROTECTED_MAX protected ids: a sweep deletes nothing
        self._uncommitted_bytes = 0  # stored anew since no push was active, or since the last collection
        self._aborted_since_collect = False
        self._aborted_at = 0.0
        self._last_collect = -RECLAIM_INTERVAL
        self._closed = False

    def writable(self, what: str) -> None:
        """Refuse (ReadOnly) to ``what`` in a read-only store."""
        if self.read_only:
            raise ReadOnly(f"cannot {what}: target {self.name} is open read-only")

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
            found = self._stored(chunk_id for chunk_id, m in zip(ids, result, strict=True) if m)
            if found:
                result = [m and chunk_id not in found for chunk_id, m in zip(ids, result, strict=True)]
            if self._active_pushes:
                self._protect(chunk_id for chunk_id, m in zip(ids, result, strict=True) if not m)
        return result

    def _stored(self, ids: Iterable[bytes]) -> set[bytes]:
        """Which of ``ids`` the index holds (a query per chunk was a quarter of the server's GIL time on a first
        push)."""
        return {bytes(row[0]) for row in self._index_rows("id", list(ids))}

    def _index_rows(self, columns: str, ids: Sequence[bytes]) -> list[Any]:
        """The index rows (``columns``, the id first) of the chunks among ``ids`` it holds: one query per
        ``_IN_BATCH`` ids, under the reader lock; none (and no lock) for no ids."""
        rows: list[Any] = []
        if not ids:
            return rows
        with self.index.reading() as reader:
            for start in range(0, len(ids), _IN_BATCH):
                batch = ids[start : start + _IN_BATCH]
                marks = ",".join("?" * len(batch))
                rows.extend(reader.execute(f"SELECT {columns} FROM chunks WHERE id IN ({marks})", batch))
        return rows

    def store_chunks(self, chunks: Sequence[tuple[bytes, int, int, bytes]], budget: int | None = None) -> int:
        """Verify and append ``(id, codec, size, data)`` chunks in order under one lock; return how many were
        new. Every chunk is verified before any is appended, so a bad one stores nothing of the batch and
        raises :class:`ChunkRejected` naming its index and carrying the codec's error (bytes that do not
        match id or size, a codec not allowed in this target, out of bounds); DiskFull or StorageFailed when the
        disk refused. With ``budget``, a
        batch whose new chunks would store more bytes than that stores nothing and raises :class:`OverBudget`
        (a quota)."""
        return self.store_chunks_sized(chunks, budget)[0]

    def store_chunks_sized(
        self, chunks: Sequence[tuple[bytes, int, int, bytes]], budget: int | None = None
    ) -> tuple[int, int]:
        """:meth:`store_chunks`, returning (chunks stored anew, their stored bytes): what the batch added to the
        store, which a push confined to a sub-path must never be told (see the session's quota checks)."""
        self.writable("store chunks")
        with self._store_lock:
            held = {c[0] for c in chunks if c[0] in self._pending}
        held |= self._stored(c[0] for c in chunks if c[0] not in held)
        skipped: set[int] = set()
        for n, (chunk_id, codec, size, data) in enumerate(chunks):
            if chunk_id in held:
                skipped.add(n)  # stored already: this copy is dropped unread, so it costs no decompression
                continue
            self._verify(n, chunk_id, codec, size, data)
        new = new_bytes = 0
        with self._gc_lock, self._store_lock:
            pending = self._pending
            # again under the locks: a collection may have removed a chunk found stored above
            stored = self._stored(c[0] for c in chunks if c[0] not in pending)
            fresh: dict[bytes, tuple[int, int, bytes]] = {}
            for n, (chunk_id, codec, size, data) in enumerate(chunks):
                if chunk_id not in pending and chunk_id not in fresh and chunk_id not in stored:
                    if n in skipped:  # collected or discarded since it was found stored: check it now (rare,
                        self._verify(n, chunk_id, codec, size, data)  # so under the lock); never store it unchecked
                    fresh[chunk_id] = (codec, size, data)
            if budget is not None:
                needed = sum(len(data) for _codec, _size, data in fresh.values())
                if needed > budget:
                    raise OverBudget(needed)
            if fresh and self.reserve is not None:  # refused before anything is written: nothing to discard
                self.reserve.check(self.directory, sum(HEADER_SIZE + len(f[2]) for f in fresh.values()))
            with self.discarding_on_error():
                if fresh:
                    self._open_writer()
                    records = [(chunk_id, *record) for chunk_id, record in fresh.items()]
                    for (chunk_id, codec, size, data), (pack, offset) in zip(
                        records, self.packs.append_many(records), strict=True
                    ):
                        pending[chunk_id] = (pack, offset, len(data), codec, size)
                        self._pending_bytes += HEADER_SIZE + len(data)
                        new += 1
                        new_bytes += len(data)
            self._uncommitted_bytes += new_bytes
            full = self._pending_bytes >= self.auto_flush
            if self._active_pushes:  # uploaded or found present: a push will reference them
                self._protect(c[0] for c in chunks)
        if full:
            self.flush()
        return new, new_bytes

    def _verify(self, n: int, chunk_id: bytes, codec: int, size: int, data: bytes) -> None:
        """Check the ``n``-th chunk of a batch against its id; ChunkRejected naming it otherwise."""
        try:
            verify_upload(chunk_id, codec, size, data, encrypted=self.encrypted)
        except CodecError as e:
            raise ChunkRejected(n, e) from None

    def _open_writer(self) -> None:
        """Called with the store lock held."""
        self.writable("write packs")
        if not self.packs.writing:
            last, committed = self._committed_end()
            self.packs.open_writer(last if last else None, committed)

    def _committed_end(self) -> tuple[int, int]:
        """(last pack, its committed size) per the index; (0, 0) before any chunk is stored."""
        with self.index.reading() as reader:
            row = reader.execute("SELECT id, size FROM packs ORDER BY id DESC LIMIT 1").fetchone()
        return (0, 0) if row is None else (row[0], row[1])

    def flush(self) -> None:
        """Make every pending chunk durable and indexed (fsync the pack, then one transaction)."""
        self.flush_mark()

    def flush_mark(self) -> tuple[int, int]:
        """:meth:`flush`, returning the chunk store's position (pack, offset) after it: every chunk stored
        before the flush lies before that position, and every chunk stored later at or after it."""
        with self._store_lock:
            if self._pending or self.packs.dirty:  # dirty: records copied by compaction, or a new pack
                with self.discarding_on_error():
                    touched = self.packs.sync()
                    self._index_pending(touched)
                self.packs.synced(touched)
                self._pending.clear()
                self._pending_bytes = 0
            if self.packs.writing:
                return self.packs.position()
        return self._committed_end()

    def _index_pending(self, touched: dict[int, int]) -> None:
        """One transaction: the pending chunks' rows, the counters, and the packs' committed ends ``touched``
        (called with the store lock held, after the packs were fsynced)."""
        rows = [(chunk_id, *loc) for chunk_id, loc in self._pending.items()]
        stored = sum(loc[2] for loc in self._pending.values())
        with self.index.writing() as writer, index.storage_errors("index chunks"), index.transaction(writer) as db:
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
    def discarding_on_error(self) -> Iterator[None]:
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
            self.packs.discard()
            try:  # give the discarded bytes back to the disk now (truncating needs no free space)
                self._open_writer()
            except RepositoryError:
                pass  # the next append tries again
            raise

    def store_epoch(self) -> int:
        """A number that changes whenever uncommitted appends are discarded (see :meth:`discarding_on_error`):
        garbage collection compares it before and after flushing the records it copied, and points no row at
        a copy that a discard may have dropped."""
        with self._store_lock:
            return self.packs.epoch

    def locate(self, ids: Sequence[bytes]) -> dict[bytes, Location]:
        """Where each stored (or pending) chunk of ``ids`` is, in one index query per _IN_BATCH ids; ids that are
        not stored are absent from the result."""
        found: dict[bytes, Location] = {}
        with self._store_lock:
            pending = self._pending
            for chunk_id in ids:
                loc = pending.get(chunk_id)
                if loc is not None:
                    found[chunk_id] = loc
        ask = list({chunk_id for chunk_id in ids if chunk_id not in found})
        for row in self._index_rows("id, pack, offset, length, codec, size", ask):
            found[bytes(row[0])] = (row[1], row[2], row[3], row[4], row[5])
        return found

    def read_located(self, chunk_id: bytes, loc: Location | None) -> tuple[int, int, bytes]:
        """(codec, raw size, stored bytes) of a chunk at ``loc`` (from :meth:`locate`); Damaged if it is
        not stored or its record does not check out."""
        if loc is None:
            raise Damaged(f"chunk {chunk_id.hex()} is not stored")
        try:
            return self.read_at(chunk_id, loc)
        except Damaged as e:
            # Compaction may have moved the record (and deleted its old pack) since ``loc`` was looked up:
            # look once more before calling it damaged.
            again = self.locate([chunk_id]).get(chunk_id)
            if again is None or again == loc:
                if isinstance(e, RecordDamaged) and again == loc and self._mark_on_read(chunk_id, loc, e):
                    raise Damaged(f"{e.message}; marked damaged: {damage.HEAL_HINT}") from None
                raise e from None
            return self.read_at(chunk_id, again)

    def read_at(self, chunk_id: bytes, loc: Location) -> tuple[int, int, bytes]:
        pack, offset, length, codec, size = loc
        got_codec, got_size, data = self.packs.read(pack, offset, length, chunk_id)
        if (got_codec, got_size) != (codec, size):
            raise RecordDamaged(f"chunk {chunk_id.hex()}: record disagrees with the index")
        return codec, size, data

    def _protect(self, ids: Iterable[bytes]) -> None:
        """Protect ``ids`` from collection until the last active push ends (the gc lock held). Past
        PROTECTED_MAX ids the set is dropped and everything is protected instead, so a push of millions of
        chunks does not hold each id in memory: a collection that runs meanwhile deletes nothing, and the next
        one after the pushes end collects what it left."""
        if self._protect_all:
            return
        self._protected.update(ids)
        if len(self._protected) > PROTECTED_MAX:
            self._protected = set()
            self._protect_all = True

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
                self._protected = set()  # a new set: clear() would keep the big table allocated
                self._protect_all = False
                if not self._aborted_since_collect:
                    self._uncommitted_bytes = 0  # every push since the last collection committed
        if aborted:
            self._on_abandoned()

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

    # --- for garbage collection (see :mod:`.gc`) --------------------------------------------------------

    def collection_started(self) -> None:
        """A collection begins: what aborted pushes left is about to be collected."""
        with self._gc_lock:
            self._aborted_since_collect = False
            self._uncommitted_bytes = 0
            self._last_collect = time.monotonic()

    @contextmanager
    def sweeping(self) -> Iterator[list[bytes] | None]:
        """Hold off every "present" answer and every index write while the collector deletes unreferenced rows
        (through a connection of its own); yields the ids active pushes rely on, which must be kept, or None
        when they are too many to list (see :meth:`_protect`): then every chunk must be kept."""
        with self._gc_lock:
            protected = None if self._protect_all else list(self._protected)
            with self.index.writing():
                yield protected

    def start_new_pack(self, after: int) -> None:
        """Move the writer to a new pack after pack ``after`` (then :meth:`flush` commits its row), so that pack
        becomes an ordinary, compactable one."""
        with self._store_lock, self.discarding_on_error():
            self.writable("write packs")
            self.packs.start_new(after)

    def append_records(self, records: Sequence[tuple[bytes, int, int, bytes]]) -> list[tuple[int, int]]:
        """Append copies of ``(id, codec, size, data)`` records to the current pack (durable and indexed only at
        the next :meth:`flush`); their (pack, offset), in order."""
        with self._store_lock, self.discarding_on_error():
            self._open_writer()
            return self.packs.append_many(records)

    def unindexed_packs(self) -> list[int]:
        """Pack files below the last committed pack that no ``packs`` row names (and that the writer is not
        using): remains of a crash after a compaction committed, before it unlinked."""
        with self._store_lock:
            writing = self.packs.position()[0] if self.packs.writing else None
            with self.index.reading() as reader:
                named = {row[0] for row in reader.execute("SELECT id FROM packs")}
            if not named:
                return []
            last = max(named)
            return [n for n in self.packs.numbers() if n < last and n not in named and n != writing]

    # --- damage, usage, the end ----------------------------------------------------------------------------

    def _mark_on_read(self, chunk_id: bytes, location: Location, error: RecordDamaged) -> bool:
        """A read (a pull) found the record of ``chunk_id`` at ``location`` damaged, and the index still points
        there: read it once more (a bad read is not a bad disk) and mark it if it fails again. Returns whether it
        was marked. Best effort: the read fails with ``error`` anyway, so a failure to mark (a full disk, a locked
        index) is not the reader's business; a read-only store marks nothing."""
        if self.read_only:
            return False
        try:
            self.read_at(chunk_id, location)
            return False  # it read fine the second time
        except RecordDamaged:
            pass
        except Damaged:
            return False  # an I/O error now: not definite
        try:
            return self.mark_damaged([damage.Found(chunk_id, location, error.message)]) == 1
        except (RepositoryError, sqlite3.Error):
            return False

    def pack_indexed(self, pack: int) -> bool:
        """Whether the current index still names ``pack`` (outside any read transaction)."""
        with self.index.reading() as reader:
            return reader.execute("SELECT 1 FROM packs WHERE id = ?", (pack,)).fetchone() is not None

    def mark_damaged(self, found: Sequence[damage.Found], forget: Sequence[bytes] = ()) -> int:
        """Mark damaged chunks and forget marked ones nothing refers to (see :mod:`.damage`); return how many were
        marked now. The one write a read-only store allows: through a writer connection of its own, so a repair
        from ``neo-admin`` beside the running server goes through SQLite's locking like any writer."""
        if not self.read_only:
            with self.index.writing() as db, index.storage_errors("mark damaged chunks"):
                return damage.mark(db, found, forget)
        with index.storage_errors("mark damaged chunks"):
            db = index.connect(self.index.path, index.INDEX_SCHEMA, index.INDEX_MIGRATIONS)
            try:
                return damage.mark(db, found, forget)
            finally:
                db.close()

    def pending(self) -> tuple[int, int]:
        """(chunks, stored bytes) written but not yet indexed: a quota counts them."""
        with self._store_lock:
            return len(self._pending), sum(loc[2] for loc in self._pending.values())

    def close(self) -> None:
        """Flush pending chunks (unless read-only) and close the pack files. Idempotent."""
        if self._closed:
            return
        try:
            if not self.read_only:
                self.flush()
        finally:
            self._closed = True
            with self._store_lock:
                self.packs.close()
