"""``get_files`` in the server session (in memory): chunks of several files of one snapshot in one request, in
order, with the same checks as ``get`` for every file (its path, that each id belongs to it, the grant's
bounds), and the bounds of the request enforced."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from neotwist.server.rights import Right
from neotwist.testing import Conn, Kit, Workers, chunk, committed
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, RemoteError
from neotwist.wire.messages import ChunkReply, FileIds, GetFiles


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = Kit(tmp_path)
    k.account("alice")
    k.account("alice.viewer", parent="alice")
    yield k
    k.close()


FILES = {"a/one": b"first file", "a/two": b"second file", "b/three": b"third file", "b/same": b"first file"}


def fetch(
    conn: Conn, handle: int, files: list[tuple[str, list[bytes]]], snapshot: int = 1
) -> list[bytes] | RemoteError:
    got: list[ChunkReply] = []
    total = sum(len(ids) for _, ids in files)
    reply = conn.call(
        GetFiles(rid=0, handle=handle, snapshot=snapshot, files=[FileIds(path=p, ids=ids) for p, ids in files]),
        more=lambda m: got.append(m) or len(got) < total,
    )
    if isinstance(reply, RemoteError):
        return reply
    return [m.data for m in got]


def refused(reply: object, code: ErrorCode, *words: str) -> None:
    assert isinstance(reply, RemoteError), reply
    assert reply.code == code, (reply.code, reply.message)
    for word in words:
        assert word in reply.message, reply.message


def test_chunks_of_several_files_come_in_request_order(kit: Kit) -> None:
    alice = kit.connect("alice")
    committed(alice.push(FILES))
    h = alice.open("t").handle
    ids = {name: chunk(data)[0] for name, data in FILES.items()}
    got = fetch(alice, h, [("b/three", [ids["b/three"]]), ("a/one", [ids["a/one"]]), ("a/two", [ids["a/two"]])])
    assert got == [b"third file", b"first file", b"second file"]
    # a chunk two files share is asked for through either of them
    assert fetch(alice, h, [("b/same", [ids["a/one"]])]) == [b"first file"]


def test_every_file_is_checked_as_get_checks_it(kit: Kit) -> None:
    alice = kit.connect("alice")
    committed(alice.push(FILES))
    h = alice.open("t").handle
    one, two = chunk(FILES["a/one"])[0], chunk(FILES["a/two"])[0]
    # the second file's id belongs to the first one only: nothing of the request is answered
    refused(fetch(alice, h, [("a/one", [one]), ("a/two", [one])]), ErrorCode.CHUNK_NOT_IN_FILE, "'a/two'")
    refused(fetch(alice, h, [("a/one", [one]), ("nowhere", [two])]), ErrorCode.NO_SUCH_PATH, "'nowhere'")
    refused(fetch(alice, h, [("a/one", [one]), ("../x", [two])]), ErrorCode.BAD_PATH)
    refused(fetch(alice, h, [("a/one", [one])], snapshot=7), ErrorCode.NO_SUCH_SNAPSHOT)


def test_a_grantee_reaches_nothing_outside_its_grant(kit: Kit) -> None:
    alice = kit.connect("alice")
    committed(alice.push(FILES))
    kit.accounts.grant("alice.viewer", "alice", "t", "a", Right.READ, "half")
    viewer = kit.connect("alice.viewer")
    h = viewer.open("half").handle
    one, three = chunk(FILES["a/one"])[0], chunk(FILES["b/three"])[0]
    assert fetch(viewer, h, [("one", [one]), ("two", [chunk(FILES["a/two"])[0]])]) == [b"first file", b"second file"]
    refused(fetch(viewer, h, [("one", [one]), ("../b/three", [three])]), ErrorCode.BAD_PATH)
    refused(fetch(viewer, h, [("one", [one, three])]), ErrorCode.CHUNK_NOT_IN_FILE)  # an id learned elsewhere


def test_the_request_is_bounded(kit: Kit) -> None:
    alice = kit.connect("alice")
    committed(alice.push(FILES))
    h = alice.open("t").handle
    one = chunk(FILES["a/one"])[0]
    refused(fetch(alice, h, []), ErrorCode.PROTOCOL, "no file")
    refused(fetch(alice, h, [("a/one", [one]), ("a/two", [])]), ErrorCode.PROTOCOL, "without chunk ids")
    assert fetch(alice, h, [("a/one", [one])]) == [b"first file"]  # those two were not fatal
    # each file within MAX_IDS, together over it: fatal, as every limit is
    half = limits.MAX_IDS // 2 + 1
    refused(fetch(alice, h, [("a/one", [one] * half), ("b/same", [one] * half)]), ErrorCode.LIMIT_EXCEEDED)


def test_more_files_than_the_limit_is_a_bad_message(kit: Kit) -> None:
    alice = kit.connect("alice")
    committed(alice.push(FILES))
    h = alice.open("t").handle
    one = chunk(FILES["a/one"])[0]
    reply = fetch(alice, h, [("a/one", [one])] * (limits.MAX_GET_FILES + 1))
    refused(reply, ErrorCode.BAD_MESSAGE)


def test_a_read_group_goes_out_in_one_write(kit: Kit) -> None:
    """The chunks of one read group are written together, though the group is read in a worker and sent from
    its callback (outside any ``dataReceived``): over SSH every write is a packet of its own (an HMAC, padding
    and a dispatch at each end), and a packet per small file made a restore's transport cost grow with the
    file count instead of the bytes."""
    alice = kit.connect("alice")
    committed(alice.push(FILES))
    h = alice.open("t").handle
    workers = Workers()
    kit.services.run_blocking = workers.submit
    writes: list[bytes] = []
    transport: Any = alice.server.transport
    write = transport.write

    def counting(data: bytes) -> None:
        writes.append(data)
        write(data)

    transport.write = counting
    names = ["a/one", "a/two", "b/three"]
    got: list[Any] = []
    request = GetFiles(rid=0, handle=h, snapshot=1, files=[FileIds(path=n, ids=[chunk(FILES[n])[0]]) for n in names])

    def more(m: Any) -> bool:
        got.append(m)
        return len(got) < len(names)

    done = alice.client.request(request, more=more)
    alice.pump.flush()
    while workers.jobs:  # the check, the location and the read: run here, their results sent from callbacks
        workers.finish_one()
        alice.pump.flush()
    assert done.called
    assert [m.data for m in got] == [FILES[n] for n in names]
    assert len(writes) == 1, [len(w) for w in writes]
