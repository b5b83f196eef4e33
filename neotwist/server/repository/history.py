"""A target's history: listing snapshots, the versions of one path, deleted paths; pruning snapshots.

Functions here take a connection to ``index.sqlite`` (the caller holds that connection's lock) and work with
the interval model (see :mod:`.index`): a ``versions`` row is alive in snapshots ``[first, last)``.

Pruning marks snapshots ``pruned = 1`` (the rows stay: their ids are never reused and their times still
date the deletions recorded in later snapshots) and, in the same transaction, deletes every ``versions``
row that no kept snapshot can see any more. A row ``[first, last)`` is needed iff some kept snapshot k has
``first <= k < last``; current rows (``last IS NULL``) are always needed because the newest snapshot is never
pruned. The test is one ``NOT EXISTS`` probe per closed row into a temp table of kept ids (an integer primary
key: one B-tree seek), so the cost is one pass over the closed rows, whatever the number of snapshots.

Nothing is ever listable from a pruned snapshot: a row that survives is visible in a kept snapshot, and every
listing reports kept snapshots only (a version added by a pruned snapshot is reported from the first kept
snapshot that holds it).
"""

# ruff: noqa: S608  (SQL text is built only from constants; values are bound)

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from neotwist import paths
from neotwist.server.repository.errors import LatestSnapshot, NoSuchPath
from neotwist.server.repository.index import storage_errors, transaction
from neotwist.server.repository.records import DeletedInfo, PruneResult, SnapshotInfo, VersionInfo

SNAPSHOT_COLUMNS = "id, time, files, changed, deleted, new_chunks, new_bytes, dirs, root, delete_mode, label"


def snapshot_columns(db: sqlite3.Connection) -> str:
    """:data:`SNAPSHOT_COLUMNS`, with ``x''`` for the label of an index from before labels: read-only tools
    (``neo-admin check`` beside an older server) read such files without migrating them."""
    names = {row[1] for row in db.execute("PRAGMA table_info(snapshots)")}
    return SNAPSHOT_COLUMNS if "label" in names else SNAPSHOT_COLUMNS.replace(", label", ", x'' AS label")


def snapshot_info(row: tuple) -> SnapshotInfo:
    """A SnapshotInfo from a row of :data:`SNAPSHOT_COLUMNS` (or of its first seven columns)."""
    sid, time, files, changed, deleted, new_chunks, new_bytes, *rest = row
    info = SnapshotInfo(sid, time, files, changed, deleted, new_chunks, new_bytes)
    if rest:
        dirs, root, delete_mode, *label = rest
        info = SnapshotInfo(
            sid, time, files, changed, deleted, new_chunks, new_bytes, dirs, root, bool(delete_mode), *label
        )
    return info


def within(path: str, column: str = "path") -> tuple[str, dict[str, str]]:
    """SQL condition (and parameters) for "``column`` is ``path`` or below it", an index range on path.

    '0' is the character after '/', so ``path/`` < every descendant < ``path0``.
    """
    if not path:
        return "1", {}
    return f"({column} = :root OR ({column} > :root_lo AND {column} < :root_hi))", {
        "root": path,
        "root_lo": path + "/",
        "root_hi": path + "0",
    }


def snapshots(db: sqlite3.Connection) -> list[SnapshotInfo]:
    """Every kept (not pruned) snapshot, ascending by id."""
    rows = db.execute(f"SELECT {snapshot_columns(db)} FROM snapshots WHERE pruned = 0 ORDER BY id").fetchall()
    return [snapshot_info(row) for row in rows]


_VERSIONS = """
SELECT seen.id, v.last, seen.time, v.kind, v.mode, v.mtime_ns, v.size
FROM versions v
JOIN snapshots seen ON seen.id = (
    SELECT s.id FROM snapshots s
    WHERE s.id >= v.first AND (v.last IS NULL OR s.id < v.last) AND s.pruned = 0
    ORDER BY s.id LIMIT 1)
WHERE v.path = :p
ORDER BY v.first
"""


def versions(db: sqlite3.Connection, path: str) -> list[VersionInfo]:
    """Every version of ``path`` that some kept snapshot holds, oldest first.

    Raises BadPath, or NoSuchPath when no kept snapshot has anything at ``path``.
    """
    paths.check_path(path)
    rows = db.execute(_VERSIONS, {"p": path}).fetchall()
    if not rows:
        raise NoSuchPath(path)
    return [VersionInfo(*row) for row in rows]


_DELETED = """
SELECT v.path, v.kind, v.size, v.mtime_ns,
    (SELECT s.id FROM snapshots s WHERE s.id >= v.first AND s.id < v.last AND s.pruned = 0
     ORDER BY s.id DESC LIMIT 1) AS held,
    v.last, gone.time
FROM versions v JOIN snapshots gone ON gone.id = v.last
WHERE {cond} AND v.last IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM versions c WHERE c.path = v.path AND c.last IS NULL)
    AND v.first = (SELECT max(m.first) FROM versions m WHERE m.path = v.path)
ORDER BY v.path
"""
"""The newest version of each path with no current version: the range scan on ``versions_path``, a probe of
``versions_current`` and a max() on ``versions_path`` per candidate row."""


def deleted(db: sqlite3.Connection, path: str) -> list[DeletedInfo]:
    """Paths at or below ``path`` ('' = the whole target) that the current view lacks and a kept snapshot
    holds, each with its newest version, sorted by path (UTF-8 byte order). Raises BadPath."""
    paths.check_path(path)
    cond, params = within(path, "v.path")
    result = []
    for name, kind, size, mtime_ns, held, last, when in db.execute(_DELETED.format(cond=cond), params):
        if held is not None:  # cannot happen after a prune; a pruned-away row is not listed anyway
            result.append(DeletedInfo(name, kind, size, mtime_ns, held, last, when))
    return result


def prune(db: sqlite3.Connection, remove: Sequence[int]) -> PruneResult:
    """Mark ``remove`` pruned and drop the versions rows no kept snapshot sees, in one transaction.

    Ids that are unknown or already pruned are ignored (``snapshots_removed`` counts the others). Raises
    LatestSnapshot, changing nothing, if ``remove`` names the newest kept snapshot: a target is never left without
    its latest snapshot.
    """
    ids = sorted({int(i) for i in remove})
    with storage_errors("prune snapshots"):
        with transaction(db):
            (latest,) = db.execute("SELECT max(id) FROM snapshots WHERE pruned = 0").fetchone()
            if latest is not None and latest in ids:
                raise LatestSnapshot(latest)
            db.execute("CREATE TEMP TABLE IF NOT EXISTS prune_remove (id INTEGER PRIMARY KEY)")
            db.execute("CREATE TEMP TABLE IF NOT EXISTS prune_kept (id INTEGER PRIMARY KEY)")
            db.execute("DELETE FROM temp.prune_remove")
            db.execute("DELETE FROM temp.prune_kept")
            db.executemany("INSERT INTO temp.prune_remove VALUES (?)", [(i,) for i in ids])
            removed = db.execute(
                "UPDATE snapshots SET pruned = 1 WHERE pruned = 0 AND id IN (SELECT id FROM temp.prune_remove)"
            ).rowcount
            db.execute("INSERT INTO temp.prune_kept SELECT id FROM snapshots WHERE pruned = 0")
            dropped = db.execute(
                "DELETE FROM main.versions WHERE last IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM temp.prune_kept k WHERE k.id >= versions.first AND k.id < versions.last)"
            ).rowcount
            db.execute("DELETE FROM temp.prune_remove")
            db.execute("DELETE FROM temp.prune_kept")
    return PruneResult(removed, dropped)
