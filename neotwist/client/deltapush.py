"""The push's side of deltas inside a chunk (:mod:`neotwist.subdelta`): which changed chunks may travel as a
delta against which stored chunks, their bases' signatures, and the deltas themselves.

A changed file's previous chunk ids come from the files cache; :func:`neotwist.subdelta.base_candidates` pairs
each new chunk with the old ones between the same unchanged neighbours. Once ``have`` has said which chunks the
server lacks, the bases of those are asked about in ``sign`` requests, one compression job (about 4 MiB of
chunks) at a time, a few jobs ahead of the sending (one request per MAX_SIGN_IDS bases, all in flight at once):
no round trip per chunk, the signing overlapped with the compressing and sending of earlier jobs, and the
signatures held bounded by the jobs ahead, even for a file of gigabytes rewritten everywhere. A worker then
cuts each new chunk into sub-pieces and sends it as a delta when that is smaller than the whole chunk would be
(:func:`make_delta`). Only plaintext targets, and only servers listing the ``subdelta`` feature: otherwise
chunks travel whole, as before.
"""

from __future__ import annotations

from array import array
from collections.abc import Container
from typing import Literal

import zstandard
from twisted.internet.defer import Deferred, ensureDeferred

from neotwist import subdelta
from neotwist.client.gather import gather
from neotwist.codec import MIN_SAVING
from neotwist.subdelta import Signature
from neotwist.wire import limits
from neotwist.wire.messages import ChunkDelta, PutDelta, Sign, Signatures
from neotwist.wire.peer import Peer

Plan = tuple[list[bytes], list[Signature]]
"""A chunk's bases and their signatures, in order."""

MESSAGE_BYTES = 1024 * 1024
"""Approximate bytes of deltas per ``put_delta`` message."""

OP_BYTES = 10
"""Wire bytes of one delta op, at most (a msgpack pair of integers)."""

WORTH = 0.8
"""A delta is sent only when it is at most this fraction of the whole chunk as it would be put."""


class DeltaPlanner:
    """The bases of the changed chunks of one push, asked about with ``sign`` once the chunks are known to be
    missing (reactor thread, but for :meth:`note`, which touches only its own dict under the GIL)."""

    def __init__(self, peer: Peer, handle: int) -> None:
        self.peer = peer
        self.handle = handle
        self.bases: dict[bytes, list[bytes]] = {}

    @staticmethod
    def usable(peer: Peer, encrypted: bool) -> bool:
        return not encrypted and limits.FEATURE_SUBDELTA in getattr(peer, "features", ())

    def note(self, old_ids: bytes | None, new_ids: bytes, seen: Container[bytes]) -> None:
        """Remember the likely bases of the chunks of a file's new version (``new_ids``) that its previous one
        (``old_ids``, from the files cache) lacks, but for those this push has ``seen`` already (they are not
        sent again, so their bases would never be taken)."""
        if not old_ids or old_ids == new_ids:
            return
        size = limits.ID_SIZE
        for i, bases in subdelta.base_candidates(old_ids, new_ids).items():
            cid = new_ids[i * size : (i + 1) * size]
            if cid not in seen:
                self.bases.setdefault(cid, bases)

    def forget(self, ids: list[bytes]) -> None:
        """Drop the bases of ``ids`` (chunks the server has: they are not sent)."""
        for cid in ids:
            self.bases.pop(cid, None)

    def ahead(self, ids: list[bytes]) -> Deferred[dict[bytes, Plan]] | None:
        """Ask now, before ``have`` has answered, for the signatures of the bases of those of ``ids`` (the first
        compression job of a batch, were the server to lack all its chunks) that have some, and return the
        answer to come (None if none has bases): a changed chunk is nearly always missing, and the ``sign``
        round trip then overlaps the ``have`` one instead of following it. A chunk the server turns out to have
        costs the signing of its bases (at most one job's). Pass the answer to :meth:`plans` for the batch's
        first job (which holds every missing chunk of ``ids``), or to :func:`drop` when no job will."""
        if not any(cid in self.bases for cid in ids):
            return None
        return ensureDeferred(self._ask(ids))

    async def plans(
        self, sending: list[bytes], early: Deferred[dict[bytes, Plan]] | None = None
    ) -> dict[bytes, Plan]:
        """Plans for the chunks of ``sending`` that have bases (forgotten now): their bases' signatures, for
        those the server could sign; ``early``: what :meth:`ahead` asked already."""
        out: dict[bytes, Plan] = {}
        if early is not None:
            wanted = set(sending)
            out = {cid: plan for cid, plan in (await early).items() if cid in wanted}
        if any(cid in self.bases for cid in sending):
            out.update(await self._ask(sending))
        return out

    async def _ask(self, sending: list[bytes]) -> dict[bytes, Plan]:
        """``sign`` the bases of the chunks of ``sending`` that have bases (forgotten now)."""
        wanted: dict[bytes, list[bytes]] = {}
        for cid in sending:
            bases = self.bases.pop(cid, None)
            if bases is not None:
                wanted[cid] = bases
        if not wanted:
            return {}
        ids = list(dict.fromkeys(b for bases in wanted.values() for b in bases))
        step = limits.MAX_SIGN_IDS
        requests = [
            self.peer.request(Sign(rid=0, handle=self.handle, ids=ids[i : i + step])) for i in range(0, len(ids), step)
        ]
        replies = await gather(requests)
        sigs: dict[bytes, Signature] = {}
        for n, reply in enumerate(replies):
            if not isinstance(reply, Signatures):
                continue
            for base, sig in zip(ids[n * step : (n + 1) * step], reply.signatures, strict=False):
                if sig.lengths and len(sig.hashes) == len(sig.lengths) * subdelta.HASH_SIZE:
                    sigs[base] = Signature(array("I", sig.lengths), sig.hashes)  # 4 bytes a piece, not 36
        out: dict[bytes, Plan] = {}
        for cid, bases in wanted.items():
            known = [b for b in bases if b in sigs]
            if known and sum(sigs[b].size for b in known) <= limits.DELTA_BASE_BYTES:
                out[cid] = (known, [sigs[b] for b in known])
        return out


def drop(early: Deferred[dict[bytes, Plan]] | None) -> None:
    """Forget signatures asked :meth:`DeltaPlanner.ahead` that no job takes (and their failure, if they fail)."""
    if early is not None:
        early.addErrback(lambda _f: None)


def make_delta(cid: bytes, raw: bytes, plan: Plan, whole: int, comp: zstandard.ZstdCompressor) -> ChunkDelta | None:
    """``raw`` (the plaintext of chunk ``cid``) as a delta against ``plan``'s bases, or None when that would not
    save enough over the ``whole`` bytes the chunk would be put as (worker thread)."""
    bases, sigs = plan
    delta = subdelta.diff(raw, sigs)
    if not delta.copied or len(delta.ops) > limits.MAX_DELTA_OPS:
        return None
    literals = delta.literals
    codec: Literal[0, 1] = 0  # CODEC_RAW
    payload = literals
    if literals:
        packed = comp.compress(literals)
        if len(packed) <= len(literals) * (1 - MIN_SAVING):
            codec, payload = 1, packed  # CODEC_ZSTD
    cost = len(payload) + OP_BYTES * len(delta.ops) + limits.ID_SIZE * (len(bases) + 1) + 16
    if cost > whole * WORTH:
        return None
    return ChunkDelta(cid, len(raw), bases, delta.ops, codec, len(literals), payload)


Made = tuple[ChunkDelta, int, int]
"""A delta made by a worker: (the delta, its chunk's raw size, its bases' raw size together)."""


def delta_messages(handle: int, deltas: list[Made]) -> list[PutDelta]:
    """``deltas`` in ``put_delta`` messages of at most MAX_DELTAS deltas and about MESSAGE_BYTES each, whose
    chunks and bases stay within DELTA_MESSAGE_SIZE and DELTA_MESSAGE_BASE_BYTES."""
    out: list[PutDelta] = []
    part: list[ChunkDelta] = []
    size = rebuilt = read = 0
    for d, raw, bases in deltas:
        one = len(d.literals) + OP_BYTES * len(d.ops) + limits.ID_SIZE * (len(d.bases) + 1) + 16
        if part and (
            len(part) >= limits.MAX_DELTAS
            or size + one > MESSAGE_BYTES
            or rebuilt + raw > limits.DELTA_MESSAGE_SIZE
            or read + bases > limits.DELTA_MESSAGE_BASE_BYTES
        ):
            out.append(PutDelta(rid=0, handle=handle, deltas=part))
            part, size, rebuilt, read = [], 0, 0, 0
        part.append(d)
        size += one
        rebuilt += raw
        read += bases
    if part:
        out.append(PutDelta(rid=0, handle=handle, deltas=part))
    return out
