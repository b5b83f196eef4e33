"""History of a target: snapshots, versions of a path, deleted paths, and pruning, on a real repository."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from repo_support import Refused, as_sent, commit, dir_entry, file_entry, view

from neotwist.server.repository import Target
from neotwist.wire.errors import ErrorCode
from neotwist.wire.messages import Entry


def five_snapshots(t: Target) -> None:
    """1: docs/{a,b}.txt, c.bin, link l. 2: edit a, delete c.bin, add d.txt. 3: rename b -> b2, edit a.
    4: delete docs, edit d.txt. 5: c.bin comes back with new content."""
    root, docs = dir_entry(""), dir_entry("docs")
    link = Entry("l", "l", 0o777, 1, 0, link="c.bin")
    b = file_entry("docs/b.txt", b"B" * 300, target=t)
    assert (
        commit(
            t,
            [root, docs, file_entry("docs/a.txt", b"A1", target=t), b, file_entry("c.bin", b"C1" * 50, target=t), link],
            100.0,
        )
        == 1
    )
    d1 = file_entry("d.txt", b"D1", target=t)
    assert commit(t, [root, docs, file_entry("docs/a.txt", b"A2-", target=t), b, d1, link], 200.0) == 2
    b2 = Entry("docs/b2.txt", b.kind, b.mode, b.mtime_ns, b.size, b.chunks)
    a3 = file_entry("docs/a.txt", b"A3--", target=t)
    assert commit(t, [root, docs, a3, b2, d1, link], 300.0) == 3
    assert commit(t, [root, file_entry("d.txt", b"D2-", target=t), link], 400.0) == 4
    assert (
        commit(t, [root, file_entry("d.txt", b"D2-", target=t), link, file_entry("c.bin", b"C2", target=t)], 500.0) == 5
    )


def test_snapshots_carry_their_push(target: Target) -> None:
    assert target.snapshots() == []
    five_snapshots(target)
    snaps = target.snapshots()
    assert [s.id for s in snaps] == [1, 2, 3, 4, 5]
    assert [s.time for s in snaps] == [100.0, 200.0, 300.0, 400.0, 500.0]
    assert [(s.files, s.dirs) for s in snaps] == [(4, 2), (4, 2), (4, 2), (2, 1), (3, 1)]
    assert all(s.root == "" and s.delete_mode for s in snaps)
    assert snaps[-1] == target.latest() == target.snapshot(5)
    push = target.begin_push("docs", False)
    push.add([dir_entry("")])
    info = push.commit(600.0).snapshot
    assert (info.root, info.delete_mode, info.dirs) == ("docs", False, 2)
    assert target.snapshots()[-1] == info


def test_versions_of_a_path(target: Target) -> None:
    five_snapshots(target)
    a = target.versions("docs/a.txt")
    assert [(v.first, v.last, v.time, v.size) for v in a] == [(1, 2, 100.0, 2), (2, 3, 200.0, 3), (3, 4, 300.0, 4)]
    assert all(v.kind == "f" and v.mode == 0o644 for v in a)
    c = target.versions("c.bin")
    assert [(v.first, v.last, v.size) for v in c] == [(1, 2, 100), (5, None, 2)]
    assert [(v.first, v.last, v.kind) for v in target.versions("l")] == [(1, None, "l")]
    assert [(v.first, v.last, v.kind) for v in target.versions("")] == [(1, None, "d")]
    with pytest.raises(Refused) as e:
        target.versions("nope")
    assert as_sent(e.value).code == ErrorCode.NO_SUCH_PATH
    with pytest.raises(Refused) as e:
        target.versions("../etc")
    assert as_sent(e.value).code == ErrorCode.BAD_PATH


def test_deleted_paths(target: Target) -> None:
    five_snapshots(target)
    gone = {d.path: d for d in target.deleted("")}
    assert list(gone) == ["docs", "docs/a.txt", "docs/b.txt", "docs/b2.txt"]  # c.bin came back
    a = gone["docs/a.txt"]
    assert (a.kind, a.size, a.last_snapshot, a.deleted_in, a.deleted_time) == ("f", 4, 3, 4, 400.0)
    b = gone["docs/b.txt"]  # renamed away in 3
    assert (b.size, b.last_snapshot, b.deleted_in, b.deleted_time) == (300, 2, 3, 300.0)
    assert (gone["docs"].kind, gone["docs"].deleted_in) == ("d", 4)
    assert [d.path for d in target.deleted("docs")] == list(gone)
    assert [d.path for d in target.deleted("docs/b.txt")] == ["docs/b.txt"]
    assert target.deleted("d.txt") == [] and target.deleted("doc") == []
    with pytest.raises(Refused) as e:
        target.deleted("/abs")
    assert as_sent(e.value).code == ErrorCode.BAD_PATH


def _needed(db_path: Path, kept: set[int]) -> int:
    """Versions rows some snapshot in ``kept`` sees, counted row by row in Python."""
    rows = sqlite3.connect(db_path).execute("SELECT first, last FROM versions").fetchall()
    return sum(1 for first, last in rows if last is None or any(first <= k < last for k in kept))


def test_prune_keeps_the_views_of_kept_snapshots(target: Target) -> None:
    five_snapshots(target)
    views = {s: view(target, s) for s in range(1, 6)}
    db_path = target.directory / "index.sqlite"
    before = _needed(db_path, {1, 2, 3, 4, 5})
    expected_rows = _needed(db_path, {1, 3, 5})

    result = target.prune([2, 4])
    assert result.snapshots_removed == 2
    assert result.versions_removed == before - expected_rows > 0
    assert (
        _needed(db_path, {1, 3, 5})
        == expected_rows
        == sqlite3.connect(db_path).execute("SELECT count(*) FROM versions").fetchone()[0]
    )
    for s in (1, 3, 5):
        assert view(target, s) == views[s]
    for s in (2, 4):
        with pytest.raises(Refused) as e:
            list(target.list_entries(s, "", True))
        assert as_sent(e.value).code == ErrorCode.NO_SUCH_SNAPSHOT
        assert target.snapshot(s) is None
    assert [s.id for s in target.snapshots()] == [1, 3, 5] and target.snapshot_count() == 3

    # A2 lived only in snapshot 2: gone. d.txt's first version was added by 2 and is seen first by 3.
    assert [(v.first, v.last) for v in target.versions("docs/a.txt")] == [(1, 2), (3, 4)]
    [d1, d2] = target.versions("d.txt")
    assert (d1.first, d1.time, d1.last, d1.size) == (3, 300.0, 4, 2)
    assert (d2.first, d2.time, d2.last) == (5, 500.0, None)  # added by pruned 4: reported from 5
    gone = {d.path: d for d in target.deleted("")}
    assert (gone["docs/b.txt"].last_snapshot, gone["docs/b.txt"].deleted_in) == (1, 3)
    assert (gone["docs/a.txt"].last_snapshot, gone["docs/a.txt"].deleted_in) == (3, 4)
    assert gone["docs/a.txt"].deleted_time == 400.0  # a pruned snapshot still dates the deletion

    # Unknown and already pruned ids are ignored; the latest cannot go.
    assert target.prune([2, 99]).snapshots_removed == 0
    with pytest.raises(Refused) as e:
        target.prune([1, 5])
    assert as_sent(e.value).code == ErrorCode.CONFLICT
    assert [s.id for s in target.snapshots()] == [1, 3, 5]  # nothing changed

    assert target.prune([1, 3]).snapshots_removed == 2
    assert [s.id for s in target.snapshots()] == [5]
    assert target.deleted("") == []
    assert [(v.first, v.last) for v in target.versions("c.bin")] == [(5, None)]
    with pytest.raises(Refused):
        target.versions("docs/a.txt")
    assert view(target, 5) == views[5]
    # A new push after pruning keeps working and numbering goes on.
    assert commit(target, list(views[5].values()), 600.0) == 6
    assert target.latest() is not None and target.latest().files == 3


def test_deleted_uses_the_path_index(target: Target) -> None:
    five_snapshots(target)
    db = sqlite3.connect(target.directory / "index.sqlite")
    from neotwist.server.repository import history

    cond, params = history.within("docs", "v.path")
    plan = " | ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + history._DELETED.format(cond=cond), params))
    assert "SEARCH v USING INDEX versions_path" in plan, plan
    assert "SCAN v" not in plan, plan
    plan = " | ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + history._VERSIONS, {"p": "x"}))
    assert "SEARCH v USING INDEX versions_path (path=?)" in plan, plan
