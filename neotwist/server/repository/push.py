"""A push in progress: staging its entries and committing them as one snapshot.

Entries are staged in a TEMP table of the target's writer connection (a push may list millions of files;
Python lists would not do), each ``add`` in its own short transaction so concurrent pushes to the same target
never share one. The commit is one ``BEGIN IMMEDIATE`` transaction of set-based statements (joins between the
staging table and the current versions), so its cost is a few passes in SQLite's C code, not Python per file.
Because the commit compares with the versions current *at commit time*, two concurrent pushes both land: the
second merges into what the first produced.

A push may list only what changed since a snapshot, its ``parent`` (a client that remembers what it sent last
time): unlisted paths then keep their current version, exactly as they would had they been listed unchanged,
and with ``delete`` only the paths it names as deleted are closed. The snapshot it commits is as complete as any
other (versions carry over). That is only sound while the current versions are those of ``parent``: the commit
refuses (Conflict) when another snapshot was committed since, and asks for a full listing (ListEverything, as a
damaged chunk does) while chunks are marked damaged, whose files must be listed to be healed.

Only changed entries have their chunk ids checked against the chunk index: an unchanged entry references the
same chunks as the current version, which were checked when that version was committed. The exception is a
chunk marked damaged since (see :mod:`.damage`): while any is marked, every staged file's chunk ids are also
looked up among them, and a commit that would refer to one asks for it again (DamagedChunks).
"""

# ruff: noqa: S608  (SQL text is built only from constants and generated table names; values are bound)

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from neotwist import bounds, paths
from neotwist.server.repository import damage
from neotwist.server.repository.chunkstore import ChunkStore
from neotwist.server.repository.errors import (
    BadPush,
    Conflict,
    DamagedChunks,
    ListEverything,
    MissingChunks,
    PushOutOfOrder,
    PushTooLarge,
)
from neotwist.server.repository.history import within
from neotwist.server.repository.index import storage_errors, transaction
from neotwist.server.repository.records import CommitResult, SnapshotInfo, StagedEntry

_Row = tuple[str, str, int, int, int, bytes, str, bytes]
"""A staged entry: (path, kind, mode, mtime_ns, size, chunks, link, meta)."""

_DIFFERS = " OR ".join(
    f"v.{c} IS NOT s.{c}" for c in ("kind", "mode", "mtime_ns", "size", "chunks", "link", "meta")
)


@dataclass(frozen=True)
class CommitCharge:
    """What a commit is about to add to its target, for a quota check: new file and directory versions (every
    changed entry becomes one) and the stored bytes of the chunks it references that were stored since the
    previous snapshot (already on disk: they count in the target's stored bytes before the commit). For a
    confined push ``new_bytes`` is instead what it uploaded for them (see :class:`CommitResult`), so nothing
    derived from it depends on what the rest of the target holds."""

    new_files: int
    new_dirs: int
    new_bytes: int


QuotaCheck = Callable[[CommitCharge], None]
"""Called inside the commit transaction, before anything is written; raises (an error of the caller's) to refuse
the commit."""


class Push:
    """Created by :meth:`Target.begin_push`. Not itself thread-safe: one session drives it, call by call."""

    def __init__(
        self, store: ChunkStore, encrypted: bool, root: str, delete: bool, number: int, parent: int | None = None
    ) -> None:
        self.store = store  # the target's chunks; its index's writer connection holds the staging tables
        self.encrypted = encrypted
        self.root = root
        self.delete = delete
        self.parent = parent  # set: entries are the changes since this snapshot (see the module docstring)
        self._stage = f"temp.push_{number}"  # a generated name, never client text
        self._entries = 0
        self._continued: _Row | None = None
        self._continued_chunks = bytearray()
        self._failed: Exception | None = None
        self._open = True
        self.confined = False  # see confine()
        self._known_built = False
        with store.index.writing() as db:
            db.execute(
                f"CREATE TEMP TABLE {self._stage} (path TEXT PRIMARY KEY, kind TEXT NOT NULL,"
                " mode INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL,"
                " chunks BLOB NOT NULL, link TEXT NOT NULL, meta BLOB NOT NULL)"
            )
            if parent is not None:
                db.execute(f"CREATE TEMP TABLE {self._stage}_del (path TEXT PRIMARY KEY) WITHOUT ROWID")
        store.push_started()  # until it ends, the chunks it relies on are safe from garbage collection

    def _check(self) -> None:
        if self._failed is not None:
            raise self._failed
        if not self._open:
            raise PushOutOfOrder("push is already committed or aborted")

    def _fail(self, error: Exception) -> Exception:
        """A push that received a bad entry is dead: its staging may be partial, so it may not commit."""
        self._failed = error
        return error

    # --- staging -----------------------------------------------------------------------------------------

    def add(self, entries: Sequence[StagedEntry]) -> None:
        """Validate and stage entries (paths relative to the push root). Raises BadPath, BadPush,
        PushTooLarge; after an error the push can only be aborted."""
        self._check()
        try:
            rows = list(self._rows(entries))
        except (BadPush, paths.BadPath) as e:
            raise self._fail(e) from None
        if not rows:
            return
        try:
            with self.store.index.writing() as db, storage_errors("stage entries"), transaction(db, immediate=False):
                db.executemany(f"INSERT INTO {self._stage} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.IntegrityError:
            raise self._fail(BadPush("a path is listed twice in one push")) from None

    def add_deleted(self, names: Sequence[str]) -> None:
        """Stage paths (relative to the push root) to record as deleted: only for a push with ``parent`` and
        ``delete``. Raises BadPath, PushOutOfOrder, PushTooLarge; after an error the push can only be aborted."""
        self._check()
        try:
            if self.parent is None or not self.delete:
                raise PushOutOfOrder("deleted_paths belongs to a push_begin with parent and delete")
            rows = []
            for name in names:
                self._entries += 1
                if self._entries > bounds.MAX_PUSH_ENTRIES:
                    raise PushTooLarge.entries(bounds.MAX_PUSH_ENTRIES)
                path = paths.join(self.root, paths.check_path(name))
                if path == "":
                    raise BadPush("the target root cannot be deleted")
                rows.append((path,))
        except (BadPush, PushOutOfOrder, paths.BadPath) as e:
            raise self._fail(e) from None
        with self.store.index.writing() as db, storage_errors("stage deletions"), transaction(db, immediate=False):
            db.executemany(f"INSERT OR IGNORE INTO {self._stage}_del VALUES (?)", rows)

    def _rows(self, entries: Sequence[StagedEntry]) -> Iterator[_Row]:
        root, id_size = self.root, bounds.ID_SIZE
        max_bytes = bounds.MAX_CHUNKS_PER_FILE * id_size
        for e in entries:
            if self._continued is not None:
                first = self._continued
                if e.path != paths.relative_to(first[0], root):
                    raise BadPush(f"continuation of {first[0]!r} names {e.path!r}")
                if len(e.chunks) % id_size:
                    raise BadPush(f"chunk ids of {e.path!r} are not {id_size}-byte")
                self._continued_chunks += e.chunks
                if len(self._continued_chunks) > max_bytes:
                    raise PushTooLarge.chunks(e.path, bounds.MAX_CHUNKS_PER_FILE)
                if not e.more:
                    yield (*first[:5], bytes(self._continued_chunks), *first[6:])
                    self._continued = None
                    self._continued_chunks = bytearray()
                continue
            self._entries += 1
            if self._entries > bounds.MAX_PUSH_ENTRIES:
                raise PushTooLarge.entries(bounds.MAX_PUSH_ENTRIES)
            path = paths.join(root, paths.check_path(e.path))
            kind = e.kind
            if path == "" and kind != "d":
                raise BadPush("the target root can only be a directory")
            if kind == "f":
                if len(e.chunks) % id_size:
                    raise BadPush(f"chunk ids of {e.path!r} are not {id_size}-byte")
                if len(e.chunks) > max_bytes:
                    raise PushTooLarge.chunks(e.path, bounds.MAX_CHUNKS_PER_FILE)
            elif kind in ("d", "l"):
                if e.chunks or e.more:
                    raise BadPush(f"{e.path!r} is not a file but has chunks")
            else:
                raise BadPush(f"unknown entry kind {kind!r}")
            row: _Row = (path, kind, e.mode, e.mtime_ns, e.size, e.chunks, e.link, e.meta)
            if e.more:
                self._continued = row
                self._continued_chunks = bytearray(e.chunks)
            else:
                yield row

    # --- ending ------------------------------------------------------------------------------------------

    def abort(self) -> None:
        """Drop everything staged; the target is as it was. Idempotent."""
        if not self._open:
            return
        self._open = False
        try:
            with self.store.index.writing() as db:
                db.execute(f"DROP TABLE IF EXISTS {self._stage}")
                db.execute(f"DROP TABLE IF EXISTS {self._stage}_del")
                self._drop_confined(db)
        finally:
            self.store.push_ended(aborted=True)

    def commit(self, now: float, check: QuotaCheck | None = None, label: bytes = b"") -> CommitResult:
        """Make the staged tree one new snapshot at server time ``now`` (kept monotonic), atomically, with the
        stored form of its label (see :mod:`neotwist.server.labels`).

        Pending chunks are flushed first, so the commit only ever references durable, indexed chunks. Raises
        MissingChunks (nothing changes and the push stays open: the client may upload them and commit again),
        BadPush (push ended inside a continued file; a plaintext file's chunk sizes do not add up to its
        size: the push is dead). ``check`` sees what the snapshot would add and may refuse it (a quota):
        nothing is written and the push stays open.
        """
        self._check()
        if self._continued is not None:
            raise self._fail(BadPush(f"push ended inside continued file {self._continued[0]!r}"))
        mark = self.store.flush_mark()
        try:
            with self.store.index.writing() as db, storage_errors("commit the snapshot"):
                if self.confined:
                    self._known(db)  # outside the transaction: a rollback must not drop it
                try:
                    with transaction(db):
                        info, uploaded = self._commit(db, now, mark, check, label)
                        stored = int(db.execute("SELECT stored_bytes FROM counters").fetchone()[0])
                finally:
                    db.execute(f"DROP TABLE IF EXISTS {self._stage}_chg")
                    db.execute(f"DROP TABLE IF EXISTS {self._stage}_need")
                    db.execute(f"DROP TABLE IF EXISTS {self._stage}_gone")
                self._open = False
                db.execute(f"DROP TABLE IF EXISTS {self._stage}")
                db.execute(f"DROP TABLE IF EXISTS {self._stage}_del")
                self._drop_confined(db)
        finally:
            if not self._open:  # committed: its chunks are referenced by committed versions now
                self.store.push_ended()  # (outside the writer lock: the gc lock comes first in lock order)
        self.store.index.trim_wal()  # a first push's index must not stay on disk twice (in the log too)
        return CommitResult(info, stored, *uploaded)

    def _commit(
        self,
        db: sqlite3.Connection,
        now: float,
        mark: tuple[int, int],
        check: QuotaCheck | None = None,
        label: bytes = b"",
    ) -> tuple[SnapshotInfo, tuple[int, int]]:
        """The commit's transaction: the changed entries and the chunks they need, checked (1, 2); what is new
        since the previous snapshot (3); what a delete push removes (4); then the snapshot and its versions (5).
        Returns the snapshot and, for a confined push, what it uploaded (chunks, bytes)."""
        self._parent_current(db)
        self._changed(db)
        self._needed(db)
        prev, new, uploaded = self._new_data(db, now)
        self._deleted(db)
        return self._write_snapshot(db, now, mark, check, label, prev, new, uploaded), uploaded

    def _parent_current(self, db: sqlite3.Connection) -> None:
        """0. A push listing only its changes since ``parent`` commits only while that is still the latest
        snapshot (Conflict otherwise), and not while chunks are marked damaged (ListEverything: only a full
        listing names the files whose damaged chunks must be resent)."""
        if self.parent is None:
            return
        (latest,) = db.execute("SELECT max(id) FROM snapshots").fetchone()
        if latest != self.parent:
            raise Conflict(
                f"the push listed its changes since snapshot {self.parent}, but the target's latest is now "
                f"{latest}: push again listing everything",
            )
        if damage.any_marked(db):
            raise ListEverything()

    def _changed(self, db: sqlite3.Connection) -> None:
        """1. The entries that differ from (or are absent in) the current view, into ``<stage>_chg``."""
        stage, chg = self._stage, f"{self._stage}_chg"
        db.execute(
            f"CREATE TABLE {chg} (n INTEGER PRIMARY KEY, path TEXT NOT NULL, kind TEXT, mode INTEGER,"
            " mtime_ns INTEGER, size INTEGER, chunks BLOB, link TEXT, meta BLOB, old_kind TEXT)"
        )
        db.execute(
            f"INSERT INTO {chg} (path, kind, mode, mtime_ns, size, chunks, link, meta, old_kind) "
            f"SELECT s.path, s.kind, s.mode, s.mtime_ns, s.size, s.chunks, s.link, s.meta, v.kind "
            f"FROM {stage} s LEFT JOIN main.versions v ON v.path = s.path AND v.last IS NULL "
            f"WHERE v.path IS NULL OR {_DIFFERS}"
        )

    def _needed(self, db: sqlite3.Connection) -> None:
        """2. The changed files' chunk ids, one row each, into ``<stage>_need`` (the only per-chunk step:
        slicing blobs, in a generator); refused (MissingChunks, DamagedChunks, BadPush) unless every one is stored, none
        is marked damaged, a confined push proved each, and a plaintext file's chunk sizes add up to its size."""
        stage, chg, need = self._stage, f"{self._stage}_chg", f"{self._stage}_need"
        db.execute(
            f"CREATE TABLE {need} (n INTEGER NOT NULL, i INTEGER NOT NULL, id BLOB NOT NULL,"
            " PRIMARY KEY (n, i)) WITHOUT ROWID"
        )
        chunk_lists = db.execute(
            f"SELECT n, chunks FROM {chg} WHERE kind = 'f' AND length(chunks) > 0 ORDER BY n"
        ).fetchall()
        id_size = bounds.ID_SIZE

        def split(lists: list[tuple[int, bytes]]) -> Iterator[tuple[int, int, bytes]]:
            for n, chunks in lists:
                for i in range(0, len(chunks), id_size):
                    yield n, i, chunks[i : i + id_size]

        db.executemany(f"INSERT INTO {need} VALUES (?, ?, ?)", split(chunk_lists))
        del chunk_lists

        missing, example = db.execute(
            f"SELECT count(*), min(id) FROM (SELECT DISTINCT id FROM {need}) d "
            "WHERE NOT EXISTS (SELECT 1 FROM main.chunks c WHERE c.id = d.id)"
        ).fetchone()
        if missing:
            raise MissingChunks(missing, bytes(example))
        if damage.any_marked(db):  # unchanged files too: their chunks were checked before they were damaged
            bad, one = damage.referenced_by(db, stage)
            if bad:
                assert one is not None
                raise DamagedChunks(bad, one)
        if self.confined:
            self._check_proven(db, need)

        if not self.encrypted:
            bad = db.execute(
                f"SELECT f.path FROM {chg} f LEFT JOIN (SELECT d.n AS n, sum(c.size) AS total FROM {need} d "
                f"JOIN main.chunks c ON c.id = d.id GROUP BY d.n) t ON t.n = f.n "
                "WHERE f.kind = 'f' AND f.size != coalesce(t.total, 0) LIMIT 1"
            ).fetchone()
            if bad is not None:
                raise self._fail(BadPush(f"chunk sizes of {bad[0]!r} do not add up to its size"))

    def _new_data(
        self, db: sqlite3.Connection, now: float
    ) -> tuple[tuple[float, int, int], tuple[int, int], tuple[int, int]]:
        """3. Chunks referenced here and stored since the previous snapshot: this snapshot's new data. Returns
        the previous snapshot's (time, files, dirs), the new (chunks, bytes), and for a confined push what it
        uploaded of what it references (chunks, bytes), deduplicated or not (see CommitResult)."""
        need = f"{self._stage}_need"
        prev = db.execute(
            "SELECT time, files, dirs, mark_pack, mark_offset FROM snapshots ORDER BY id DESC LIMIT 1"
        ).fetchone()
        prev_time, prev_files, prev_dirs, mark_pack, mark_offset = (
            prev if prev is not None else (now, 0, 0, 0, 0)
        )
        new_chunks, new_bytes = db.execute(
            f"SELECT count(*), coalesce(sum(c.length), 0) FROM (SELECT DISTINCT id FROM {need}) d "
            "JOIN main.chunks c ON c.id = d.id WHERE c.pack > :p OR (c.pack = :p AND c.offset >= :o)",
            {"p": mark_pack, "o": mark_offset},
        ).fetchone()
        uploaded = (0, 0)
        if self.confined:
            count, size = db.execute(
                f"SELECT count(*), coalesce(sum(u.length), 0) FROM (SELECT DISTINCT id FROM {need}) d "
                f"JOIN {self._stage}_up u ON u.id = d.id"
            ).fetchone()
            uploaded = (int(count), int(size))
        return (prev_time, prev_files, prev_dirs), (new_chunks, new_bytes), uploaded

    def _deleted(self, db: sqlite3.Connection) -> None:
        """4. With delete: the current paths under the root that this push does not list, into ``<stage>_gone``."""
        stage, gone = self._stage, f"{self._stage}_gone"
        db.execute(f"CREATE TABLE {gone} (path TEXT PRIMARY KEY, kind TEXT)")
        if self.delete:
            cond, params = within(self.root)
            named = f"AND path IN (SELECT path FROM {stage}_del) " if self.parent is not None else ""
            db.execute(
                f"INSERT INTO {gone} SELECT path, kind FROM main.versions WHERE last IS NULL AND {cond} "
                f"{named}AND path NOT IN (SELECT path FROM {stage})",
                params,
            )

    def _write_snapshot(
        self,
        db: sqlite3.Connection,
        now: float,
        mark: tuple[int, int],
        check: QuotaCheck | None,
        label: bytes,
        prev: tuple[float, int, int],
        new: tuple[int, int],
        uploaded: tuple[int, int],
    ) -> SnapshotInfo:
        """5. The quota's ``check``, then the snapshot row (with the stored form of its ``label``), then close
        replaced and deleted versions, then add the new ones."""
        chg, gone = f"{self._stage}_chg", f"{self._stage}_gone"
        prev_time, prev_files, prev_dirs = prev
        new_chunks, new_bytes = new
        (changed, added_files, added_dirs, replaced_files, replaced_dirs) = db.execute(
            f"SELECT count(*), coalesce(sum(kind != 'd'), 0), coalesce(sum(kind = 'd'), 0), "
            f"coalesce(sum(old_kind != 'd'), 0), coalesce(sum(old_kind = 'd'), 0) FROM {chg}"
        ).fetchone()
        deleted, gone_files, gone_dirs = db.execute(
            f"SELECT count(*), coalesce(sum(kind != 'd'), 0), coalesce(sum(kind = 'd'), 0) FROM {gone}"
        ).fetchone()
        if check is not None:
            charged = uploaded[1] if self.confined else new_bytes
            check(CommitCharge(new_files=added_files, new_dirs=added_dirs, new_bytes=charged))
        time = max(now, prev_time)
        files = prev_files + added_files - replaced_files - gone_files
        dirs = prev_dirs + added_dirs - replaced_dirs - gone_dirs
        cur = db.execute(
            "INSERT INTO snapshots (time, files, dirs, changed, deleted, new_chunks, new_bytes, root,"
            " delete_mode, mark_pack, mark_offset, label) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (time, files, dirs, changed, deleted, new_chunks, new_bytes, self.root, int(self.delete), *mark, label),
        )
        sid = cur.lastrowid
        assert sid is not None
        db.execute(
            f"UPDATE main.versions SET last = :sid WHERE last IS NULL AND path IN "
            f"(SELECT path FROM {chg} WHERE old_kind IS NOT NULL UNION ALL SELECT path FROM {gone})",
            {"sid": sid},
        )
        db.execute(
            f"INSERT INTO main.versions (path, first, last, kind, mode, mtime_ns, size, chunks, link, meta) "
            f"SELECT path, :sid, NULL, kind, mode, mtime_ns, size, chunks, link, meta FROM {chg}",
            {"sid": sid},
        )
        return SnapshotInfo(
            sid, time, files, changed, deleted, new_chunks, new_bytes, dirs, self.root, self.delete, label
        )

    # --- pushes confined to a sub-path by a grant --------------------------------------------------
    #
    # A push through a grant on a sub-path must not learn about, or reach, chunks stored for other paths of the
    # target: ``have`` would tell whether a chunk exists anywhere, and a commit could reference a chunk id learned
    # elsewhere without uploading it, then pull it. So such a push counts a chunk as present only if it is
    # referenced by a current version at or below the root (the handle could read it anyway) or was uploaded on
    # this push (its bytes were checked against its id: the client had the data). Everything else is "missing",
    # exactly as if the target did not hold it.

    def confine(self) -> None:
        """Make this push confined (see above). Call right after begin_push."""
        with self.store.index.writing() as db:
            db.execute(
                f"CREATE TEMP TABLE {self._stage}_up (id BLOB PRIMARY KEY, length INTEGER NOT NULL) WITHOUT ROWID"
            )
        self.confined = True

    def note_uploaded(self, chunks: Sequence[tuple[bytes, int]]) -> None:
        """Record chunks uploaded (and verified) on this push: (id, uploaded length)."""
        if not self.confined or not self._open or not chunks:
            return
        with self.store.index.writing() as db, storage_errors("record uploads"):
            with transaction(db, immediate=False):
                db.executemany(f"INSERT OR IGNORE INTO {self._stage}_up VALUES (?, ?)", chunks)

    def _known(self, db: sqlite3.Connection) -> str:
        """The temp table of chunk ids referenced by current versions at or below the root, built once per push
        (called with the writer lock held). Split in SQL: one row per 32-byte id of every file's blob."""
        name = f"{self._stage}_known"
        if not self._known_built:
            cond, params = within(self.root)
            db.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name} (id BLOB PRIMARY KEY) WITHOUT ROWID")
            db.execute(
                f"WITH RECURSIVE split(chunks, i) AS ("
                f"SELECT chunks, 0 FROM main.versions WHERE last IS NULL AND kind = 'f' AND length(chunks) > 0 "
                f"AND {cond} UNION ALL SELECT chunks, i + {bounds.ID_SIZE} FROM split "
                f"WHERE i + {bounds.ID_SIZE} < length(chunks)) "
                f"INSERT OR IGNORE INTO {name} SELECT substr(chunks, i + 1, {bounds.ID_SIZE}) FROM split",
                params,
            )
            self._known_built = True
        return name

    def missing_confined(self, ids: Sequence[bytes]) -> list[bool]:
        """``have`` for a confined push: True for each id that is neither known below the root nor uploaded."""
        self._check()
        found: set[bytes] = set()
        with self.store.index.writing() as db, storage_errors("look up chunks"):
            name = self._known(db)
            for start in range(0, len(ids), 500):
                batch = list(ids[start : start + 500])
                marks = ",".join("?" * len(batch))
                found.update(
                    bytes(r[0])
                    for r in db.execute(
                        f"SELECT id FROM {name} WHERE id IN ({marks}) AND id NOT IN (SELECT id FROM main.damaged) "
                        f"UNION SELECT id FROM {self._stage}_up WHERE id IN ({marks})",
                        batch + batch,
                    )
                )
        return [i not in found for i in ids]

    def _check_proven(self, db: sqlite3.Connection, need: str) -> None:
        """In the commit transaction: every chunk the changed entries reference must be known or uploaded."""
        known = self._known(db)
        count, example = db.execute(
            f"SELECT count(*), min(id) FROM (SELECT DISTINCT id FROM {need}) d "
            f"WHERE NOT EXISTS (SELECT 1 FROM {known} k WHERE k.id = d.id) "
            f"AND NOT EXISTS (SELECT 1 FROM {self._stage}_up u WHERE u.id = d.id)"
        ).fetchone()
        if count:
            raise MissingChunks(count, bytes(example))

    def _drop_confined(self, db: sqlite3.Connection) -> None:
        if self.confined:
            db.execute(f"DROP TABLE IF EXISTS {self._stage}_up")
            db.execute(f"DROP TABLE IF EXISTS {self._stage}_known")
            self._known_built = False
