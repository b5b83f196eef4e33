"""A push that lists only its changes since its parent snapshot writes rows for those changes alone: the commit
of an unchanged tree adds a snapshot row and no versions row, whatever the tree's size (its versions stay
current: the interval model keeps a version alive from its first snapshot until one replaces it), and the new
snapshot's view, history and check are those of a full listing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from repo_support import dir_entry, file_entry, view

from neotwist.chunking import DEFAULT_PARAMS
from neotwist.server.repository import Repository, Target
from neotwist.wire.messages import Entry

FILES = 300


def _rows(t: Target) -> tuple[int, int]:
    db = sqlite3.connect(t.directory / "index.sqlite")
    try:
        count = [db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("versions", "snapshots")]
        return count[0], count[1]
    finally:
        db.close()


def _tree(t: Target) -> list[Entry]:
    out = [dir_entry(""), dir_entry("d")]
    out += [file_entry(f"d/f{i:03}", f"data {i}".encode(), target=t) for i in range(FILES)]
    return out


def test_an_unchanged_push_with_a_parent_writes_no_versions_row(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    t = repo.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
    push = t.begin_push("", True)
    push.add(_tree(t))
    first = push.commit(100.0).snapshot.id
    versions, snapshots = _rows(t)
    assert versions == FILES + 2

    for n in range(2):  # nothing listed, nothing deleted: the tree as the parent has it
        push = t.begin_push("", True, parent=first + n)
        committed = push.commit(200.0 + n).snapshot
        assert (committed.changed, committed.deleted, committed.files) == (0, 0, FILES)
        assert _rows(t) == (versions, snapshots + n + 1)
    latest = first + 2
    assert view(t, latest) == view(t, first)

    push = t.begin_push("", True, parent=latest)  # one change: one version closed, one added
    push.add([file_entry("d/f007", b"changed", target=t)])
    push.add_deleted(["d/f008"])
    changed = push.commit(300.0).snapshot
    assert (changed.changed, changed.deleted, changed.files) == (1, 1, FILES - 1)
    assert _rows(t) == (versions + 1, snapshots + 3)
    assert [(v.first, v.last) for v in t.versions("d/f007")] == [(first, changed.id), (changed.id, None)]
    assert t.check().ok
    repo.close()
