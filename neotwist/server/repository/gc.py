"""Garbage collection of one target: delete the chunks no version references, then compact packs.

Called by :meth:`Target.collect_garbage` (under the target's maintenance lock, so one collection at a time),
through the chunk store's public methods (:class:`~.chunkstore.ChunkStore`).
It works while pushes and pulls run. The steps, and why each is safe (docs/storage.md has the full argument):

1. **Flush.** Pending chunks become indexed rows, so the sweep and the pack statistics see every record.
2. **Mark** (no lock held; a read transaction on a connection of its own): every chunk id of every versions
   row goes into a temp table ``live``, and the highest snapshot id S0 at that moment is noted. Pruning has
   already deleted the versions no kept snapshot sees, so every remaining row counts.
3. **Sweep** (gc lock, then the writer lock, one ``BEGIN IMMEDIATE`` transaction): add to ``live`` the ids of
   versions rows committed after the mark (``first > S0``: a commit adds rows only with its new snapshot id)
   and the target's *protected* ids (what active pushes were told is present or uploaded), then delete every
   chunk row not in ``live`` and lower the counters by what was deleted. Holding the gc lock means no
   "present" answer can fall between the protected set being read and the rows being deleted; holding the
   writer lock means no commit interleaves with the re-check.
4. **Compact.** A pack whose dead bytes are more than :data:`DEAD_FRACTION` of it is rewritten (the last
   committed pack, which the writer appends to, only after the writer has moved on to a new pack): its live
   records are read and checked (header, id, CRC), appended to the current pack under the store lock, then
   made durable and their pack sizes committed by a flush. Packs with no live record at all are not copied.
   Then ONE transaction points the moved chunk rows at their copies (only rows still at the old place) and
   deletes the old packs' rows; after it commits, the old pack files are unlinked and their directories
   fsynced. This goes :data:`COMPACT_BATCH` packs at a time.
5. **Leftovers.** Pack files that no ``packs`` row names and that are numbered below the last committed pack
   are what a crash between step 4's commit and its unlinks leaves behind: no row points into them, so they
   are unlinked too.

A pull that looked up a chunk before it moved finds the old record gone (or, if it still has the old pack
open, reads the identical old bytes); :meth:`Target.read_located` then looks it up once more and reads the
copy.
"""

# ruff: noqa: S608  (SQL text is built only from constants; values are bound)

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator

from neotwist.bounds import ID_SIZE
from neotwist.server.repository import damage, index
from neotwist.server.repository.chunkstore import ChunkStore
from neotwist.server.repository.errors import Damaged
from neotwist.server.repository.packs import FILE_MAGIC, HEADER_SIZE
from neotwist.server.repository.records import GcResult
from neotwist.server.repository.space import free_bytes

DEAD_FRACTION = 0.25
"""A pack is rewritten when more than this share of its bytes belongs to no live record."""

COMPACT_BATCH = 4
"""Packs rewritten per index transaction (at most this many packs' worth of copies exist twice at once)."""

_BATCH = 2000
"""Versions rows read per fetch while marking."""

_Move = tuple[int, int, bytes, int, int]
"""(new pack, new offset, chunk id, old pack, old offset): the UPDATE's parameters."""


def _ids(rows: list[tuple[bytes]]) -> Iterator[tuple[bytes]]:
    step = ID_SIZE
    for (chunks,) in rows:
        for i in range(0, len(chunks), step):
            yield (chunks[i : i + step],)


def _mark(db: sqlite3.Connection) -> int:
    """Fill ``temp.live`` with the chunk ids of every versions row; return the newest snapshot id seen."""
    db.execute("CREATE TEMP TABLE IF NOT EXISTS live (id BLOB PRIMARY KEY) WITHOUT ROWID")
    db.execute("DELETE FROM temp.live")
    with index.transaction(db, immediate=False):  # one read snapshot: the rows and S0 agree
        (s0,) = db.execute("SELECT coalesce(max(id), 0) FROM snapshots").fetchone()
        cur = db.execute("SELECT chunks FROM main.versions WHERE length(chunks) > 0")
        while rows := cur.fetchmany(_BATCH):
            db.executemany("INSERT OR IGNORE INTO temp.live VALUES (?)", _ids(rows))
    return int(s0)


def _sweep(store: ChunkStore, db: sqlite3.Connection, s0: int) -> tuple[int, int]:
    """Delete unreferenced, unprotected chunk rows; return (chunks, stored bytes) deleted."""
    with store.sweeping() as protected:
        with index.storage_errors("delete unreferenced chunks"):
            with index.transaction(db):
                cur = db.execute("SELECT chunks FROM main.versions WHERE first > ? AND length(chunks) > 0", (s0,))
                while rows := cur.fetchmany(_BATCH):
                    db.executemany("INSERT OR IGNORE INTO temp.live VALUES (?)", _ids(rows))
                db.executemany("INSERT OR IGNORE INTO temp.live VALUES (?)", ((i,) for i in protected))
                dead = "NOT EXISTS (SELECT 1 FROM temp.live l WHERE l.id = chunks.id)"
                count, stored = db.execute(
                    f"SELECT count(*), coalesce(sum(length), 0) FROM main.chunks WHERE {dead}"
                ).fetchone()
                if count:
                    db.execute(f"DELETE FROM main.chunks WHERE {dead}")
                    db.execute(
                        "UPDATE counters SET chunks = chunks - ?, stored_bytes = stored_bytes - ?", (count, stored)
                    )
                if damage.exists(db):  # marks nothing refers to any more: no push will heal them, none needs to
                    db.execute(
                        "DELETE FROM main.damaged WHERE NOT EXISTS (SELECT 1 FROM temp.live l WHERE l.id = damaged.id)"
                    )
    db.execute("DELETE FROM temp.live")
    return int(count), int(stored)


def _dead(size: int, live: tuple[int, int]) -> bool:
    """Whether a pack of committed ``size`` with ``live`` (records, bytes) is worth rewriting."""
    return live[0] > 0 and size - len(FILE_MAGIC) - live[1] > DEAD_FRACTION * size


def _candidates(db: sqlite3.Connection) -> tuple[list[tuple[int, int]], list[int], bool]:
    """(packs to rewrite with their live bytes, cheapest copy first; packs with no live record; whether the
    last committed pack is worth compacting).

    The last committed pack is never a candidate: the writer may append to it (now, or after a restart); when
    it is worth compacting, the caller moves the writer to a new pack first and asks again."""
    sizes = dict(db.execute("SELECT id, size FROM packs").fetchall())
    if not sizes:
        return [], [], False
    last = max(sizes)
    live = {
        pack: (count, used)
        for pack, count, used in db.execute(
            f"SELECT pack, count(*), sum(length) + count(*) * {HEADER_SIZE} FROM chunks GROUP BY pack"
        )
    }
    rewrite, empty = [], []
    for pack, size in sorted(sizes.items()):
        if pack == last:
            continue
        if pack not in live:
            empty.append(pack)
        elif _dead(size, live[pack]):
            rewrite.append((pack, int(live[pack][1])))
    rewrite.sort(key=lambda c: (c[1], c[0]))  # least to copy first: the most space back soonest
    last_live = live.get(last, (0, 0))
    last_dead = (last_live[0] == 0 and sizes[last] > len(FILE_MAGIC)) or _dead(sizes[last], last_live)
    return rewrite, empty, last_dead


def _seal_last(store: ChunkStore, db: sqlite3.Connection) -> None:
    """Move the writer past the last committed pack and commit the new pack's row, so the old last pack is
    an ordinary (compactable) pack."""
    (last,) = db.execute("SELECT max(id) FROM packs").fetchone()
    store.start_new_pack(last)
    store.flush()


def _copy(store: ChunkStore, db: sqlite3.Connection, pack: int) -> tuple[list[_Move], int] | str:
    """Copy the live records of ``pack`` to the current pack (not yet durable); return the moves and the bytes
    copied, or why the pack must be left alone (a live record that does not check out is never copied)."""
    rows = db.execute(
        "SELECT id, offset, length, codec, size FROM chunks WHERE pack = ? ORDER BY offset", (pack,)
    ).fetchall()
    records = []
    for chunk_id, offset, length, codec, size in rows:
        cid = bytes(chunk_id)
        try:
            got_codec, got_size, data = store.packs.read(pack, offset, length, cid)
        except Damaged as e:
            return f"pack {pack} left as is: {e.message}"
        if (got_codec, got_size) != (codec, size):
            return f"pack {pack} left as is: chunk {cid.hex()} record disagrees with the index"
        records.append((cid, offset, codec, size, data))
    placed = store.append_records([(cid, codec, size, data) for cid, _offset, codec, size, data in records])
    moves: list[_Move] = [
        (new_pack, new_offset, cid, pack, offset)
        for (new_pack, new_offset), (cid, offset, _codec, _size, _data) in zip(placed, records, strict=True)
    ]
    copied = sum(HEADER_SIZE + len(data) for _cid, _offset, _codec, _size, data in records)
    return moves, copied


SPACE_MARGIN = 4 * 1024 * 1024
"""Free bytes a compaction leaves untouched for the index's own writes (its WAL grows by a few pages with each
switch); a quarter of the free space when that is less, so a nearly full disk can still be compacted (a copy
that finds no room anyway fails cleanly: it is discarded and the old pack stays)."""


def _room(free: int) -> int:
    return free - min(SPACE_MARGIN, free // 4)


def _batches(
    rewrite: list[tuple[int, int]], free: Callable[[], int]
) -> Iterator[tuple[list[int], list[tuple[int, int]]]]:
    """Group the packs to rewrite (``(pack, live bytes)``, cheapest first) into batches of at most
    COMPACT_BATCH whose copies fit in the space ``free()`` reports when the batch starts; yields (batch, the
    packs that do not fit even alone, which are left as they are)."""
    i = 0
    while i < len(rewrite):
        room = free()
        batch: list[int] = []
        too_big: list[tuple[int, int]] = []
        while i < len(rewrite) and len(batch) < COMPACT_BATCH:
            pack, live = rewrite[i]
            if live + HEADER_SIZE > room:
                if batch:
                    break  # it may fit once this batch's packs are gone
                too_big.append((pack, live))
            else:
                batch.append(pack)
                room -= live
            i += 1
        yield batch, too_big


def _switch(store: ChunkStore, moves: list[_Move], dropped: list[int]) -> None:
    """One transaction: moved rows point at their copies, the dropped packs' rows go."""
    with store.index.writing() as db, index.storage_errors("index compacted packs"):
        with index.transaction(db):
            db.executemany("UPDATE chunks SET pack = ?, offset = ? WHERE id = ? AND pack = ? AND offset = ?", moves)
            db.executemany("DELETE FROM packs WHERE id = ?", [(p,) for p in dropped])


def collect(store: ChunkStore) -> GcResult:
    """Run one garbage collection of a target's chunk ``store`` (the caller holds the target's maintenance lock)."""
    before = store.packs.disk_bytes()
    store.flush()
    rewritten: list[int] = []
    deleted = 0
    problems: list[str] = []
    copied = 0
    db = index.connect(store.directory / "index.sqlite", None)
    try:
        s0 = _mark(db)
        chunks_removed, stored_removed = _sweep(store, db, s0)
        rewrite, empty, last_dead = _candidates(db)
        if last_dead:
            _seal_last(store, db)
            rewrite, empty, _ = _candidates(db)
        if empty:
            _switch(store, [], empty)
            store.packs.remove(empty)
            deleted += len(empty)
        # A few packs at a time: the extra disk space a compaction needs, and what a crash would leave as
        # dead copies, stay bounded by COMPACT_BATCH packs, and by the space free right now (so collection
        # works on a full disk: whole dead packs went first, above; each batch's copies must fit).
        for batch, too_big in _batches(rewrite, lambda: _room(free_bytes(store.directory))):
            problems.extend(
                f"pack {pack} left as is: its {live} live bytes do not fit in the free space" for pack, live in too_big
            )
            if not batch:
                continue
            moves: list[_Move] = []
            done: list[int] = []
            epoch = store.store_epoch()
            for pack in batch:
                result = _copy(store, db, pack)
                if isinstance(result, str):
                    problems.append(result)
                    continue
                moves.extend(result[0])
                copied += result[1]
                done.append(pack)
            if done:
                store.flush()  # copies durable and their pack sizes committed before any row points at them
                if store.store_epoch() != epoch:  # a failed write elsewhere discarded the copies
                    problems.append(f"packs {done} left as is: a failed write discarded their copies")
                    continue
                _switch(store, moves, done)
                store.packs.remove(done)
                rewritten.extend(done)
                deleted += len(done)
    finally:
        db.close()
    leftovers = store.unindexed_packs()
    store.packs.remove(leftovers)
    return GcResult(
        chunks_removed=chunks_removed,
        stored_bytes_removed=stored_removed,
        packs_rewritten=len(rewritten),
        packs_deleted=deleted,
        disk_bytes_before=before,
        disk_bytes_after=store.packs.disk_bytes(),
        bytes_copied=copied,
        leftovers_removed=len(leftovers),
        problems=problems,
    )
