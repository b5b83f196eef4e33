"""The push state machine of a handle (server/pushstate.py): which requests each phase allows, what a run
remembers of its failures, and when collected puts make a batch. Sans-IO: no reactor, thread or disk."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from neotwist.server.pushstate import BatchLimits, Phase, PushRun, PushSlot, PutBatch
from neotwist.server.quota import PushCharge
from neotwist.wire.errors import ErrorCode, NeoError
from neotwist.wire.messages import Put


def run() -> PushRun:
    push: Any = object()  # the repository's Push is not touched by the state machine
    return PushRun(push, PushCharge(confined=False, granted=False))


def test_a_push_goes_idle_beginning_active_idle() -> None:
    slot = PushSlot()
    assert slot.phase is Phase.IDLE and not slot.in_progress
    slot.begin()
    assert slot.phase is Phase.BEGINNING and slot.in_progress and slot.run is None
    first = run()
    slot.begun(first)
    assert slot.phase is Phase.ACTIVE and slot.active("commit") is first
    assert slot.end() is first
    assert slot.phase is Phase.IDLE and slot.run is None and not slot.in_progress
    assert slot.end() is None  # ending twice (close after abort) is harmless


@pytest.mark.parametrize("started", [False, True])
def test_a_second_begin_is_refused_while_one_is_beginning_or_active(started: bool) -> None:
    slot = PushSlot()
    slot.begin()
    if started:
        slot.begun(run())
    with pytest.raises(NeoError) as refused:
        slot.begin()
    assert refused.value.code == ErrorCode.PROTOCOL
    assert refused.value.message == "a push is already in progress on this handle"


def test_a_failed_begin_leaves_the_slot_idle_for_another() -> None:
    slot = PushSlot()
    slot.begin()
    slot.not_begun()
    assert slot.phase is Phase.IDLE
    slot.begin()  # allowed again
    assert slot.phase is Phase.BEGINNING


def test_requests_without_a_push_name_themselves() -> None:
    slot = PushSlot()
    with pytest.raises(NeoError) as no_push:
        slot.active("put", "chunks are uploaded within a push")
    assert no_push.value.code == ErrorCode.PROTOCOL
    assert no_push.value.message == "put before push_begin (chunks are uploaded within a push)"
    slot.begin()  # beginning is not begun: entries still wait for it
    with pytest.raises(NeoError) as beginning:
        slot.active("entries")
    assert beginning.value.message == "entries before push_begin"


def test_a_run_keeps_its_first_failure_and_a_quota_refusal_marks_it_for_reclaim() -> None:
    r = run()
    r.failed(NeoError(ErrorCode.CHUNK_MISMATCH, "bad chunk"))
    assert r.failure is not None and r.failure.code == ErrorCode.CHUNK_MISMATCH and not r.reclaim
    r.failed(NeoError(ErrorCode.QUOTA_EXCEEDED, "full"))
    assert r.failure.code == ErrorCode.CHUNK_MISMATCH  # the first failure is what the commit reports
    assert r.reclaim  # but the quota's refusal still has the push's chunks collected


def test_a_batch_is_full_at_whichever_limit_comes_first_and_take_empties_it() -> None:
    limits = BatchLimits(data_bytes=100, raw_bytes=1000, count=3)
    batch = PutBatch()
    batch.add(Put(rid=1, handle=1, id=b"\0" * 32, codec=0, size=10, data=b"x" * 10))
    assert not batch.full(limits)
    batch.add(Put(rid=2, handle=1, id=b"\1" * 32, codec=0, size=995, data=b"x" * 5))  # declares a lot
    assert batch.full(limits) and (batch.data_bytes, batch.raw_bytes) == (15, 1005)
    clock = Clock()
    batch.timer = clock.callLater(0, lambda: None)
    puts, data, raw = batch.take()
    assert [p.rid for p in puts] == [1, 2] and (data, raw) == (15, 1005)
    assert batch.puts == [] and (batch.data_bytes, batch.raw_bytes) == (0, 0)
    assert batch.timer is None and not clock.getDelayedCalls()  # the partial batch's timer is cancelled
    for rid in range(3):
        batch.add(Put(rid=rid, handle=1, id=bytes([rid]) * 32, codec=0, size=1, data=b"x"))
    assert batch.full(limits)  # by count
