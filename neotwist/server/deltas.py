"""Where deltas inside a chunk are handled: ``sign`` and ``put_delta`` (see :mod:`neotwist.subdelta`).

``sign`` reads base chunks the client names, cuts their plaintext into sub-pieces and answers their lengths and
truncated hashes; ``put_delta`` rebuilds new chunks from base sub-pieces and literal bytes and stores them as
``put`` would, but only once the rebuilt bytes hash to the chunk's id (constant-time comparison): a forged or
colliding delta is refused with ``chunk_mismatch`` and nothing of it is stored.

Only plaintext targets and handles on a whole target take part: the server cannot read a sealed chunk, and a
signature would tell a handle confined to a grant something of chunks outside it. Everything is bounded by
the limits of :mod:`neotwist.wire.limits` (bases per delta and their bytes, ops, bases read per ``sign``,
pieces per reply), and the bytes a ``put_delta`` makes the server hold are taken from the connection's memory
budget, as a put batch's are.
"""

from __future__ import annotations

import threading
from typing import Any

import zstandard
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from neotwist import subdelta
from neotwist.codec import PLAIN, CodecError, compute_id, raw_bytes, same_id
from neotwist.server.basecuts import CUTS
from neotwist.server.context import Handle, RequestContext
from neotwist.server.pushes import _upload_failed
from neotwist.server.repository import Location, Target
from neotwist.server.repository.errors import RepositoryError
from neotwist.server.rights import Right
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, NeoError
from neotwist.wire.messages import CODEC_RAW, ChunkDelta, PieceSignature, PutDelta, Sign, Signatures
from neotwist.wire.peer import Peer

log = Logger()

STORE_LEVEL = 1
"""zstd level of the chunks the server rebuilds: the level neo-push puts chunks at by default, so a chunk stores
the same whichever way it came."""

_EMPTY = PieceSignature([], b"")
_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    comp: zstandard.ZstdCompressor | None = getattr(_local, "zstd", None)
    if comp is None:
        comp = _local.zstd = zstandard.ZstdCompressor(level=STORE_LEVEL)
    return comp


def _may_delta(handle: Handle) -> bool:
    return not handle.target.meta.encrypted and not handle.access.confined


def sign_bases(target: Target, ids: list[bytes]) -> list[PieceSignature]:
    """The signatures of ``ids`` (blocking): empty for a base not stored, unreadable, or past the request's read
    (SIGN_READ_BYTES) or reply (MAX_SIGN_PIECES) bound."""
    out: list[PieceSignature] = []
    read = pieces = 0
    locations = target.locate(list(set(ids)))
    for cid in ids:
        loc = locations.get(cid)
        if loc is None or read + loc[4] > limits.SIGN_READ_BYTES or pieces >= limits.MAX_SIGN_PIECES:
            out.append(_EMPTY)
            continue
        read += loc[4]
        try:
            codec, size, data = target.read_located(cid, loc)
            plain = raw_bytes(codec, size, data)
        except (NeoError, CodecError, RepositoryError) as e:  # damaged, unreadable: it cannot serve, that is all
            log.debug("sign: base {cid} cannot serve: {why}", cid=cid.hex(), why=str(e))
            out.append(_EMPTY)
            continue
        sig = subdelta.sign(plain)
        if pieces + len(sig.lengths) > limits.MAX_SIGN_PIECES:
            out.append(_EMPTY)
            continue
        pieces += len(sig.lengths)
        CUTS.put(cid, subdelta.ends_of(sig))  # put_delta rebuilds from it soon: no second cut
        out.append(PieceSignature(list(sig.lengths), sig.hashes))
    return out


def _sign(handle: Handle, ids: list[bytes]) -> list[PieceSignature]:
    """The job of a ``sign`` (blocking, after its access was checked again): empty signatures where the server
    may not or cannot tell anything of the bases."""
    if not _may_delta(handle):
        return [_EMPTY] * len(ids)
    return sign_bases(handle.target, ids)


SIGN_HOLD = 4 * limits.MAX_CHUNK
"""What one ``sign`` job is charged to the connection's memory budget until its reply has left: a base's stored
and plain bytes (MAX_CHUNK each, one base at a time), the reply's piece lengths and hashes (up to MAX_SIGN_PIECES,
about 6 MiB as Python objects) and the encoded reply (about 1.3 MiB)."""


def on_sign(ctx: RequestContext, peer: Peer, message: Sign) -> Deferred[None]:
    handle = ctx.push_handle(message.handle)
    budget = ctx.memory

    def answer(sigs: list[PieceSignature]) -> Deferred[None]:
        peer.send(Signatures(rid=message.rid, signatures=sigs))
        return peer.drain()  # the bytes stay charged until the client has taken the reply

    def job() -> Deferred[None]:
        d: Deferred[Any] = ctx.run_for(handle, Right.APPEND, "push", _sign, handle, message.ids)
        d.addCallback(answer)
        return d.addBoth(give_back)

    def give_back(result: object) -> object:
        budget.release(SIGN_HOLD)
        return result

    # A client that stops reading gets no more signing: the replies already queued must drain first (as a get's
    # read groups wait), then the bytes, then a job slot, as put batches take them (a job holding a slot never
    # waits for bytes that jobs waiting for a slot hold).
    d = peer.drain()
    d.addCallback(lambda _: budget.acquire(SIGN_HOLD))
    return d.addCallback(lambda _: ctx.admit(message, job))


def rebuild(
    target: Target, delta: ChunkDelta, locations: dict[bytes, Location], read_before: int = 0
) -> tuple[bytes, int]:
    """The plaintext ``delta`` rebuilds, checked against its id, and the base bytes it read (blocking);
    NeoError otherwise. ``locations``: where its bases are (:meth:`Target.locate`, asked once for every delta of
    a message); ``read_before``: base bytes the same message read already."""
    total = 0
    for cid in delta.bases:
        loc = locations.get(cid)
        if loc is None:
            raise NeoError(ErrorCode.MISSING_CHUNKS, f"delta base {cid.hex()} is not stored")
        total += loc[4]
    if total > limits.DELTA_BASE_BYTES:
        raise NeoError(ErrorCode.LIMIT_EXCEEDED, f"a delta's bases hold over {limits.DELTA_BASE_BYTES} bytes")
    if read_before + total > limits.DELTA_MESSAGE_BASE_BYTES:
        raise NeoError(
            ErrorCode.LIMIT_EXCEEDED, f"a put_delta's bases hold over {limits.DELTA_MESSAGE_BASE_BYTES} bytes"
        )
    bases = []
    for cid in delta.bases:
        codec, size, data = target.read_located(cid, locations[cid])
        bases.append(raw_bytes(codec, size, data))
    literals = raw_bytes(delta.codec, delta.literal_size, delta.literals)
    plain = subdelta.apply(bases, delta.ops, literals, delta.size, [CUTS.get(cid) for cid in delta.bases])
    if not same_id(compute_id(plain), delta.id):
        raise NeoError(ErrorCode.CHUNK_MISMATCH, f"delta does not rebuild chunk {delta.id.hex()}")
    return plain, total


def store_deltas(ctx: RequestContext, handle: Handle, charge: Any, deltas: list[ChunkDelta]) -> None:
    """Rebuild, verify and store the chunks of one ``put_delta`` (blocking, after its access was checked
    again): all of them or none."""
    if handle.target.meta.encrypted:
        raise NeoError(ErrorCode.ENCRYPTION_MISMATCH, "an encrypted target takes no deltas (it cannot read them)")
    if handle.access.confined:
        raise NeoError(ErrorCode.PERMISSION_DENIED, "a push confined to a grant sends chunks whole")
    target = handle.target
    comp = _compressor()
    chunks = []
    read = 0
    # one index query for the bases of every delta (one per delta was a fifth of a release update's rebuilding)
    locations = target.locate(list({cid for delta in deltas for cid in delta.bases}))
    for delta in deltas:
        plain, bases = rebuild(target, delta, locations, read)
        read += bases
        codec, size, payload = PLAIN.encode(delta.id, plain, comp)
        chunks.append((delta.id, codec, size, payload))
    ctx.services.quota.store(target, chunks, charge)


def on_put_delta(ctx: RequestContext, peer: Peer, message: PutDelta) -> Deferred[None]:
    handle = ctx.push_handle(message.handle)
    run = handle.pushes.active("put_delta", "chunks are uploaded within a push")
    if sum(d.size for d in message.deltas) > limits.DELTA_MESSAGE_SIZE:
        raise NeoError(ErrorCode.LIMIT_EXCEEDED, f"a put_delta rebuilds over {limits.DELTA_MESSAGE_SIZE} bytes")
    for delta in message.deltas:
        if delta.literal_size > delta.size or (delta.codec == CODEC_RAW and len(delta.literals) != delta.literal_size):
            raise NeoError(ErrorCode.CHUNK_MISMATCH, "a delta's literals do not fit its size")
    # What rebuilding holds at once: the message's literals, every rebuilt chunk until stored (at most
    # DELTA_MESSAGE_SIZE), and one delta's bases, decoded literals and plaintext.
    deltas = message.deltas
    hold = (
        sum(len(d.literals) + d.size for d in deltas)
        + max(d.literal_size + d.size for d in deltas)
        + limits.DELTA_BASE_BYTES
    )
    budget = ctx.memory

    def store() -> Deferred[None]:
        d: Deferred[Any] = ctx.run_for(handle, Right.APPEND, "push", store_deltas, ctx, handle, run.charge, deltas)
        d.addErrback(_upload_failed, run)
        return d.addBoth(give_back)

    def give_back(result: object) -> object:
        budget.release(hold)
        return result

    # The bytes first, then a job slot, as put batches take them (see on_sign).
    return budget.acquire(hold).addCallback(lambda _: ctx.admit(message, store, handle))


HANDLERS: dict[type, Any] = {Sign: on_sign, PutDelta: on_put_delta}
"""The delta requests, merged into the session's dispatch table."""
