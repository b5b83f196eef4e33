"""Checking one target: do the index and the packs agree, and (optionally) does every chunk match its id?

Called by :meth:`Target.check`. It only reads, on a read-only connection of its own inside one read
transaction, so everything it compares (chunk rows, versions, snapshots, packs, counters) is one consistent
state of the index even while a server commits pushes (WAL). What it checks:

- the ``counters`` row equals the count and total stored length of the chunk rows;
- every pack the ``packs`` table names exists and is at least its committed size, and every chunk row lies
  inside the committed part of a named pack;
- every chunk row's record: read it and check magic, header CRC, that it names this id, its length, codec and
  raw size, and the CRC of its bytes (what every pull checks, see :meth:`PackStore.read`); the codec must be
  the one the target's encryption allows. Rows are read in (pack, offset) order, each pack through a
  descriptor the check opens itself (what is on disk now, not what a pooled descriptor still sees), so
  checking a big target is sequential I/O;
- with ``verify_data``: a plaintext chunk is decompressed (bounded by its size) and its BLAKE3 compared with
  its id. A sealed chunk (encrypted target) cannot be opened by the server: only its CRC is checked, and the
  report says so;
- every chunk id a versions row references is stored;
- each kept snapshot's ``files``/``dirs`` equal the counts of its view (one pass: +1 at ``first``, -1 at
  ``last``, cumulated over snapshot ids).

With a ``root`` (a handle confined to a granted sub-path), only what that sub-path references is checked: the
records of the chunks its file versions reference (and whether they are stored), and which of its files are
damaged. A grantee of a part of a target neither makes the server read the rest (a cheap way to keep its disks
busy) nor learns about damage, sizes or problems elsewhere.

A bad chunk is looked up once more in the current index before it is reported, so a record that a
concurrent garbage collection (in the server, when this runs from ``neo-admin``) moved or deleted is read at
its new place or skipped, not reported as damage. Damaged and missing chunks are then traced to the file
versions that reference them and to the kept snapshots that hold those versions.

A referenced chunk that is marked damaged (see :mod:`.damage`) is reported as *lost* until a push stores it
again. With ``repair``, after the read transaction, every damaged chunk found is marked (so the next push of
the intact file heals it) and marked chunks nothing refers to any more are forgotten.
"""

# ruff: noqa: S608  (SQL text is built only from constants; values are bound)

from __future__ import annotations

import bisect
import hmac
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace

import blake3

from neotwist.bounds import ID_SIZE
from neotwist.codec import CodecError, is_sealed, raw_bytes
from neotwist.server.repository import damage, index
from neotwist.server.repository.chunkstore import ChunkStore
from neotwist.server.repository.errors import Damaged
from neotwist.server.repository.history import within
from neotwist.server.repository.packs import FILE_MAGIC, HEADER_SIZE, check_record
from neotwist.server.repository.records import CheckReport, DamagedFile

_Progress = Callable[[int, int], None]

_PROGRESS_EVERY = 16 * 1024 * 1024
"""Stored bytes between two progress calls."""

_BATCH = 2000


def _ids(rows: list[tuple[bytes]]) -> Iterator[tuple[bytes]]:
    step = ID_SIZE
    for (chunks,) in rows:
        for i in range(0, len(chunks), step):
            yield (chunks[i : i + step],)


class _Checker:
    def __init__(self, store: ChunkStore, db: sqlite3.Connection, verify_data: bool, root: str | None = None) -> None:
        self.store = store
        self.db = db
        self.verify_data = verify_data
        self.root = root  # None: the whole target
        self.damaged: dict[bytes, str] = {}
        self.where: dict[bytes, tuple[int, int, int, int, int]] = {}  # the bad record of a damaged stored chunk
        self.lost: set[bytes] = set()  # damaged chunks already marked: referenced, awaiting a push
        self.marked: dict[bytes, str] = {}  # every marked chunk: id -> why (read in the check's transaction)
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.chunks_checked = 0
        self.bytes_checked = 0
        self._open: tuple[int, int | OSError] | None = None  # (pack, its descriptor or why it did not open)

    def close(self) -> None:
        if self._open is not None and isinstance(self._open[1], int):
            os.close(self._open[1])
        self._open = None

    def _read(self, pack: int, offset: int, length: int, cid: bytes) -> tuple[int, int, bytes]:
        """Like :meth:`PackStore.read`, but on a descriptor opened by the check itself, one pack at a time:
        what is on disk now is checked, not a pack a pooled descriptor keeps alive after it was deleted."""
        where = f"chunk {cid.hex()} (pack {pack} offset {offset})"
        if self._open is None or self._open[0] != pack:
            self.close()
            try:
                self._open = (pack, os.open(self.store.packs.path(pack), os.O_RDONLY))
            except OSError as e:
                self._open = (pack, e)
        fd = self._open[1]
        if isinstance(fd, OSError):
            raise Damaged(f"{where}: cannot open its pack: {fd.strerror}")
        try:
            buf = os.pread(fd, HEADER_SIZE + length, offset)
        except OSError as e:
            raise Damaged(f"{where}: cannot read: {e.strerror}") from None
        return check_record(buf, length, cid, where)

    # --- the current index, outside the read transaction -------------------------------------------------

    def _pack_still_named(self, pack: int) -> bool:
        return self.store.pack_indexed(pack)

    # --- counters and packs ------------------------------------------------------------------------------

    def counters(self) -> tuple[int, int]:
        count, stored = self.db.execute("SELECT count(*), coalesce(sum(length), 0) FROM chunks").fetchone()
        row = self.db.execute("SELECT chunks, stored_bytes FROM counters").fetchone()
        if row is None:
            self.problems.append("the counters row is missing")
        elif tuple(row) != (count, stored):
            self.problems.append(
                f"counters say {row[0]} chunks and {row[1]} stored bytes; the index holds {count} and {stored}"
            )
        return int(count), int(stored)

    def packs(self) -> None:
        sizes = dict(self.db.execute("SELECT id, size FROM packs ORDER BY id").fetchall())
        store = self.store.packs
        for pack, committed in sizes.items():
            try:
                actual = store.path(pack).stat().st_size
            except FileNotFoundError:
                if self._pack_still_named(pack):
                    self.problems.append(f"pack {pack} is missing ({committed} bytes committed)")
                continue
            if actual < committed:
                self.problems.append(f"pack {pack} is {actual} bytes, shorter than its committed {committed}")
        count, example = self.db.execute(
            "SELECT count(*), min(c.id) FROM chunks c LEFT JOIN packs p ON p.id = c.pack "
            f"WHERE p.id IS NULL OR c.offset < {len(FILE_MAGIC)} OR c.offset + {HEADER_SIZE} + c.length > p.size"
        ).fetchone()
        if count:
            self.problems.append(
                f"{count} chunk rows point outside the committed part of their pack, e.g. {bytes(example).hex()}"
            )
        if sizes:
            last = max(sizes)
            strays = [n for n in store.numbers() if n < last and n not in sizes]
            if strays:
                self.notes.append(
                    f"{len(strays)} pack files no longer in the index (left by an interrupted garbage "
                    "collection; the next one deletes them)"
                )

    # --- records -----------------------------------------------------------------------------------------

    def record(self, cid: bytes, loc: tuple[int, int, int, int, int]) -> None:
        """Check one record; on failure look it up again in the current index before calling it damaged."""
        why = self._verify(cid, loc)
        if why is None:
            return
        now = self.store.locate([cid]).get(cid)
        if now is None:
            return  # collected meanwhile: no longer referenced, so not damage
        if now != loc:
            self.close()  # the pack may have been replaced: open it afresh
            why = self._verify(cid, now)
            if why is None:
                return
        self.damaged[cid] = why
        self.where[cid] = now

    def _verify(self, cid: bytes, loc: tuple[int, int, int, int, int]) -> str | None:
        """Why the record at ``loc`` is bad, or None."""
        pack, offset, length, codec, size = loc
        try:
            got_codec, got_size, data = self._read(pack, offset, length, cid)
        except Damaged as e:
            return e.message
        if (got_codec, got_size) != (codec, size):
            return f"chunk {cid.hex()} (pack {pack} offset {offset}): record disagrees with the index"
        encrypted = self.store.encrypted
        if is_sealed(codec) != encrypted:
            return f"chunk {cid.hex()}: codec {codec} is not allowed in this target"
        if self.verify_data and not encrypted:
            try:
                plain = raw_bytes(codec, size, data)
            except CodecError as e:
                return f"chunk {cid.hex()} (pack {pack} offset {offset}): {e.message}"
            if not hmac.compare_digest(blake3.blake3(plain).digest(), cid):
                return f"chunk {cid.hex()} (pack {pack} offset {offset}): content does not hash to its id"
        return None

    def records(self, total: int, progress: _Progress | None) -> None:
        if self.root is None:
            cur = self.db.execute("SELECT id, pack, offset, length, codec, size FROM chunks ORDER BY pack, offset")
        else:  # only the chunks the root references (temp.refs, see referenced_below)
            cur = self.db.execute(
                "SELECT c.id, c.pack, c.offset, c.length, c.codec, c.size FROM temp.refs r "
                "JOIN chunks c ON c.id = r.id ORDER BY c.pack, c.offset"
            )
        next_report = 0
        while rows := cur.fetchmany(256):
            for chunk_id, pack, offset, length, codec, size in rows:
                self.record(bytes(chunk_id), (pack, offset, length, codec, size))
                self.chunks_checked += 1
                self.bytes_checked += length
            if progress is not None and self.bytes_checked >= next_report:
                progress(self.bytes_checked, total)
                next_report = self.bytes_checked + _PROGRESS_EVERY
        if progress is not None:
            progress(self.bytes_checked, total)

    # --- references --------------------------------------------------------------------------------------

    def referenced_below(self) -> int:
        """Fill temp.refs with the chunks the versions at or below ``root`` reference; return their stored bytes
        (the total a confined check reads)."""
        assert self.root is not None
        self._collect_refs(self.root)
        (total,) = self.db.execute(
            "SELECT coalesce(sum(c.length), 0) FROM temp.refs r JOIN chunks c ON c.id = r.id"
        ).fetchone()
        return int(total)

    def _collect_refs(self, root: str) -> None:
        db = self.db
        db.execute("DELETE FROM temp.refs")
        cond, params = within(root)
        cur = db.execute(f"SELECT chunks FROM versions WHERE length(chunks) > 0 AND {cond}", params)
        while rows := cur.fetchmany(_BATCH):
            db.executemany("INSERT OR IGNORE INTO temp.refs VALUES (?)", _ids(rows))

    def references(self) -> int:
        """Record referenced chunks that are not stored; return how many stored chunks nothing references (0 for
        a confined check, which does not look at the rest). A confined check's temp.refs already holds what its
        root references (:meth:`referenced_below`, in the same read transaction, so the same state): the versions
        below the root are not scanned a second time."""
        db = self.db
        if self.root is None:
            self._collect_refs("")
        for (cid,) in db.execute(
            "SELECT id FROM temp.refs r WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.id = r.id)"
        ):
            cid = bytes(cid)
            why = self.marked.get(cid)
            if why is None:
                self.damaged[cid] = f"chunk {cid.hex()} is referenced but not stored"
            else:
                self.damaged[cid] = why
                self.lost.add(cid)
        if self.root is not None:
            return 0
        (unreferenced,) = db.execute(
            "SELECT count(*) FROM chunks c WHERE NOT EXISTS (SELECT 1 FROM temp.refs r WHERE r.id = c.id)"
        ).fetchone()
        return int(unreferenced)

    def unreferenced_damage(self) -> list[bytes]:
        """Damaged or marked chunks nothing refers to (a whole-target check only): a repair drops them."""
        if self.root is not None:
            return []
        ids = [*self.marked, *(c for c in self.damaged if c not in self.marked)]
        db = self.db
        return [
            cid for cid in ids if db.execute("SELECT 1 FROM temp.refs WHERE id = ?", (cid,)).fetchone() is None
        ]

    def files(self, kept: list[int]) -> list[DamagedFile]:
        """Each file version that references a damaged chunk, with the kept snapshots that hold it."""
        found = []
        damaged = self.damaged
        step = ID_SIZE
        cond, params = within(self.root or "")
        cur = self.db.execute(
            f"SELECT path, first, last, chunks FROM versions WHERE kind = 'f' AND length(chunks) > 0 AND {cond}",
            params,
        )
        while rows := cur.fetchmany(_BATCH):
            for path, first, last, chunks in rows:
                for i in range(0, len(chunks), step):
                    cid = bytes(chunks[i : i + step])
                    if cid in damaged:
                        lo = bisect.bisect_left(kept, first)
                        hi = len(kept) if last is None else bisect.bisect_left(kept, last)
                        found.append(DamagedFile(path, kept[lo:hi], cid.hex(), damaged[cid], cid in self.lost))
                        break
        found.sort(key=lambda f: (f.path.encode("utf-8", "surrogatepass"), f.snapshots))
        return found

    # --- snapshot counts ---------------------------------------------------------------------------------

    def snapshot_counts(self) -> list[int]:
        """Compare each kept snapshot's files/dirs with its view; return the kept ids, ascending."""
        db = self.db
        deltas: dict[int, list[int]] = {}
        for sid, files, dirs in db.execute(
            "SELECT first, sum(kind != 'd'), sum(kind = 'd') FROM versions GROUP BY first"
        ):
            d = deltas.setdefault(sid, [0, 0])
            d[0] += files
            d[1] += dirs
        for sid, files, dirs in db.execute(
            "SELECT last, sum(kind != 'd'), sum(kind = 'd') FROM versions WHERE last IS NOT NULL GROUP BY last"
        ):
            d = deltas.setdefault(sid, [0, 0])
            d[0] -= files
            d[1] -= dirs
        events = sorted(deltas.items())
        kept = []
        files = dirs = 0
        n = 0
        for sid, want_files, want_dirs in db.execute(
            "SELECT id, files, dirs FROM snapshots WHERE pruned = 0 ORDER BY id"
        ):
            while n < len(events) and events[n][0] <= sid:
                files += events[n][1][0]
                dirs += events[n][1][1]
                n += 1
            kept.append(sid)
            if (files, dirs) != (want_files, want_dirs):
                self.problems.append(
                    f"snapshot {sid} records {want_files} files and {want_dirs} directories; "
                    f"its view has {files} and {dirs}"
                )
        return kept


def check(
    store: ChunkStore, verify_data: bool, progress: _Progress | None, root: str | None = None, repair: bool = False
) -> CheckReport:
    """See the module docstring; the caller holds the target's maintenance lock. ``root``: check only what the
    versions at or below it reference (a confined handle); None: the whole target. ``repair``: mark what was
    found damaged (see :mod:`.damage`); the caller may write the index."""
    db = index.connect_read_only(store.directory / "index.sqlite")
    try:
        db.execute("CREATE TEMP TABLE refs (id BLOB PRIMARY KEY) WITHOUT ROWID")
        checker = _Checker(store, db, verify_data, root)
        db.execute("BEGIN")  # one consistent state of the index for everything below
        try:
            checker.marked = damage.marked(db)
            if root is None:
                _count, total = checker.counters()
                checker.packs()
            else:
                total = checker.referenced_below()
            checker.records(total, progress)
            unreferenced = checker.references()
            if root is None:
                kept = checker.snapshot_counts()
            else:  # the snapshot counts are the whole target's: not a confined check's business
                kept = [r[0] for r in db.execute("SELECT id FROM snapshots WHERE pruned = 0 ORDER BY id")]
            damaged_files = checker.files(kept) if checker.damaged else []
            forget = checker.unreferenced_damage() if repair else []
        finally:
            checker.close()
            db.execute("COMMIT")
    finally:
        db.close()
    if store.encrypted:
        checker.notes.append(
            "encrypted target: the server cannot open sealed chunks, so only their CRCs were checked; "
            "a restore (neo-pull) authenticates each chunk"
            if verify_data
            else "encrypted target: record CRCs checked; chunk contents can only be verified by the client"
        )
    if unreferenced:
        checker.notes.append(
            f"{unreferenced} stored chunks are not referenced by any kept snapshot (garbage collection reclaims them)"
        )
    newly = 0
    if repair:
        found = [
            damage.Found(cid, checker.where.get(cid), why)
            for cid, why in checker.damaged.items()
            if cid not in checker.lost
        ]
        newly = store.mark_damaged(found, forget) if found or forget else 0
        gone = set(forget)
        marked_now = {f.id for f in found} - gone
        checker.lost |= marked_now
        for cid in gone:
            checker.damaged.pop(cid, None)
        damaged_files = [
            f if f.marked or bytes.fromhex(f.chunk) not in marked_now else replace(f, marked=True)
            for f in damaged_files
        ]
    damaged_snapshots = sorted({s for f in damaged_files for s in f.snapshots})
    damaged_chunks = sorted((cid.hex(), why) for cid, why in checker.damaged.items())
    return CheckReport(
        chunks_checked=checker.chunks_checked,
        bytes_checked=checker.bytes_checked,
        damaged_chunks=damaged_chunks,
        damaged_files=damaged_files,
        damaged_snapshots=damaged_snapshots,
        problems=checker.problems,
        ok=not damaged_chunks and not checker.problems,
        verified_data=verify_data,
        unreferenced_chunks=unreferenced,
        notes=checker.notes,
        repaired=repair,
        marked_chunks=newly,
        lost_chunks=len(checker.lost),
    )
