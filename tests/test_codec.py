"""The chunk codec that push, the server and pull all use: what one side encodes the others accept, and every
way a chunk can be wrong is refused with its code."""

from __future__ import annotations

import os
import random

import blake3
import pytest
import zstandard
from repo_support import as_sent

from neotwist.codec import PLAIN, ChunkCodec, CodecError, compute_id, raw_bytes, same_id, verify_upload
from neotwist.crypto.chunks import ChunkSealer
from neotwist.crypto.keys import MasterKey
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode
from neotwist.wire.messages import CODEC_RAW, CODEC_SEALED, CODEC_ZSTD

COMP = zstandard.ZstdCompressor(level=3)
TEXT = b"the same words, again and again " * 1000
NOISE = random.Random(1).randbytes(32_000)


def sealed() -> ChunkCodec:
    return ChunkCodec(ChunkSealer(MasterKey(os.urandom(32)).new_target()[1]))


@pytest.mark.parametrize(("raw", "codec"), [(TEXT, CODEC_ZSTD), (NOISE, CODEC_RAW), (b"", CODEC_RAW)])
def test_plaintext_chunks_go_zstd_only_when_it_saves_and_the_server_and_pull_accept_them(
    raw: bytes, codec: int
) -> None:
    cid = PLAIN.chunk_id(raw)
    assert cid == blake3.blake3(raw).digest() == compute_id(raw)
    got_codec, size, payload = PLAIN.encode(cid, raw, COMP)
    assert (got_codec, size) == (codec, len(raw))
    verify_upload(cid, got_codec, size, payload, encrypted=False)  # the server's check
    assert PLAIN.decode(cid, got_codec, size, payload) == raw  # pull's


def test_sealed_chunks_round_trip_with_keyed_ids_that_the_server_cannot_recompute() -> None:
    codec = sealed()
    for raw in (TEXT, NOISE):
        cid = codec.chunk_id(raw)
        assert cid != blake3.blake3(raw).digest() and codec.matches(raw, cid)
        kind, size, record = codec.encode(cid, raw, COMP)
        assert kind == CODEC_SEALED and size == len(record) and raw[:64] not in record
        verify_upload(cid, kind, size, record, encrypted=True)
        assert codec.decode(cid, kind, size, record) == raw
    assert len(codec.encode(codec.chunk_id(TEXT), TEXT, COMP)[2]) < len(TEXT) // 10  # compressed inside


def expect(code: ErrorCode, call: object, *args: object, **kw: object) -> str:
    with pytest.raises(CodecError) as e:
        call(*args, **kw)  # type: ignore[operator]
    assert as_sent(e.value).code == code, e.value
    return e.value.message


def test_every_wrong_chunk_is_refused_with_its_code() -> None:
    cid = PLAIN.chunk_id(TEXT)
    packed = COMP.compress(TEXT)
    other = PLAIN.chunk_id(NOISE)
    # Bytes that are not the id's: refused on upload and on restore.
    assert "does not hash to" in expect(
        ErrorCode.CHUNK_MISMATCH, verify_upload, other, CODEC_ZSTD, len(TEXT), packed, encrypted=False
    )
    assert "does not match its id" in expect(
        ErrorCode.CHUNK_MISMATCH, PLAIN.decode, other, CODEC_ZSTD, len(TEXT), packed
    )
    # A declared size that the frame does not have; a small frame of a huge output is never expanded.
    expect(ErrorCode.CHUNK_MISMATCH, raw_bytes, CODEC_ZSTD, len(TEXT) - 1, packed)
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(limits.MAX_CHUNK * 4))
    expect(ErrorCode.CHUNK_MISMATCH, raw_bytes, CODEC_ZSTD, 100, bomb)
    expect(ErrorCode.CHUNK_MISMATCH, raw_bytes, CODEC_ZSTD, len(TEXT), packed + b"trailing")
    expect(ErrorCode.CHUNK_MISMATCH, raw_bytes, CODEC_RAW, 5, b"four")
    # Bounds and kinds.
    expect(ErrorCode.BAD_MESSAGE, verify_upload, cid[:31], CODEC_RAW, 1, b"x", encrypted=False)
    expect(ErrorCode.BAD_MESSAGE, verify_upload, cid, 7, 1, b"x", encrypted=False)
    expect(ErrorCode.LIMIT_EXCEEDED, verify_upload, cid, CODEC_RAW, limits.MAX_CHUNK + 1, b"x", encrypted=False)
    expect(ErrorCode.ENCRYPTION_MISMATCH, verify_upload, cid, CODEC_SEALED, 10, b"x" * 10, encrypted=False)
    expect(ErrorCode.ENCRYPTION_MISMATCH, verify_upload, cid, CODEC_ZSTD, len(TEXT), packed, encrypted=True)
    expect(ErrorCode.ENCRYPTION_MISMATCH, PLAIN.decode, cid, CODEC_SEALED, 10, b"x" * 10)

    codec = sealed()
    scid = codec.chunk_id(TEXT)
    kind, size, record = codec.encode(scid, TEXT, COMP)
    expect(ErrorCode.ENCRYPTION_MISMATCH, codec.decode, scid, CODEC_ZSTD, len(TEXT), packed)
    flipped = bytearray(record)
    flipped[-20] ^= 1
    assert "failed authentication" in expect(ErrorCode.DAMAGED, codec.decode, scid, kind, size, bytes(flipped))
    # A record swapped in for another chunk's id fails too (the id is bound into the seal).
    expect(ErrorCode.DAMAGED, codec.decode, codec.chunk_id(NOISE), kind, size, record)
    # Another target's key cannot open it.
    expect(ErrorCode.DAMAGED, sealed().decode, scid, kind, size, record)


def test_ids_compare_in_constant_time_and_exactly() -> None:
    cid = compute_id(b"x")
    assert same_id(cid, bytes(cid)) and not same_id(cid, cid[:-1] + bytes([cid[-1] ^ 1]))
