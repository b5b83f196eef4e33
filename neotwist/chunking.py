"""Content-defined chunking and chunk ids.

Files are cut with FastCDC 2020 (pyfastcdc, Cython, releases the GIL so several files chunk in parallel) and each
chunk is named by its BLAKE3 digest, keyed for encrypted targets so the server never sees plaintext hashes.
Boundaries depend only on content, so an insertion shifts at most a chunk or two and the rest dedups.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyfastcdc

from neotwist.codec import compute_id
from neotwist.wire.messages import ChunkerParams

DEFAULT_PARAMS = ChunkerParams(algorithm="fastcdc2020", min_size=8 * 1024, avg_size=32 * 1024, max_size=256 * 1024)
"""Default for new targets: 32 KiB average, rsync-like granularity for deltas, a small index for big trees."""


@dataclass(frozen=True, slots=True)
class Piece:
    """One chunk of a file: where it is and what it is called."""

    offset: int
    length: int
    id: bytes


class Chunker:
    """Cuts bytes into chunks and names them. One instance per thread (pyfastcdc objects are not shareable)."""

    def __init__(self, params: ChunkerParams, id_key: bytes | None = None) -> None:
        self.params = params
        self._id_key = id_key
        self._cdc = pyfastcdc.FastCDC(
            params.avg_size - params.min_size if params.avg_size > params.min_size else params.avg_size,
            min_size=params.min_size,
            max_size=params.max_size,
            seed=params.seed,
        )

    @property
    def id_key(self) -> bytes | None:
        return self._id_key

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        """BLAKE3 of the chunk's plaintext (keyed with the target's id key when encrypted)."""
        return compute_id(data, self._id_key)

    def cut_file(self, path: str) -> Iterator[tuple[Piece, memoryview]]:
        """Chunks of the file at ``path`` with their data (a view into an mmap: copy before keeping it)."""
        for chunk in self._cdc.cut_file(path):
            yield Piece(chunk.offset, chunk.length, self.chunk_id(chunk.data)), chunk.data

    def cut_bytes(self, data: bytes | memoryview) -> Iterator[tuple[Piece, memoryview]]:
        for chunk in self._cdc.cut_buf(data):
            yield Piece(chunk.offset, chunk.length, self.chunk_id(chunk.data)), chunk.data
