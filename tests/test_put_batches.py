"""Puts that arrive in many small reads while a batch of theirs is being stored join one batch, rather than each
read sending its own worker job (a fast upload over SSH arrives a packet at a time: see PUT_JOBS). A lone put
still goes at once."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import maybeDeferred

from neotwist.server.pushstate import PUT_JOBS
from neotwist.testing import Kit, Workers, chunk, committed
from neotwist.wire.messages import Commit, Entry, Ok, PushBegin, PushEntries, Put


def test_puts_arriving_while_batches_are_stored_wait_for_one_batch(kit: Kit) -> None:
    alice = kit.connect("alice")
    h = alice.open("t", mode="push", create=True).handle
    assert isinstance(alice.call(PushBegin(rid=0, handle=h)), Ok)
    workers = Workers()
    stores: list[int] = []

    def submit(f: Any, *args: Any) -> Any:
        if f.__name__ == "store_batch":
            stores.append(len(workers.jobs))
        return workers.submit(f, *args)

    kit.services.run_blocking = submit
    files = {f"f{n}": f"file {n}\n".encode() * 50 for n in range(40)}
    for data in files.values():  # each put its own read, and the end of each read comes before the next
        cid, raw = chunk(data)
        alice.post(Put(rid=0, handle=h, id=cid, codec=0, size=len(raw), data=raw))
        alice.pump.flush()
        kit.clock.advance(0)
    assert len(stores) == PUT_JOBS  # the first read's batch; the puts of the other reads wait, together
    while workers.jobs:
        workers.finish_one()
        kit.clock.advance(0)
        alice.pump.flush()
    assert len(stores) == PUT_JOBS + 1  # once a job was done, all of them went as one batch
    kit.services.run_blocking = maybeDeferred
    entries = [Entry("", "d", 0o755, 0, 0)] + [
        Entry(name, "f", 0o644, 1, len(data), chunk(data)[0]) for name, data in files.items()
    ]
    alice.post(PushEntries(rid=0, handle=h, entries=entries))
    committed(alice.call(Commit(rid=0, handle=h)))
    listed = alice.listing(alice.open("t").handle)
    assert sorted(listed) == sorted(["", *files])


def test_a_lone_put_is_stored_at_once(kit: Kit) -> None:
    alice = kit.connect("alice")
    h = alice.open("t", mode="push", create=True).handle
    assert isinstance(alice.call(PushBegin(rid=0, handle=h)), Ok)
    workers = Workers()
    kit.services.run_blocking = workers.submit
    cid, raw = chunk(b"alone")
    alice.post(Put(rid=0, handle=h, id=cid, codec=0, size=len(raw), data=raw))
    alice.pump.flush()
    kit.clock.advance(0)
    assert [job[0].__name__ for job in workers.jobs] == ["store_batch"]


def _memory(alice: Any) -> Any:
    """The connection's memory budget (what put batches being verified and get groups being sent hold)."""
    return alice.server.handler.context.memory


def test_a_commit_waits_for_a_batch_still_waiting_for_memory(kit: Kit) -> None:
    """A batch taken at the end of a read but not admitted yet (the connection's memory held by other work) was
    not waited for: the commit ran first and was refused with missing_chunks."""
    alice = kit.connect("alice")
    h = alice.open("t", mode="push", create=True).handle
    assert isinstance(alice.call(PushBegin(rid=0, handle=h)), Ok)
    memory = _memory(alice)
    held = memory.limit
    assert memory.acquire(held).called  # as get groups being sent would hold it
    data = b"the only file\n"
    cid, raw = chunk(data)
    alice.post(Put(rid=0, handle=h, id=cid, codec=0, size=len(raw), data=raw))
    alice.pump.flush()
    kit.clock.advance(0)  # the batch goes, and waits for memory
    entries = [Entry("", "d", 0o755, 0, 0), Entry("f", "f", 0o644, 1, len(data), cid)]
    alice.post(PushEntries(rid=0, handle=h, entries=entries))
    replies: list[Any] = []
    alice.client.request(Commit(rid=0, handle=h)).addBoth(replies.append)
    alice.pump.flush()
    assert replies == []  # waiting for the batch
    memory.release(held)
    for _ in range(5):
        alice.pump.flush()
        kit.clock.advance(0)
    assert len(replies) == 1
    committed(replies[0])


def test_a_batch_waiting_for_memory_when_the_connection_is_lost_is_dropped(kit: Kit) -> None:
    """The push ends and its handle closes even though the memory its last batch waits for is never given
    back: a lost connection must not keep the target held."""
    alice = kit.connect("alice")
    h = alice.open("t", mode="push", create=True).handle
    assert isinstance(alice.call(PushBegin(rid=0, handle=h)), Ok)
    context = alice.server.handler.context
    memory = context.memory
    assert memory.acquire(memory.limit).called
    cid, raw = chunk(b"never stored")
    alice.post(Put(rid=0, handle=h, id=cid, codec=0, size=len(raw), data=raw))
    alice.pump.flush()
    kit.clock.advance(0)
    handle = context.handles[h]
    assert handle.pushes.admitting  # the batch is waiting for memory
    alice.client.transport.loseConnection()
    alice.pump.flush()
    kit.clock.advance(0)
    assert not handle.pushes.admitting and handle.pushes.run is None  # dropped; the push ended
    assert context.handles == {}
