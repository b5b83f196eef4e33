"""What puts can make the server spend: a put whose chunk is stored already is dropped before it is decompressed,
and the content bytes that puts declare (what verifying them decompresses) are bounded per batch and per
connection, with the client held back while they are: a 145-byte put of compressed zeros declares 4 MiB."""

from __future__ import annotations

from typing import Any

import blake3
import pytest
import zstandard

from neotwist.server.repository import target as target_module
from neotwist.server.repository.target import Target
from neotwist.server.session import PUT_BATCH_RAW_BYTES, SESSION_MEMORY
from neotwist.testing import Conn, Kit, Workers, committed
from neotwist.wire import limits
from neotwist.wire.messages import CODEC_ZSTD, Commit, Committed, Entry, Ok, PushBegin, PushEntries, Put

SIZE = limits.MAX_CHUNK


def zeros(n: int) -> tuple[bytes, bytes]:
    """A 4 MiB chunk of zeros after an 8-byte counter: its id and its zstd frame (about 150 bytes)."""
    content = n.to_bytes(8, "big") + bytes(SIZE - 8)
    return blake3.blake3(content).digest(), zstandard.ZstdCompressor().compress(content)


def begin(conn: Conn) -> int:
    h = conn.open("t", mode="push", create=True).handle
    assert isinstance(conn.call(PushBegin(rid=0, handle=h)), Ok)
    return int(h)


def test_a_put_of_a_stored_chunk_is_not_decompressed(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    alice = kit.connect("alice")
    cid, frame = zeros(0)
    h = begin(alice)
    alice.post(Put(rid=0, handle=h, id=cid, codec=CODEC_ZSTD, size=SIZE, data=frame))
    root, z = Entry("", "d", 0o755, 0, 0), Entry("z", "f", 0o644, 1, SIZE, cid)
    alice.post(PushEntries(rid=0, handle=h, entries=[root, z]))
    committed(alice.call(Commit(rid=0, handle=h)))
    verified: list[bytes] = []
    verify = target_module.verify_upload

    def counted(chunk_id: bytes, *args: Any, **kwargs: Any) -> None:
        verified.append(chunk_id)
        verify(chunk_id, *args, **kwargs)

    monkeypatch.setattr(target_module, "verify_upload", counted)
    h = begin(alice)
    for _ in range(50):
        alice.post(Put(rid=0, handle=h, id=cid, codec=CODEC_ZSTD, size=SIZE, data=frame))
    fresh, fresh_frame = zeros(1)
    alice.post(Put(rid=0, handle=h, id=fresh, codec=CODEC_ZSTD, size=SIZE, data=fresh_frame))
    alice.post(PushEntries(rid=0, handle=h, entries=[root, z, Entry("y", "f", 0o644, 1, SIZE, fresh)]))
    assert isinstance(alice.call(Commit(rid=0, handle=h)), Committed)
    assert verified == [fresh]  # 50 copies of a stored chunk cost nothing; the new one is checked


def test_declared_content_is_bounded_per_batch_and_per_connection(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    """200 puts of 150 bytes each declare 800 MiB. They went into one batch (512 puts or 4 MiB of frames), so one
    worker decompressed all of it, and batches waiting for a worker were not limited at all."""
    alice = kit.connect("alice")
    h = begin(alice)
    batches: list[int] = []
    store = Target.store_chunks_sized

    def recorded(self: Target, chunks: Any, budget: int | None = None) -> tuple[int, int]:
        batches.append(sum(c[2] for c in chunks))
        return store(self, chunks, budget)

    monkeypatch.setattr(Target, "store_chunks_sized", recorded)
    workers = Workers()
    jobs = workers.jobs
    kit.services.run_blocking = workers.submit
    ids = []
    for n in range(200):
        cid, frame = zeros(n)
        ids.append(cid)
        alice.post(Put(rid=0, handle=h, id=cid, codec=CODEC_ZSTD, size=SIZE, data=frame))
    most = 0
    for _ in range(500):
        alice.pump.flush()
        kit.clock.advance(0)
        waiting = [j for j in jobs if j[0].__name__ == "store_batch"]
        most = max(most, len(waiting))
        if not jobs:
            break
        workers.finish_one()
    assert not jobs and sum(batches) == 200 * SIZE  # everything got stored in the end
    assert max(batches) <= PUT_BATCH_RAW_BYTES
    assert most * PUT_BATCH_RAW_BYTES <= SESSION_MEMORY


def test_byte_budget_serves_in_order_and_never_starves_a_large_request() -> None:
    from neotwist.server.budget import ByteBudget

    budget = ByteBudget(10)
    got: list[str] = []
    budget.acquire(6).addCallback(lambda _: got.append("a"))
    budget.acquire(50).addCallback(lambda _: got.append("huge"))  # clipped to the whole budget: waits for all
    budget.acquire(1).addCallback(lambda _: got.append("small"))  # fits, but comes after the waiting one
    assert got == ["a"]
    budget.release(6)
    assert got == ["a", "huge"] and budget.held == 10
    budget.release(50)
    assert got == ["a", "huge", "small"] and budget.held == 1
    cancelled = budget.acquire(10)
    cancelled.addErrback(lambda f: got.append("cancelled"))
    cancelled.cancel()
    budget.release(1)
    assert budget.held == 0 and got[-1] == "cancelled"
