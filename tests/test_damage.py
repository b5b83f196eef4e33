"""Marking damaged chunks and healing them, in the repository: what a read marks (and what it must not), how a
store heals, what a commit asks for, and how an index written before the ``damaged`` table is brought forward."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from repo_support import (
    Refused,
    as_sent,
    commit,
    dir_entry,
    every_target,
    file_entry,
    ids_of,
    put,
    read_chunk,
    read_file,
    view,
)
from test_check import location, poke

from neotwist.chunking import DEFAULT_PARAMS
from neotwist.server.repository import Repository, Target, damage, index
from neotwist.wire.errors import ErrorCode


def marked(t: Target) -> dict[bytes, tuple[int | None, str]]:
    with sqlite3.connect(t.directory / "index.sqlite") as db:
        return {bytes(r[0]): (r[1], r[2]) for r in db.execute("SELECT id, pack, why FROM damaged")}


def two_files(t: Target) -> tuple[bytes, bytes]:
    a = file_entry("a", b"alpha " * 400, target=t)
    b = file_entry("b", b"bravo " * 400, target=t)
    commit(t, [dir_entry(""), a, b], 1.0)
    t.flush()
    return ids_of(a)[0], ids_of(b)[0]


def test_a_rotten_record_a_read_meets_is_marked_and_a_store_heals_it(target: Target) -> None:
    a, b = two_files(target)
    pack, offset, _length = location(target, a)
    poke(pack, offset + 60, b"rot")
    usage = target.usage()
    with pytest.raises(Refused, match="stored bytes are damaged; marked damaged: push the intact file"):
        read_chunk(target, a)
    assert list(marked(target)) == [a] and marked(target)[a][0] is not None
    assert target.missing([a, b]) == [True, False]  # have: send it again
    assert target.usage().chunks == usage.chunks - 1  # the counters lost it (check agrees)
    with pytest.raises(Refused, match="is not stored"):
        read_chunk(target, a)
    report = target.check()
    assert report.lost_chunks == 1 and [(f.path, f.marked) for f in report.damaged_files] == [("a", True)]
    assert not report.problems

    assert put(target, b"alpha " * 400) == a  # stored anew, at a new place
    target.flush()
    assert marked(target) == {}
    assert read_file(target, view(target, 1)["a"]) == b"alpha " * 400
    assert target.check(verify_data=True).ok


def test_a_read_that_fails_with_an_io_error_marks_nothing(target: Target) -> None:
    a, _b = two_files(target)
    pack, _offset, _length = location(target, a)
    target.chunks.packs.close()  # drop the pooled descriptors, then make the pack unreadable
    pack.rename(pack.with_suffix(".away"))
    with pytest.raises(Refused, match="cannot open its pack"):
        read_chunk(target, a)
    assert marked(target) == {}
    pack.with_suffix(".away").rename(pack)
    assert read_file(target, view(target, 1)["a"]) == b"alpha " * 400


def test_a_commit_asks_for_a_marked_chunk_even_for_an_unchanged_file(target: Target) -> None:
    a, b = two_files(target)
    poke(location(target, a)[0], location(target, a)[1] + 60, b"rot")
    report = target.check(repair=True)
    assert (report.repaired, report.marked_chunks, report.lost_chunks) == (True, 1, 1)
    unchanged = [dir_entry(""), file_entry("a", b"alpha " * 400), file_entry("b", b"bravo " * 400)]
    with pytest.raises(Refused) as e:
        commit(target, unchanged, 2.0)
    assert as_sent(e.value).code == ErrorCode.MISSING_CHUNKS and "damaged on the server" in e.value.message
    put(target, b"alpha " * 400)
    assert commit(target, unchanged, 2.0) == 2
    assert target.check(verify_data=True).ok and marked(target) == {}

    # A marked chunk that nothing refers to any more (its file is gone from every kept snapshot) is forgotten.
    poke(location(target, b)[0], location(target, b)[1] + 60, b"rot")
    assert target.check(repair=True).marked_chunks == 1 and list(marked(target)) == [b]
    commit(target, [dir_entry(""), file_entry("a", b"alpha " * 400)], 3.0)
    target.prune([1, 2])
    report = target.check(repair=True)
    assert report.ok and report.lost_chunks == 0 and marked(target) == {}


def test_an_index_from_before_the_damaged_table_is_migrated(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    t = repo.create_target(1, "home", encrypted=False, chunker=DEFAULT_PARAMS)
    a, _b = two_files(t)
    repo.close()
    db_path = next((tmp_path / "repo").glob("t*")) / "index.sqlite"
    def make_old() -> None:  # as an older Neophytos left it
        with sqlite3.connect(db_path) as db:
            db.execute("DROP TRIGGER damaged_healed")
            db.execute("DROP TABLE damaged")
            db.execute("ALTER TABLE snapshots DROP COLUMN label")  # a later version's column
            db.execute("PRAGMA user_version=1")

    make_old()
    repo = Repository(tmp_path / "repo")  # the server opens it: migrated
    [t] = every_target(repo)
    assert t.check().ok and marked(t) == {}
    repo.close()
    make_old()

    tool = Repository(tmp_path / "repo", read_only=True)  # neo-admin check beside an old server's files
    [old] = every_target(tool)
    assert old.check(verify_data=True).ok
    poke(location(old, a)[0], location(old, a)[1] + 60, b"rot")
    report = old.check(repair=True)  # a repair brings the file forward, through its own connection
    assert report.marked_chunks == 1 and [f.marked for f in report.damaged_files] == [True]
    tool.close()
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == index.SCHEMA_VERSION + len(index.INDEX_MIGRATIONS)

    repo = Repository(tmp_path / "repo")
    [t] = every_target(repo)
    assert put(t, b"alpha " * 400) == a
    t.flush()
    assert t.check(verify_data=True).ok
    repo.close()


def test_marking_leaves_a_chunk_alone_that_moved_or_is_stored(target: Target) -> None:
    """A mark names where the bad record was: a chunk a collection moved meanwhile (its row points elsewhere now)
    or a chunk stored after the check saw it missing is not marked."""
    a, b = two_files(target)
    pack, offset, length, codec, size = target.locate([a])[a]
    moved = damage.Found(a, (pack, offset + 1, length, codec, size), "seen damaged at a place it left")
    stored = damage.Found(b, None, "seen referenced but not stored")
    assert target.mark_damaged([moved, stored]) == 0
    assert marked(target) == {} and target.missing([a, b]) == [False, False]
    assert target.check(verify_data=True).ok


def test_a_collection_forgets_the_marks_that_nothing_refers_to(target: Target) -> None:
    a, _b = two_files(target)
    pack, offset, _length = location(target, a)
    poke(pack, offset + 60, b"rot")
    with pytest.raises(Refused, match="marked damaged"):
        read_chunk(target, a)
    commit(target, [dir_entry(""), file_entry("b", b"bravo " * 400)], 2.0)  # a is gone from the latest snapshot
    target.collect_garbage()
    assert list(marked(target)) == [a]  # snapshot 1 still refers to it: still lost, still asked for
    target.prune([1])
    target.collect_garbage()
    assert marked(target) == {}  # nothing refers to it any more: commits need not look for it
    assert target.check(verify_data=True).ok
    assert read_file(target, view(target, 2)["b"]) == b"bravo " * 400
