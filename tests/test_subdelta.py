"""Deltas inside a chunk: the pure functions (cut, sign, diff, apply, base candidates) and the server's handling of
``sign`` and ``put_delta`` over in-memory connections, hostile deltas included: a forged reference or literal
never gets a chunk stored under an id it does not hash to, and every bound from the wire is enforced."""

from __future__ import annotations

import random
from array import array

import msgspec
import pytest

from neotwist import subdelta
from neotwist.codec import compute_id
from neotwist.server.basecuts import CUTS, BaseCuts
from neotwist.server.repository.chunkstore import ChunkStore, Location
from neotwist.testing import SessionTestCase, chunk, committed
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, NeoError, RemoteError
from neotwist.wire.messages import (
    Abort,
    ChunkDelta,
    Commit,
    Entry,
    Get,
    Have,
    Missing,
    Ok,
    PushBegin,
    PushEntries,
    PutDelta,
    Sign,
    Signatures,
    decode,
    encode,
)

LIT = subdelta.LITERAL


def edited(data: bytes, rng: random.Random, edits: int) -> bytes:
    out = bytearray(data)
    for _ in range(edits):
        at = rng.randrange(0, len(out) - 100)
        out[at : at + 100] = rng.randbytes(100)
    return bytes(out)


def test_a_small_edit_leaves_most_sub_pieces_as_references() -> None:
    rng = random.Random(1)
    base = rng.randbytes(64 * 1024)
    new = edited(base, rng, 2)
    delta = subdelta.diff(new, [subdelta.sign(base)])
    assert delta.copied >= 1
    assert len(delta.literals) <= 2 * 2 * subdelta.SUB_MAX  # about a sub-piece or two per edit
    assert len(delta.literals) < len(new) / 8
    assert subdelta.apply([base], delta.ops, delta.literals, len(new)) == new


def test_an_unchanged_chunk_is_one_reference_and_unrelated_data_all_literal() -> None:
    rng = random.Random(2)
    base = rng.randbytes(40_000)
    same = subdelta.diff(base, [subdelta.sign(base)])
    assert same.ops == [(0, len(subdelta.cut(base)))] and same.literals == b""
    other = rng.randbytes(30_000)
    delta = subdelta.diff(other, [subdelta.sign(base)])
    assert delta.ops == [(LIT, len(other))] and delta.literals == other
    assert subdelta.apply([base], delta.ops, delta.literals, len(other)) == other


def test_references_run_over_several_bases() -> None:
    rng = random.Random(3)
    a, b = rng.randbytes(20_000), rng.randbytes(20_000)
    new = a[5000:] + b"inserted" + b[:15000]
    delta = subdelta.diff(new, [subdelta.sign(a), subdelta.sign(b)])
    assert subdelta.apply([a, b], delta.ops, delta.literals, len(new)) == new
    assert len(delta.literals) < 12_000


@pytest.mark.parametrize(
    ("ops", "literals", "size"),
    [
        ([(0, 1000)], b"", 10),  # a sub-piece the base does not have
        ([(LIT, 5)], b"abc", 5),  # a literal past the literals
        ([(LIT, 3)], b"abcdef", 3),  # literals left over
        ([(LIT, 3)], b"abc", 2),  # more than the size
        ([(0, 1)], b"", 10**6),  # less than the size
        ([(LIT, 0)], b"", 0),  # an op that copies nothing
    ],
)
def test_apply_refuses_a_delta_that_does_not_fit(ops: list[tuple[int, int]], literals: bytes, size: int) -> None:
    base = random.Random(4).randbytes(5000)
    with pytest.raises(NeoError) as e:
        subdelta.apply([base], ops, literals, size)
    assert e.value.code == ErrorCode.CHUNK_MISMATCH


def ids(*chunks: bytes) -> bytes:
    return b"".join(chunks)


def test_apply_takes_known_piece_ends_and_ignores_ones_that_do_not_fit() -> None:
    rng = random.Random(3)
    base = rng.randbytes(50_000)
    new = edited(base, rng, 4)
    sig = subdelta.sign(base)
    d = subdelta.diff(new, [sig])
    ends = subdelta.ends_of(sig)
    assert list(ends) == [o + n for o, n in subdelta.cut(base)]
    assert subdelta.apply([base], d.ops, d.literals, len(new), [ends]) == new
    assert subdelta.apply([base], d.ops, d.literals, len(new), [ends[:-1]]) == new  # short of the base: cut
    assert subdelta.apply([base], d.ops, d.literals, len(new), [None]) == new


def test_base_cuts_stay_within_their_bound() -> None:
    cuts = BaseCuts(most_pieces=10)
    cuts.put(b"a", array("I", [1, 2, 3, 4]))
    cuts.put(b"b", array("I", [1, 2, 3, 4]))
    assert cuts.get(b"a") is not None  # now the most recently used
    cuts.put(b"c", array("I", [1, 2, 3, 4]))
    assert cuts.get(b"b") is None and cuts.get(b"a") is not None and cuts.get(b"c") is not None
    cuts.put(b"huge", array("I", range(11)))
    assert cuts.get(b"huge") is None and len(cuts) == 2


def test_base_candidates_pair_a_changed_chunk_with_the_one_it_replaced() -> None:
    a, b, c, d, e = (bytes([i]) * 32 for i in range(5))
    b2, d2, x = (bytes([i]) * 32 for i in range(10, 13))
    got = subdelta.base_candidates(ids(a, b, c, d, e), ids(a, b2, c, d2, e))
    assert got == {1: [b], 3: [d]}
    # an insertion that split a chunk in two: both new chunks may copy from the old one
    got = subdelta.base_candidates(ids(a, b, c), ids(a, b2, x, c))
    assert got == {1: [b], 2: [b]}
    assert subdelta.base_candidates(b"", ids(a)) == {}
    # a whole new file of many chunks: at most MAX_DELTA_BASES each, and bounded work
    old = b"".join(i.to_bytes(32, "big") for i in range(10_000))
    new = b"".join((i + 10**6).to_bytes(32, "big") for i in range(10_000))
    got = subdelta.base_candidates(old, new)
    assert all(len(v) <= limits.MAX_DELTA_BASES for v in got.values())


def test_wire_bounds_are_in_the_decoder() -> None:
    cid = b"i" * 32
    too_many_bases = PutDelta(rid=1, handle=1, deltas=[ChunkDelta(cid, 1, [cid] * 5, [(LIT, 1)], 0, 1, b"x")])
    zero_count = PutDelta(rid=1, handle=1, deltas=[ChunkDelta(cid, 1, [cid], [(0, 0)], 0, 0, b"")])
    oversize = PutDelta(rid=1, handle=1, deltas=[ChunkDelta(cid, limits.MAX_CHUNK + 1, [cid], [], 0, 0, b"")])
    no_base = PutDelta(rid=1, handle=1, deltas=[ChunkDelta(cid, 1, [], [(LIT, 1)], 0, 1, b"x")])
    many_ids = Sign(rid=1, handle=1, ids=[cid] * (limits.MAX_SIGN_IDS + 1))
    for message in (too_many_bases, zero_count, oversize, no_base, many_ids):
        with pytest.raises(msgspec.ValidationError):
            decode(encode(message))


class DeltaSessionTests(SessionTestCase):
    """``sign`` and ``put_delta`` against the real server session over iosim."""

    def setUp(self) -> None:
        super().setUp()
        rng = random.Random(7)
        self.base = rng.randbytes(60_000)
        self.new = edited(self.base, rng, 3)
        self.server, self.client, self.pump = self.ready()
        self.push(self.client, self.pump, {"f": self.base})
        self.base_id = chunk(self.base)[0]
        self.new_id = compute_id(self.new)

    def begin(self) -> int:
        h = self.open_push(self.client, self.pump).handle
        assert isinstance(self.call(self.client, self.pump, PushBegin(rid=0, handle=h)), Ok)
        return h

    def signature(self, h: int) -> subdelta.Signature:
        reply = self.call(self.client, self.pump, Sign(rid=0, handle=h, ids=[self.base_id, b"u" * 32]))
        assert isinstance(reply, Signatures)
        known, unknown = reply.signatures
        assert unknown.lengths == [] and unknown.hashes == b""  # not stored: nothing to sign
        assert sum(known.lengths) == len(self.base)
        return subdelta.Signature(known.lengths, known.hashes)

    def finish(self, h: int, cid: bytes, size: int) -> object:
        entries = [Entry("", "d", 0o755, 0, 0), Entry("f", "f", 0o644, 2, size, cid)]
        self.client.post(PushEntries(rid=0, handle=h, entries=entries))
        return self.call(self.client, self.pump, Commit(rid=0, handle=h))

    def delta(self, h: int, **change: object) -> ChunkDelta:
        d = subdelta.diff(self.new, [self.signature(h)])
        fields = {
            "id": self.new_id, "size": len(self.new), "bases": [self.base_id], "ops": d.ops, "codec": 0,
            "literal_size": len(d.literals), "literals": d.literals,
        }  # fmt: skip
        fields.update(change)
        return ChunkDelta(**fields)  # type: ignore[arg-type]

    def test_a_delta_rebuilds_the_chunk_which_then_reads_back(self) -> None:
        h = self.begin()
        delta = self.delta(h)
        assert len(delta.literals) < len(self.new) / 4
        self.client.post(PutDelta(rid=0, handle=h, deltas=[delta]))
        done = committed(self.finish(h, self.new_id, len(self.new)))
        assert done.new_chunks == 1
        get = Get(rid=0, handle=h, snapshot=done.snapshot, path="f", ids=[self.new_id])
        got = self.call(self.client, self.pump, get)
        assert got.id == self.new_id and got.size == len(self.new)

    def test_a_base_signed_in_this_push_is_not_cut_again_to_rebuild(self) -> None:
        cuts: list[int] = []
        real_cut = subdelta.cut

        def counted(data: bytes | memoryview) -> list[tuple[int, int]]:
            cuts.append(len(data))
            return real_cut(data)

        h = self.begin()
        delta = self.delta(h)  # signs the base
        self.patch(subdelta, "cut", counted)
        self.client.post(PutDelta(rid=0, handle=h, deltas=[delta]))
        done = committed(self.finish(h, self.new_id, len(self.new)))
        assert done.new_chunks == 1
        assert cuts == []  # its boundaries came from the signing

    def test_the_bases_of_a_message_are_looked_up_once(self) -> None:
        """A put_delta of several deltas finds all their bases in one index lookup, not one per delta."""
        h = self.begin()
        sig = self.signature(h)
        rng = random.Random(11)
        news = [edited(self.base, rng, 2) for _ in range(4)]
        deltas = []
        for new in news:
            d = subdelta.diff(new, [sig])
            deltas.append(ChunkDelta(compute_id(new), len(new), [self.base_id], d.ops, 0, len(d.literals),
                                     d.literals))  # fmt: skip
        lookups: list[int] = []
        real_locate = ChunkStore.locate

        def counted(store: ChunkStore, ids: list[bytes]) -> dict[bytes, Location]:
            lookups.append(len(ids))
            return real_locate(store, ids)

        self.patch(ChunkStore, "locate", counted)
        self.client.post(PutDelta(rid=0, handle=h, deltas=deltas))
        entries = [Entry("", "d", 0o755, 0, 0)]
        entries += [Entry(f"f{i}", "f", 0o644, 2, len(new), compute_id(new)) for i, new in enumerate(news)]
        self.client.post(PushEntries(rid=0, handle=h, entries=entries))
        done = committed(self.call(self.client, self.pump, Commit(rid=0, handle=h)))
        assert done.new_chunks == 4
        assert lookups == [1]  # one lookup, of the one base the four share

    def test_a_base_missing_from_a_later_delta_of_the_message_fails_it_whole(self) -> None:
        """The bases of a message are looked up together: one that is not stored, named by its second delta
        only, still refuses the message (missing_chunks) and stores nothing of its first delta either."""
        h0 = self.begin()
        good = self.delta(h0)
        self.call(self.client, self.pump, Abort(rid=0, handle=h0))
        other = edited(self.new, random.Random(12), 1)
        lost = ChunkDelta(compute_id(other), len(other), [b"n" * 32], [(LIT, len(other))], 0, len(other), other)
        self.refused(good, ErrorCode.MISSING_CHUNKS, also=[lost])

    def test_a_base_not_signed_lately_is_cut_to_rebuild(self) -> None:
        h = self.begin()
        delta = self.delta(h)
        CUTS.clear()  # forgotten (as by a restart)
        self.client.post(PutDelta(rid=0, handle=h, deltas=[delta]))
        assert committed(self.finish(h, self.new_id, len(self.new))).new_chunks == 1

    def refused(self, delta: ChunkDelta, code: ErrorCode, also: list[ChunkDelta] | None = None) -> None:
        """``delta`` (in one message with ``also``) is refused with ``code`` (on a connection of its own: the
        error fails that connection's push) and nothing is stored under its id."""
        _server, client, pump = self.ready()
        h = self.open_push(client, pump).handle
        assert isinstance(self.call(client, pump, PushBegin(rid=0, handle=h)), Ok)
        client.post(PutDelta(rid=0, handle=h, deltas=[delta, *(also or [])]))
        client.post(PushEntries(rid=0, handle=h, entries=[Entry("", "d", 0o755, 0, 0)]))
        reply = self.call(client, pump, Commit(rid=0, handle=h))
        assert isinstance(reply, RemoteError) and reply.code == code, reply
        _server, client, pump = self.ready()
        h2 = self.open_push(client, pump).handle
        missing = self.call(client, pump, Have(rid=0, handle=h2, ids=[delta.id]))
        assert isinstance(missing, Missing) and missing.bitmap == b"\x01"

    def test_a_forged_literal_is_refused(self) -> None:
        h0 = self.begin()
        good = self.delta(h0)
        self.call(self.client, self.pump, Abort(rid=0, handle=h0))
        literals = bytes([good.literals[0] ^ 1]) + good.literals[1:]
        self.refused(ChunkDelta(good.id, good.size, good.bases, good.ops, 0, len(literals), literals),
                     ErrorCode.CHUNK_MISMATCH)  # fmt: skip

    def test_a_forged_reference_is_refused(self) -> None:
        h0 = self.begin()
        good = self.delta(h0)
        self.call(self.client, self.pump, Abort(rid=0, handle=h0))
        ops = [(LIT, n) if s == LIT else (s + 1, n) for s, n in good.ops]  # every reference shifted by one
        self.refused(ChunkDelta(good.id, good.size, good.bases, ops, 0, len(good.literals), good.literals),
                     ErrorCode.CHUNK_MISMATCH)  # fmt: skip
        out_of_range = [(10**6, 1)]
        self.refused(ChunkDelta(good.id, good.size, good.bases, out_of_range, 0, 0, b""), ErrorCode.CHUNK_MISMATCH)

    def test_a_delta_claiming_another_chunks_id_is_refused(self) -> None:
        # the bytes rebuild fine, but they are not the chunk the id names: an honest rebuild of a lie
        h0 = self.begin()
        good = self.delta(h0)
        self.call(self.client, self.pump, Abort(rid=0, handle=h0))
        self.refused(ChunkDelta(b"z" * 32, good.size, good.bases, good.ops, 0, len(good.literals), good.literals),
                     ErrorCode.CHUNK_MISMATCH)  # fmt: skip

    def test_an_unknown_base_and_lying_sizes_are_refused(self) -> None:
        lit = b"abc"
        self.refused(ChunkDelta(compute_id(lit), 3, [b"u" * 32], [(LIT, 3)], 0, 3, lit), ErrorCode.MISSING_CHUNKS)
        # literals declared longer than the chunk, or raw literals of another length than declared
        self.refused(ChunkDelta(compute_id(lit), 3, [self.base_id], [(LIT, 3)], 0, 4, lit + b"d"),
                     ErrorCode.CHUNK_MISMATCH)  # fmt: skip
        self.refused(ChunkDelta(compute_id(lit), 3, [self.base_id], [(LIT, 3)], 0, 2, lit), ErrorCode.CHUNK_MISMATCH)
        # a zstd frame that expands past what it declares
        import zstandard

        bomb = zstandard.ZstdCompressor().compress(b"\0" * 100_000)
        self.refused(ChunkDelta(compute_id(lit), 3, [self.base_id], [(LIT, 3)], 1, 3, bomb), ErrorCode.CHUNK_MISMATCH)

    def test_a_message_may_not_rebuild_or_read_more_than_its_bounds(self) -> None:
        # references cost a few bytes each: what they make the server build and read is bounded per message
        big = limits.MAX_CHUNK
        many = [ChunkDelta(bytes([i]) * 32, big, [self.base_id], [(0, 1)], 0, 0, b"") for i in range(3)]
        self.refused(many[0], ErrorCode.LIMIT_EXCEEDED, also=many[1:])
        # bases read: the second delta's base would pass the message's bound (lowered here to one base)
        self.patch(limits, "DELTA_MESSAGE_BASE_BYTES", len(self.base) + 1)
        h = self.begin()
        good = self.delta(h)
        self.call(self.client, self.pump, Abort(rid=0, handle=h))
        pieces = len(subdelta.cut(self.base))
        again = ChunkDelta(self.base_id, len(self.base), [self.base_id], [(0, pieces)], 0, 0, b"")
        self.refused(good, ErrorCode.LIMIT_EXCEEDED, also=[again])

    def test_put_delta_outside_a_push_is_refused(self) -> None:
        h = self.open_push(self.client, self.pump).handle
        lit = b"abc"
        self.client.post(PutDelta(rid=0, handle=h, deltas=[ChunkDelta(compute_id(lit), 3, [self.base_id],
                                                                      [(LIT, 3)], 0, 3, lit)]))  # fmt: skip
        reply = self.call(self.client, self.pump, Sign(rid=0, handle=h, ids=[self.base_id]))
        assert isinstance(reply, RemoteError) and reply.code == ErrorCode.PROTOCOL, reply

    def test_the_welcome_announces_the_feature(self) -> None:
        _server, client, pump = self.connect()
        assert limits.FEATURE_SUBDELTA in self.hello(client, pump).features


class SignBackpressureTests(SessionTestCase):
    """A client that stops reading gets no more signing: ``sign`` waits for its queued replies to drain (as a
    get's read groups do), so small requests cannot make the server queue replies without end."""

    def test_sign_replies_stop_queueing_when_the_client_reads_nothing(self) -> None:
        window = limits.MIN_WINDOW  # the smallest window a client may announce: fewer requests fill it
        server, client, pump = self.ready(window=window)
        base = random.Random(1).randbytes(1 << 20)
        self.push(client, pump, {"f": base})
        cid = chunk(base)[0]
        h = self.open_push(client, pump).handle
        assert isinstance(self.call(client, pump, PushBegin(rid=0, handle=h)), Ok)
        client._conn.flush_credit = lambda: None  # the client returns no more credit: it reads nothing
        queued = []
        for _ in range(40):  # each ~1.1 KiB: 32 MiB read, a ~650 KiB reply (26 of them fill both windows)
            client.request(Sign(rid=0, handle=h, ids=[cid] * 32))
            pump.flush()
            queued.append(server.queued_bytes)
        assert queued[-1] == queued[-8], queued[-8:]  # no growth once the window is spent
        assert queued[-1] < window + 1024 * 1024, (queued[-1], window)  # at most a window and one reply
