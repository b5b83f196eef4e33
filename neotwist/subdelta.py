"""Deltas inside a chunk: send only the bytes of a changed chunk that its previous version lacks (sans-IO).

A chunk is 8-256 KiB; a 100-byte edit changes one (or two) of them, and sending the changed chunk whole costs
a hundred times the edit. As rsync does for blocks, the side that holds the previous version (the server)
cuts it into small content-defined *sub-pieces* (FastCDC with :data:`SUB_MIN`/:data:`SUB_AVG`/:data:`SUB_MAX`)
and describes each by its length and a truncated BLAKE3 (:func:`sign`); the side that holds the new version (the
client) cuts it the same way and says, piece by piece, "the base's pieces i..j" or "these literal bytes"
(:func:`diff`). Content-defined cuts re-synchronize a few hundred bytes after an edit, so only about one
sub-piece per edit travels. The receiver rebuilds the chunk (:func:`apply`), bounded by the declared size,
and must then check the whole chunk's id: a truncated hash may collide, a peer may lie, so a delta is only
ever a proposal.

Everything here is a pure function of bytes: the client's push and the server's handler are the thin layers
around it. The sub-chunker's sizes are part of the protocol (both sides must cut alike), announced by the
``subdelta`` feature.
"""

from __future__ import annotations

import bisect
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import blake3
import pyfastcdc

from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, NeoError

SUB_MIN = limits.SUB_MIN
SUB_AVG = limits.SUB_AVG
SUB_MAX = limits.SUB_MAX
HASH_SIZE = limits.SUB_HASH
"""Bytes of a sub-piece's BLAKE3 in a signature (with its length: a false match needs a 64-bit collision, and
the rebuilt chunk's full id is checked anyway)."""
LITERAL = limits.DELTA_LITERAL
"""The ``start`` of a delta op that copies ``count`` literal bytes (any other start is a sub-piece index)."""

_local = threading.local()


def _cdc() -> pyfastcdc.FastCDC:
    """The sub-chunker of this thread (pyfastcdc objects are not shareable); same normalization as chunking."""
    cdc: pyfastcdc.FastCDC | None = getattr(_local, "cdc", None)
    if cdc is None:
        cdc = _local.cdc = pyfastcdc.FastCDC(SUB_AVG - SUB_MIN, min_size=SUB_MIN, max_size=SUB_MAX)
    return cdc


def cut(data: bytes | memoryview) -> list[tuple[int, int]]:
    """(offset, length) of each sub-piece of ``data``, in order."""
    if not data:
        return []
    return [(c.offset, c.length) for c in _cdc().cut_buf(data)]


@dataclass(frozen=True, slots=True)
class Signature:
    """What the receiver of a delta tells about one base chunk: its sub-pieces' lengths and truncated hashes
    (``HASH_SIZE`` bytes each, concatenated). Empty: the base cannot serve (unknown, unreadable, sealed)."""

    lengths: Sequence[int]
    hashes: bytes

    @property
    def size(self) -> int:
        return sum(self.lengths)


def piece_hash(data: bytes | memoryview) -> bytes:
    return blake3.blake3(data).digest(HASH_SIZE)


def sign(data: bytes | memoryview) -> Signature:
    """The signature of one base chunk's plaintext."""
    view = memoryview(data)
    pieces = cut(view)
    return Signature([n for _o, n in pieces], b"".join(piece_hash(view[o : o + n]) for o, n in pieces))


def ends_of(sig: Signature) -> array[int]:
    """The end offset of each sub-piece a signature describes: what :func:`apply` needs of a base, so a base
    signed once need not be cut again to rebuild from it."""
    out = array("I", sig.lengths)
    total = 0
    for i, n in enumerate(out):
        total += n
        out[i] = total
    return out


@dataclass(frozen=True, slots=True)
class Delta:
    """How to rebuild a chunk from base sub-pieces: ``ops`` are (start, count) pairs, start < LITERAL copying
    the ``count`` sub-pieces from index ``start`` (indices run over the bases' pieces in order), start ==
    LITERAL copying the next ``count`` bytes of ``literals``."""

    ops: list[tuple[int, int]]
    literals: bytes

    @property
    def copied(self) -> int:
        return sum(1 for s, _n in self.ops if s != LITERAL)


def diff(new: bytes | memoryview, bases: Sequence[Signature]) -> Delta:
    """The delta that rebuilds ``new`` from the bases described by ``bases``: each sub-piece of ``new`` whose
    (length, hash) one of theirs has is a reference, the rest literal bytes; consecutive ones merged."""
    known: dict[tuple[int, bytes], int] = {}
    index = 0
    for sig in bases:
        hashes = sig.hashes
        for i, length in enumerate(sig.lengths):
            known.setdefault((length, hashes[i * HASH_SIZE : (i + 1) * HASH_SIZE]), index + i)
        index += len(sig.lengths)
    view = memoryview(new)
    ops: list[tuple[int, int]] = []
    literal: list[memoryview] = []
    for offset, length in cut(view):
        piece = view[offset : offset + length]
        ref = known.get((length, piece_hash(piece)))
        last = ops[-1] if ops else None
        if ref is None:
            literal.append(piece)
            if last is not None and last[0] == LITERAL:
                ops[-1] = (LITERAL, last[1] + length)
            else:
                ops.append((LITERAL, length))
        elif last is not None and last[0] != LITERAL and last[0] + last[1] == ref:
            ops[-1] = (last[0], last[1] + 1)
        else:
            ops.append((ref, 1))
    return Delta(ops, b"".join(literal))


def apply(
    bases: Sequence[bytes],
    ops: Sequence[tuple[int, int]],
    literals: bytes,
    size: int,
    known_ends: Sequence[Sequence[int] | None] = (),
) -> bytes:
    """Rebuild a chunk of exactly ``size`` bytes from the plaintexts of its ``bases``, ``ops`` and the
    (decompressed) ``literals``, all consumed; NeoError(CHUNK_MISMATCH) for a delta that does not fit (an index
    out of range, more bytes than declared, literals left over or missing). Never builds more than ``size``
    bytes. The caller must still check the result's id.

    ``known_ends``: per base, its pieces' end offsets when known already (:func:`ends_of` its signature), so
    that base is not cut again; None or missing: it is cut here. Ends that do not fit a base's length are
    ignored (the base is cut), and wrong ones could only rebuild bytes whose id the caller's check refuses.

    A run of pieces within one base is one contiguous slice of it: the work is per op, not per piece."""
    ends: list[Sequence[int]] = []  # per base: the end offset of each of its pieces
    firsts: list[int] = []  # per base: the global index of its first piece
    total = 0
    for i, data in enumerate(bases):
        firsts.append(total)
        known = known_ends[i] if i < len(known_ends) else None
        if known is not None and len(known) and known[-1] == len(data):
            base_ends: Sequence[int] = known
        else:
            base_ends = [o + n for o, n in cut(data)]
        ends.append(base_ends)
        total += len(base_ends)
    out = bytearray()
    lit = memoryview(literals)
    used = 0
    for start, count in ops:
        if count < 1:
            raise NeoError(ErrorCode.CHUNK_MISMATCH, "a delta op copies nothing")
        if start == LITERAL:
            if used + count > len(lit) or len(out) + count > size:
                raise NeoError(ErrorCode.CHUNK_MISMATCH, "a delta's literal runs past its literals or its size")
            out += lit[used : used + count]
            used += count
            continue
        if start + count > total:
            raise NeoError(ErrorCode.CHUNK_MISMATCH, "a delta refers to a sub-piece its bases do not have")
        while count:
            b = bisect.bisect_right(firsts, start) - 1
            local = start - firsts[b]
            take = min(count, len(ends[b]) - local)  # >= 1: the last base starting at or before ``start``
            lo = ends[b][local - 1] if local else 0
            hi = ends[b][local + take - 1]
            if len(out) + hi - lo > size:
                raise NeoError(ErrorCode.CHUNK_MISMATCH, "a delta rebuilds more bytes than its chunk's size")
            out += memoryview(bases[b])[lo:hi]
            start += take
            count -= take
    if len(out) != size or used != len(lit):
        raise NeoError(ErrorCode.CHUNK_MISMATCH, f"a delta rebuilds {len(out)} bytes, declared {size}")
    return bytes(out)


def base_candidates(old_ids: bytes, new_ids: bytes, most: int = limits.MAX_DELTA_BASES) -> dict[int, list[bytes]]:
    """For each chunk of the new version of a file (ids concatenated, ``ID_SIZE`` each) that its old version
    lacks, the old chunks it most likely grew from: those between the same unchanged neighbours (anchors), at
    most ``most``, the ones at the same relative place first. O(chunks): no sequence alignment, as a file of
    millions of chunks must not cost quadratic time; a wrong guess only costs a bigger delta."""
    size = limits.ID_SIZE
    old = [old_ids[i : i + size] for i in range(0, len(old_ids), size)]
    new = [new_ids[i : i + size] for i in range(0, len(new_ids), size)]
    if not old or not new:
        return {}
    where: dict[bytes, int] = {}
    for i, cid in enumerate(old):
        where.setdefault(cid, i)
    new_set = set(new)
    out: dict[int, list[bytes]] = {}
    i = 0
    prev_old = -1  # the old position of the last anchor
    while i < len(new):
        if new[i] in where:
            prev_old = max(prev_old, where[new[i]])
            i += 1
            continue
        j = i
        while j < len(new) and new[j] not in where:
            j += 1
        next_old = where[new[j]] if j < len(new) else len(old)
        if next_old <= prev_old:  # moved blocks: fall back to the same relative place
            next_old = len(old)
        run = j - i
        # old chunks between the anchors (at most a few more than the run: bounded work per run)
        stop = min(next_old, prev_old + 1 + run + 2 * most)
        gap = [k for k in range(prev_old + 1, stop) if old[k] not in new_set]
        for t in range(run):
            if not gap:
                break
            centre = (t * len(gap)) // run
            lo = max(0, min(centre - most // 2, len(gap) - most))
            out[i + t] = [old[k] for k in gap[lo : lo + most]]
        i = j
    return out
