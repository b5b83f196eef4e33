"""Damaged chunks: marking them so the next push of the intact file stores them again (healing).

A chunk whose record does not check out (found by a check, or by a pull that read it) is *marked*: in one
transaction its row moves from ``chunks`` to ``damaged`` (with where its bad record was and why), and the
counters lose it. From then on the server no longer claims to hold it:

- ``have`` answers "missing" for it, so a push that reads the intact file uploads it; the new record goes to a
  new place in the current pack (the bad one is dead space that garbage collection compacts away);
- a commit that lists a file referring to a marked chunk is refused (DamagedChunks) even when the file is unchanged
  (the fast path skips unchanged files, so it asks here, only while ``damaged`` is not empty): a client that
  trusted its files cache reads the files again and sends what is asked for;
- storing the chunk anew inserts its row into ``chunks``, and the ``damaged_healed`` trigger deletes its
  ``damaged`` row in the same transaction: every snapshot that refers to it is whole again;
- a check lists the marked chunks that kept snapshots still refer to as *lost* (until a push heals them), with
  their files and snapshots, and a repair forgets the marked chunks nothing refers to any more.

An id is never in both tables. Only definite damage is marked (a record that is truncated, names another chunk,
fails a CRC or does not hash to its id), never a read that failed with an I/O error, which may be transient.
"""

# ruff: noqa: S608  (SQL text is built only from constants and generated table names; values are bound)

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from neotwist.bounds import ID_SIZE

Location = tuple[int, int, int, int, int]
"""(pack, offset, length, codec, size) of a stored chunk, as in ``chunks``."""

HEAL_HINT = "push the intact file again to heal it"


@dataclass(frozen=True)
class Found:
    """A damaged chunk found by a check or a read: its bad record's location (None when the index does not hold
    it at all: referenced but not stored) and why it is damaged."""

    id: bytes
    location: Location | None
    why: str


def exists(db: sqlite3.Connection) -> bool:
    """Whether this index has the ``damaged`` table (a file older than it, opened read-only, has not)."""
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'damaged'").fetchone() is not None


def any_marked(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM damaged LIMIT 1").fetchone() is not None


def marked(db: sqlite3.Connection) -> dict[bytes, str]:
    """Every marked chunk: id -> why it was marked (empty if the index predates the table)."""
    if not exists(db):
        return {}
    return {bytes(cid): why for cid, why in db.execute("SELECT id, why FROM damaged")}


def mark(db: sqlite3.Connection, found: Iterable[Found], forget: Iterable[bytes] = ()) -> int:
    """Mark ``found`` in one transaction of ``db`` (a writer connection; the caller holds its lock) and return how
    many were marked now (not already marked, and still where they were found: a chunk that garbage collection
    moved or deleted, or that a push stored anew, meanwhile is left alone). ``forget``: damaged or marked chunks
    nothing refers to any more, whose rows are dropped (after a damaged one leaves ``chunks``); they are not
    counted."""
    now = time.time()
    count = 0
    forget = set(forget)
    db.execute("BEGIN IMMEDIATE")
    try:
        for f in found:
            if f.location is None:
                cur = db.execute(
                    "INSERT OR IGNORE INTO damaged (id, pack, offset, length, why, time) "
                    "SELECT ?, NULL, NULL, NULL, ?, ? WHERE NOT EXISTS (SELECT 1 FROM chunks WHERE id = ?)",
                    (f.id, f.why, now, f.id),
                )
                count += cur.rowcount if f.id not in forget else 0
                continue
            pack, offset, length, codec, size = f.location
            cur = db.execute(
                "DELETE FROM chunks WHERE id = ? AND pack = ? AND offset = ? AND length = ? AND codec = ? "
                "AND size = ?",
                (f.id, pack, offset, length, codec, size),
            )
            if cur.rowcount:
                db.execute(
                    "UPDATE counters SET chunks = chunks - 1, stored_bytes = stored_bytes - ?", (length,)
                )
                db.execute(
                    "INSERT OR REPLACE INTO damaged (id, pack, offset, length, why, time) VALUES (?, ?, ?, ?, ?, ?)",
                    (f.id, pack, offset, length, f.why, now),
                )
                count += f.id not in forget
        db.executemany("DELETE FROM damaged WHERE id = ?", ((cid,) for cid in forget))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return count


def referenced_by(db: sqlite3.Connection, stage: str) -> tuple[int, bytes | None]:
    """(how many marked chunks the files staged in ``stage`` refer to, one of them): a commit must not make a new
    snapshot refer to a chunk the server knows is damaged. Only called while ``damaged`` is not empty; one pass
    over the staged chunk lists, with the marked ids in a set."""
    bad = {bytes(r[0]) for r in db.execute("SELECT id FROM damaged")}
    hit: set[bytes] = set()
    for cid in _ids(db.execute(f"SELECT chunks FROM {stage} WHERE kind = 'f' AND length(chunks) > 0")):
        if cid in bad:
            hit.add(cid)
    return len(hit), min(hit) if hit else None


def _ids(cur: sqlite3.Cursor) -> Iterator[bytes]:
    step = ID_SIZE
    while rows := cur.fetchmany(256):
        for (chunks,) in rows:
            blob = bytes(chunks)
            for i in range(0, len(blob), step):
                yield blob[i : i + step]
