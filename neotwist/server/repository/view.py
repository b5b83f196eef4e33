"""What a handle confined to a sub-path may learn of its target's history: only what concerns that sub-path.

A grant on ``documents/presentations`` must not tell its holder when the rest of ``documents`` changed, how many
files it has or how big it is. Snapshots belong to the whole target, so a confined handle sees only its
*relevant* snapshots: the kept snapshots in which the view at or below the root changed (a version there was
added or closed since the previous kept snapshot), and the snapshots pushed into the root itself (a push there
that changed nothing still made that snapshot). Every other snapshot id is answered as if it did not exist.

Snapshot ids stay the target's own sequence numbers: gaps between the ids a confined handle sees show that
other snapshots exist, but nothing about what they hold.

A version added by a pruned snapshot is reported from the first kept snapshot that holds it (pruning deletes
the rows no kept snapshot can see), so "changed since the previous kept snapshot" is the test, not "first = S".
"""

# ruff: noqa: S608  (SQL text is built only from constants; values are bound)

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING

from neotwist import paths
from neotwist.server.repository.history import within

if TYPE_CHECKING:
    from neotwist.server.repository.target import Target


@dataclass(frozen=True)
class ViewSnapshot:
    """A relevant snapshot as a confined handle may see it: its id, time and the files below the root."""

    id: int
    time: float


class RootView:
    """The history of ``target`` as seen from ``root`` (a non-empty target path). Thread-safe; blocking."""

    def __init__(self, target: Target, root: str) -> None:
        self.target = target
        self.root = root
        self._cond, self._params = within(root)
        self._pushed, pushed_params = within(root, "root")
        self._pushed_params = {"p" + k: v for k, v in pushed_params.items()}
        for key in pushed_params:
            self._pushed = self._pushed.replace(f":{key}", f":p{key}")

    def latest(self) -> ViewSnapshot | None:
        """The newest relevant snapshot; None when nothing was ever at or below the root."""
        with self.target.reading() as db:
            row = db.execute(
                f"SELECT max(m) FROM (SELECT max(first) AS m FROM versions WHERE {self._cond} "
                f"UNION ALL SELECT max(last) FROM versions WHERE {self._cond} "
                f"UNION ALL SELECT max(id) FROM snapshots WHERE pruned = 0 AND {self._pushed})",
                {**self._params, **self._pushed_params},
            ).fetchone()
            if row is None or row[0] is None:
                return None
            found = db.execute(
                "SELECT id, time FROM snapshots WHERE pruned = 0 AND id >= ? ORDER BY id LIMIT 1", (row[0],)
            ).fetchone()
            if found is None:  # the newest snapshot is never pruned; be safe anyway
                found = db.execute(
                    "SELECT id, time FROM snapshots WHERE pruned = 0 ORDER BY id DESC LIMIT 1"
                ).fetchone()
        return None if found is None else ViewSnapshot(found[0], found[1])

    def relevant(self, snapshot_id: int) -> bool:
        """True when ``snapshot_id`` is kept and changed something at or below the root, or was pushed there."""
        with self.target.reading() as db:
            row = db.execute("SELECT root FROM snapshots WHERE id = ? AND pruned = 0", (snapshot_id,)).fetchone()
            if row is None:
                return False
            if paths.is_within(row[0], self.root):
                return True
            prev = db.execute(
                "SELECT coalesce(max(id), 0) FROM snapshots WHERE pruned = 0 AND id < ?", (snapshot_id,)
            ).fetchone()[0]
            hit = db.execute(
                f"SELECT 1 FROM versions WHERE {self._cond} AND ((first > :p AND first <= :s) "
                "OR (last > :p AND last <= :s)) LIMIT 1",
                {**self._params, "p": prev, "s": snapshot_id},
            ).fetchone()
        return hit is not None

    def snapshot_ids(self) -> list[int]:
        """Every relevant snapshot id, ascending."""
        with self.target.reading() as db:
            kept = [r[0] for r in db.execute("SELECT id FROM snapshots WHERE pruned = 0 ORDER BY id")]
            marks = {
                r[0]
                for r in db.execute(
                    f"SELECT first FROM versions WHERE {self._cond} UNION "
                    f"SELECT last FROM versions WHERE {self._cond} AND last IS NOT NULL UNION "
                    f"SELECT id FROM snapshots WHERE pruned = 0 AND {self._pushed}",
                    {**self._params, **self._pushed_params},
                )
            }
        out: set[int] = set()
        for mark in marks:
            i = bisect.bisect_left(kept, mark)
            if i < len(kept):
                out.add(kept[i])
        return sorted(out)

    def files(self, snapshot_id: int) -> int:
        """Non-directory entries at or below the root in ``snapshot_id``."""
        with self.target.reading() as db:
            row = db.execute(
                f"SELECT count(*) FROM versions WHERE {self._cond} AND kind != 'd' AND first <= :s "
                "AND (last IS NULL OR last > :s)",
                {**self._params, "s": snapshot_id},
            ).fetchone()
        return int(row[0])
