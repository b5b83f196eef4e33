"""A push that lists only its changes since a snapshot (``push_begin.parent``), in the server session (in
memory): unlisted paths keep their versions, only named paths are deleted, and the commit is refused when the
parent is no longer the target's latest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from neotwist.testing import Conn, Kit, chunk, committed
from neotwist.wire.errors import ErrorCode, RemoteError
from neotwist.wire.messages import Commit, Entry, Ok, PushBegin, PushDeleted, PushEntries, Put


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = Kit(tmp_path)
    k.account("alice")
    yield k
    k.close()


def delta(conn: Conn, parent: int, files: dict[str, bytes], deleted: list[str], delete: bool = True) -> object:
    h = conn.open("t", mode="push").handle
    begun = conn.call(PushBegin(rid=0, handle=h, delete=delete, parent=parent))
    assert isinstance(begun, Ok), begun
    entries = []
    for name, data in files.items():
        cid, raw = chunk(data)
        conn.post(Put(rid=0, handle=h, id=cid, codec=0, size=len(raw), data=raw))
        entries.append(Entry(name, "f", 0o644, 2, len(data), cid))
    if entries:
        conn.post(PushEntries(rid=0, handle=h, entries=entries))
    if deleted:
        conn.post(PushDeleted(rid=0, handle=h, paths=deleted))
    return conn.call(Commit(rid=0, handle=h))


def files_of(conn: Conn, snapshot: int) -> dict[str, int]:
    h = conn.open("t").handle
    return {p: e.size for p, e in conn.listing(h, snapshot=snapshot).items() if e.kind == "f"}


def test_unlisted_paths_stay_and_named_ones_go(kit: Kit) -> None:
    alice = kit.connect("alice")
    first = committed(alice.push({"a/one": b"1", "a/two": b"22", "b/three": b"333", "keep": b"4444"}))
    second = committed(delta(alice, first.snapshot, {"a/two": b"changed", "new": b"n"}, ["b/three", "b"]))
    assert (second.changed, second.deleted) == (2, 2), second
    assert second.files == first.files  # one gone, one added
    assert files_of(alice, second.snapshot) == {"a/one": 1, "a/two": 7, "keep": 4, "new": 1}
    assert files_of(alice, first.snapshot) == {"a/one": 1, "a/two": 2, "b/three": 3, "keep": 4}
    # nothing changed, nothing named: the next snapshot is the same tree
    third = committed(delta(alice, second.snapshot, {}, []))
    assert (third.changed, third.deleted) == (0, 0)
    assert files_of(alice, third.snapshot) == files_of(alice, second.snapshot)


def test_a_parent_that_is_no_longer_the_latest_is_refused(kit: Kit) -> None:
    alice = kit.connect("alice")
    first = committed(alice.push({"a": b"1"}))
    committed(alice.push({"b": b"2"}))
    reply = delta(alice, first.snapshot, {"c": b"3"}, [])
    assert isinstance(reply, RemoteError) and reply.code == ErrorCode.CONFLICT, reply
    assert "push again listing everything" in reply.message


def test_deleted_paths_need_a_parent_and_delete(kit: Kit) -> None:
    alice = kit.connect("alice")
    first = committed(alice.push({"a": b"1"}))
    reply = delta(alice, first.snapshot, {}, ["a"], delete=False)
    assert isinstance(reply, RemoteError) and reply.code == ErrorCode.PROTOCOL, reply
    reply = delta(kit.connect("alice"), first.snapshot, {}, ["../x"])  # a failed post ends its session
    assert isinstance(reply, RemoteError) and reply.code == ErrorCode.BAD_PATH, reply
