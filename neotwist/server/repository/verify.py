"""Checking an uploaded chunk against its id before it is stored.

A plaintext target never stores a chunk whose bytes do not hash to its name: a buggy or hostile client cannot
poison deduplication for later pushes. Decompression is bounded by the declared size (itself bounded by
``limits.MAX_CHUNK``), so a small zstd frame cannot expand into gigabytes in the server's memory.

Encrypted targets hold sealed chunks keyed by an HMAC-like id the server cannot recompute; they are stored as
received, and the client checks them when it opens them.
"""

from __future__ import annotations

import hmac
import threading

import blake3
import zstandard

from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, NeoError
from neotwist.wire.messages import CODEC_RAW, CODEC_SEALED, CODEC_ZSTD

_local = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    """One decompressor per thread: they are not thread-safe and cost a little to create."""
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def check_bounds(chunk_id: bytes, codec: int, size: int, data: bytes) -> None:
    """Refuse ids, codecs and lengths out of the protocol's bounds (the wire decoder checks them too, but
    the repository may be called by other code)."""
    if len(chunk_id) != limits.ID_SIZE:
        raise NeoError(ErrorCode.BAD_MESSAGE, f"chunk id must be {limits.ID_SIZE} bytes")
    if codec not in (CODEC_RAW, CODEC_ZSTD, CODEC_SEALED):
        raise NeoError(ErrorCode.BAD_MESSAGE, f"unknown chunk codec {codec}")
    if not 0 <= size <= limits.MAX_CHUNK or len(data) > limits.MAX_CHUNK:
        raise NeoError(ErrorCode.LIMIT_EXCEEDED, f"chunk larger than {limits.MAX_CHUNK} bytes")


def raw_bytes(codec: int, size: int, data: bytes) -> bytes:
    """The plaintext of a raw or zstd chunk, exactly ``size`` bytes, or NeoError(CHUNK_MISMATCH).

    A zstd chunk must be one frame with nothing after it. If the frame header declares a content size it must
    equal ``size`` (python-zstandard allocates what the header declares, ignoring ``max_output_size``);
    otherwise the output buffer is ``max_output_size`` bytes and a longer frame fails to decompress.
    """
    if codec == CODEC_RAW:
        if len(data) != size:
            raise NeoError(ErrorCode.CHUNK_MISMATCH, f"raw chunk is {len(data)} bytes, declared {size}")
        return data
    try:
        declared = zstandard.get_frame_parameters(data).content_size
        if declared != zstandard.CONTENTSIZE_UNKNOWN and declared != size:
            raise NeoError(
                ErrorCode.CHUNK_MISMATCH, f"zstd frame declares {declared} bytes, put declared {size}"
            )
        # max_output_size=0 would mean "unbounded": an empty chunk still gets a one-byte bound.
        raw = _decompressor().decompress(data, max_output_size=max(size, 1), allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise NeoError(ErrorCode.CHUNK_MISMATCH, f"chunk does not decompress within its size: {e}") from None
    if len(raw) != size:
        raise NeoError(ErrorCode.CHUNK_MISMATCH, f"chunk decompresses to {len(raw)} bytes, declared {size}")
    return raw


def verify_chunk(chunk_id: bytes, codec: int, size: int, data: bytes, *, encrypted: bool) -> None:
    """Raise NeoError unless the chunk may be stored in a target of this kind under this id."""
    check_bounds(chunk_id, codec, size, data)
    if encrypted:
        if codec != CODEC_SEALED:
            raise NeoError(ErrorCode.ENCRYPTION_MISMATCH, "an encrypted target only stores sealed chunks")
        return
    if codec == CODEC_SEALED:
        raise NeoError(ErrorCode.ENCRYPTION_MISMATCH, "a plaintext target does not store sealed chunks")
    digest = blake3.blake3(raw_bytes(codec, size, data)).digest()
    if not hmac.compare_digest(digest, chunk_id):
        raise NeoError(ErrorCode.CHUNK_MISMATCH, f"chunk data does not hash to {chunk_id.hex()}")
