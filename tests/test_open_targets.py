"""Open targets are bounded: a target nobody holds is closed when too many are open (least recently used first)
or when it has been idle too long, and a held target is never closed under its holder. Real repositories on
disk; file descriptors counted in /proc."""

from __future__ import annotations

import errno
import os
import resource
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from repo_support import commit, dir_entry, file_entry, open_targets, put, read_file, view

from neotwist.chunking import DEFAULT_PARAMS
from neotwist.server import descriptors
from neotwist.server.repository import Repository, Target, chunkstore
from neotwist.testing import Kit, committed
from neotwist.wire.messages import Close, Entry, Ok, Opened

FDS_PER_TARGET = 7
"""Measured for a small target (one pack): index.sqlite twice (writer and reader connections), their two WAL
files, one shared-memory file, the pack writer and one pack reader."""


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Clock:
    """A hand-moved clock for the idle time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fill(repo: Repository, account: int, name: str, content: bytes) -> Entry:
    """Create the target, push one file to it, read it back, release it; the file's entry."""
    target = repo.create_target(account, name, encrypted=False, chunker=DEFAULT_PARAMS)
    try:
        entry = file_entry("f", content, target=target)
        commit(target, [dir_entry(""), entry], 100.0)
        assert read_file(target, entry) == content
        return entry
    finally:
        repo.release(target)


def test_many_targets_keep_few_descriptors_open(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", max_open=4)
    try:
        before = open_fds()
        entries = {f"t{i:02d}": fill(repo, 1, f"t{i:02d}", f"content {i}".encode() * 100) for i in range(40)}
        # Without the bound: 40 targets x 7 descriptors. With it: at most 4 targets are open.
        assert open_targets(repo) == (4, 0)
        assert open_fds() - before <= 4 * FDS_PER_TARGET + 4
        # Every target reopens with its data (the closed ones flushed and closed cleanly).
        for name in ("t00", "t17", "t39"):
            target = repo.find_target(1, name)
            assert target is not None
            assert read_file(target, view(target, 1)["f"]) == read_file(target, entries[name])
            repo.release(target)
        assert open_targets(repo)[0] <= 4
        # Listing and usage go through the targets one at a time.
        assert len(repo.list_targets(1)) == 40
        assert open_targets(repo) == (4, 0)
    finally:
        repo.close()


def test_held_targets_are_never_closed(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", max_open=1)
    try:
        held = [repo.create_target(1, f"held{i}", encrypted=False, chunker=DEFAULT_PARAMS) for i in range(3)]
        for target in held:
            commit(target, [dir_entry(""), file_entry("f", target.meta.name.encode() * 50, target=target)], 1.0)
        for i in range(5):
            fill(repo, 1, f"other{i}", b"other" * 10)
        # Three held plus at most one unheld: the held ones are the same objects, still usable.
        assert open_targets(repo) == (4, 3)
        for target in held:
            assert repo.find_target(1, target.meta.name) is target
            assert read_file(target, view(target, 1)["f"]) == target.meta.name.encode() * 50
            repo.release(target)  # the find above
            repo.release(target)  # the create
        assert open_targets(repo) == (4, 0)
        fill(repo, 1, "last", b"x")
        assert open_targets(repo) == (1, 0)
        with pytest.raises(RuntimeError, match="released more often"):
            last = repo.find_target(1, "last")
            assert last is not None
            repo.release(last)
            repo.release(last)
    finally:
        repo.close()


def test_idle_targets_are_closed_after_the_idle_time(tmp_path: Path) -> None:
    clock = Clock()
    repo = Repository(tmp_path / "repo", idle=300.0, clock=clock)
    try:
        fill(repo, 1, "a", b"a" * 1000)
        clock.now += 100
        fill(repo, 1, "b", b"b" * 1000)
        busy = repo.find_target(1, "b")
        assert busy is not None
        clock.now += 250  # a idle for 350 s; b held
        assert repo.close_idle() == 1
        assert open_targets(repo) == (1, 1)
        repo.release(busy)
        assert repo.close_idle() == 0  # b idle since just now
        assert repo.close_idle(clock.now + 300) == 1
        assert open_targets(repo) == (0, 0)
        # Reopened on demand, with a pending chunk flushed by the close.
        a = repo.find_target(1, "a")
        assert a is not None
        unflushed = file_entry("g", b"pending" * 100, target=a)
        repo.release(a)
        assert repo.close_idle(clock.now + 1000) == 1
        a = repo.find_target(1, "a")
        assert a is not None and a.missing([unflushed.chunks]) == [False]
        repo.release(a)
    finally:
        repo.close()


def test_a_removed_target_is_closed_once_its_last_holder_lets_go(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", max_open=1)
    try:
        fill(repo, 1, "doomed", b"d" * 1000)
        doomed = repo.find_target(1, "doomed")
        reader = repo.find_target(1, "doomed")
        assert doomed is not None and reader is doomed
        before = open_fds()
        repo.remove_target(doomed)
        repo.release(doomed)
        assert not (tmp_path / "repo" / f"t{doomed.meta.id}").exists()
        # Still held by a reader: its open files stay usable until it lets go.
        assert view(reader, 1)["f"].size == 1000
        assert repo.close_idle() == 0 and open_targets(repo) == (1, 1)
        repo.release(reader)
        assert repo.close_idle() == 1 and open_targets(repo) == (0, 0)
        assert open_fds() <= before - FDS_PER_TARGET + 1
        assert repo.find_target(1, "doomed") is None
    finally:
        repo.close()


def test_sessions_hold_what_their_handles_use(tmp_path: Path) -> None:
    kit = Kit(tmp_path, max_open=2)
    try:
        kit.account("alice")
        conn = kit.connect("alice")
        for i in range(10):
            committed(conn.push({"f": f"file {i}".encode()}, target=f"t{i}"))  # leaves its handle open
        open_count, held = open_targets(kit.repository)
        assert held == 10 and open_count == 10
        for number in range(1, 11):
            assert isinstance(conn.call(Close(rid=0, handle=number)), Ok)
        # Released (a release never waits for the disk); the next sweep or open closes what is over the bound.
        assert open_targets(kit.repository) == (10, 0)
        assert kit.repository.close_idle() == 8
        assert open_targets(kit.repository) == (2, 0)
        # A reader keeps its target while other connections churn through the rest.
        reader = conn.open("t0")
        assert isinstance(reader, Opened)
        other = kit.connect("alice")
        for i in range(1, 10):
            opened = other.open(f"t{i}")
            assert isinstance(opened, Opened)
            other.call(Close(rid=0, handle=opened.handle))
        assert open_targets(kit.repository)[1] == 1
        assert conn.listing(reader.handle)["f"].size == len(b"file 0")
        # A connection lost with handles open lets go of them.
        for i in range(3):
            assert isinstance(other.open(f"t{i}"), Opened)
        assert open_targets(kit.repository)[1] == 3  # t0 is held twice
        other.client.transport.loseConnection()
        other.pump.flush()
        conn.client.transport.loseConnection()
        conn.pump.flush()
        kit.repository.close_idle(float("inf"))
        assert open_targets(kit.repository) == (0, 0)
    finally:
        kit.close()


def test_target_object_is_shared_while_held(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", max_open=1)
    try:
        first = repo.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
        again = repo.find_target(1, "t")
        assert again is first and isinstance(first, Target)
    finally:
        repo.close()


@contextmanager
def fd_limit(spare: int) -> Iterator[None]:
    """This process may open only ``spare`` more files (its soft limit, restored afterwards). The limit bounds
    descriptor numbers, and a new file takes the lowest free one: the limit is set just above the ``spare``-th
    free number."""
    used = {int(name) for name in os.listdir("/proc/self/fd")}
    free = (n for n in range(1 << 20) if n not in used)
    limit = [next(free) for _ in range(spare)][-1] + 1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_out_of_descriptors_closes_unheld_targets_first(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    try:
        for i in range(4):
            fill(repo, 1, f"t{i}", b"x" * 100)
        repo.create_target(1, "new", encrypted=False, chunker=DEFAULT_PARAMS)
        repo.create_target(1, "busy", encrypted=False, chunker=DEFAULT_PARAMS)
        for name in ("new", "busy"):
            target = repo.find_target(1, name)
            assert target is not None
            repo.release(target)
            repo.release(target)
        repo.close_idle(float("inf"))
        for i in range(4):
            t = repo.find_target(1, f"t{i}")
            assert t is not None
            repo.release(t)
        assert open_targets(repo) == (4, 0)
        with fd_limit(2):  # an index needs more: the four unused targets are closed to make room
            new = repo.find_target(1, "new")
        assert new is not None and open_targets(repo) == (1, 1)
        with fd_limit(2):  # nothing left to close: SQLite's "unable to open", recognised for what it is
            with pytest.raises(sqlite3.OperationalError) as caught:
                repo.find_target(1, "busy")
            assert descriptors.out_of_fds(caught.value)
        assert not descriptors.out_of_fds(caught.value)  # with descriptors to spare, it would be something else
        assert descriptors.out_of_fds(OSError(errno.EMFILE, "Too many open files"))
        repo.release(new)
        assert open_targets(repo) == (1, 0)
    finally:
        repo.close()


def test_a_target_with_an_aborted_push_s_leftovers_stays_open_until_they_are_reclaimed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    repo = Repository(tmp_path / "repo", max_open=1, idle=10.0, clock=clock)
    try:
        fill(repo, 1, "t", b"kept" * 100)
        t = repo.find_target(1, "t")
        assert t is not None
        push = t.begin_push("", False)
        left = put(t, os.urandom(50_000), compress=False)
        push.abort()  # kept for a resume, then reclaimed by the server's maintenance
        repo.release(t)
        clock.now += 100
        fill(repo, 1, "other", b"x")  # over max_open, idle for long: still not closed
        assert repo.close_idle() == 1  # "other" only
        assert open_targets(repo) == (1, 0) and t.missing([left]) == [False]
        monkeypatch.setattr(chunkstore, "ABANDONED_GRACE", 0.0)
        repo.maintain()  # reclaims, then closes what is idle
        assert open_targets(repo) == (0, 0)
        again = repo.find_target(1, "t")
        assert again is not None and again.missing([left]) == [True]
        repo.release(again)
    finally:
        repo.close()
