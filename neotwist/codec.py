"""The chunk codec: how a chunk is named, encoded, decoded and verified, in one place for both sides.

A chunk crosses three places: the client that cuts and sends it (push), the server that checks and stores it,
and the client that fetches and restores it (pull). All three use this module, so they cannot disagree:

- **Id**: BLAKE3 of the plaintext; keyed with the target's id key when the target is encrypted (the server
  then learns no plaintext hash, see :mod:`neotwist.crypto.chunks`). Ids are compared in constant time
  (:func:`same_id`) everywhere.
- **Codec**: ``raw`` (0), ``zstd`` (1, only when it saves at least :data:`MIN_SAVING`), or ``sealed`` (2,
  encrypted targets: AES-256-GCM around the raw or zstd body).
- **Decoding is bounded**: a zstd frame must be one frame that decompresses to exactly the declared size (the
  declared size is itself bounded by ``MAX_CHUNK``), so a small frame cannot expand into gigabytes.
- **Verification**: the server checks a plaintext chunk's bytes against its id before storing it
  (:func:`verify_upload`; it cannot for a sealed one, which it has no key for); the client checks every
  chunk it restores (:meth:`ChunkCodec.decode`), sealed ones by their tag and keyed id.

Errors are :class:`CodecError` subclasses, one per way a chunk can be wrong: the server tells the client with the
protocol code each stands for (``chunk_mismatch``, ``encryption_mismatch``, ``limit_exceeded``, ``bad_message``,
see :mod:`neotwist.server.errormap`); the client names the file they belong to.
"""

from __future__ import annotations

import hmac
import threading
from typing import TYPE_CHECKING

import blake3
import zstandard

from neotwist.wire import limits
from neotwist.wire.messages import CODEC_RAW, CODEC_SEALED, CODEC_ZSTD

if TYPE_CHECKING:
    from neotwist.crypto.chunks import ChunkSealer


class CodecError(Exception):
    """A chunk that cannot be stored or restored as it is; ``message`` says why, as a person reads it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadChunk(CodecError):
    """An id of the wrong length or an unknown codec."""


class ChunkTooLarge(CodecError):
    """A declared or stored size over ``MAX_CHUNK``."""


class ChunkMismatch(CodecError):
    """The bytes do not decode to the declared size, or do not hash to the chunk's id."""


class SealingMismatch(CodecError):
    """A sealed chunk where only plaintext ones belong, or the reverse."""


class ChunkForged(CodecError):
    """A sealed chunk that fails authentication: damaged, or not made with this key."""


MIN_SAVING = 0.03
"""A chunk goes raw unless zstd saves at least this fraction of it."""

DEFAULT_LEVEL = 2
"""The zstd level a push compresses at unless told otherwise (``--compress-level``). Measured on a 94 MiB
sample of the CPython standard library cut into this project's chunks (one core): level 1 stores 34.1 MiB in
0.32 s, level 2 33.6 MiB in 0.35 s, level 3 33.0 MiB in 0.45 s, level 5 31.8 MiB in 1.0 s. Level 2 is the one
the first push pays nothing for: its 0.03 s of client CPU is what the server saves appending records in
batches. Level 3 saves 0.6 MiB more there but cost the client 0.1 s more CPU (+4 to +8 % in paired first
pushes), more than the server saves. zstd gives up quickly on data that does not compress (1.5 GB/s on random
data at level 3), so no file type is singled out. The stored format does not depend on the level: chunks of
any level read back, and ids (of the plaintext) dedup across levels."""

_local = threading.local()


def decompressor() -> zstandard.ZstdDecompressor:
    """One decompressor per thread: they are not thread-safe and cost a little to create."""
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def compute_id(data: bytes | memoryview, id_key: bytes | None = None) -> bytes:
    """The id of a chunk's plaintext: BLAKE3, keyed with ``id_key`` for an encrypted target."""
    if id_key is None:
        return blake3.blake3(data).digest()
    return blake3.blake3(data, key=id_key).digest()


def same_id(a: bytes, b: bytes) -> bool:
    """Whether two ids are equal, in constant time."""
    return hmac.compare_digest(a, b)


def is_sealed(codec: int) -> bool:
    """Whether a chunk of ``codec`` is sealed (encrypted targets hold only those, plaintext ones none)."""
    return codec == CODEC_SEALED


def check_bounds(chunk_id: bytes, codec: int, size: int, data: bytes) -> None:
    """Refuse ids, codecs and lengths out of the protocol's bounds (the wire decoder checks them too, but
    the repository may be called by other code)."""
    if len(chunk_id) != limits.ID_SIZE:
        raise BadChunk(f"chunk id must be {limits.ID_SIZE} bytes")
    if codec not in (CODEC_RAW, CODEC_ZSTD, CODEC_SEALED):
        raise BadChunk(f"unknown chunk codec {codec}")
    if not 0 <= size <= limits.MAX_CHUNK or len(data) > limits.MAX_CHUNK:
        raise ChunkTooLarge(f"chunk larger than {limits.MAX_CHUNK} bytes")


def raw_bytes(codec: int, size: int, data: bytes, dctx: zstandard.ZstdDecompressor | None = None) -> bytes:
    """The plaintext of a raw or zstd chunk, exactly ``size`` bytes, or ChunkMismatch.

    A zstd chunk must be one frame with nothing after it. If the frame header declares a content size it must
    equal ``size`` (python-zstandard allocates what the header declares, ignoring ``max_output_size``);
    otherwise the output buffer is ``max_output_size`` bytes and a longer frame fails to decompress.
    """
    if codec == CODEC_RAW:
        if len(data) != size:
            raise ChunkMismatch(f"raw chunk is {len(data)} bytes, declared {size}")
        return data
    if codec != CODEC_ZSTD:
        raise SealingMismatch("a sealed chunk is not plaintext")
    try:
        declared = zstandard.get_frame_parameters(data).content_size
        if declared != zstandard.CONTENTSIZE_UNKNOWN and declared != size:
            raise ChunkMismatch(f"zstd frame declares {declared} bytes, put declared {size}")
        # max_output_size=0 would mean "unbounded": an empty chunk still gets a one-byte bound.
        raw = (dctx or decompressor()).decompress(data, max_output_size=max(size, 1), allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise ChunkMismatch(f"chunk does not decompress within its size: {e}") from None
    if len(raw) != size:
        raise ChunkMismatch(f"chunk decompresses to {len(raw)} bytes, declared {size}")
    return raw


def verify_upload(chunk_id: bytes, codec: int, size: int, data: bytes, *, encrypted: bool) -> None:
    """The server's check of an uploaded chunk: raise a CodecError unless it may be stored in a target of this
    kind under this id (a plaintext one only if its bytes hash to the id)."""
    check_bounds(chunk_id, codec, size, data)
    if encrypted:
        if codec != CODEC_SEALED:
            raise SealingMismatch("an encrypted target only stores sealed chunks")
        return
    if codec == CODEC_SEALED:
        raise SealingMismatch("a plaintext target does not store sealed chunks")
    if not same_id(compute_id(raw_bytes(codec, size, data)), chunk_id):
        raise ChunkMismatch(f"chunk data does not hash to {chunk_id.hex()}")


class ChunkCodec:
    """How one target's chunks are named and encoded: plaintext (``sealer`` None) or encrypted. Thread-safe;
    the compressor and decompressor a call uses are the caller's (one per thread)."""

    def __init__(self, sealer: ChunkSealer | None = None) -> None:
        self.sealer = sealer
        self.id_key = sealer.id_key if sealer is not None else None

    @property
    def encrypted(self) -> bool:
        return self.sealer is not None

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        return compute_id(data, self.id_key)

    def matches(self, data: bytes | memoryview, cid: bytes) -> bool:
        """Whether ``data`` is the plaintext of the chunk ``cid`` (constant-time comparison)."""
        return same_id(self.chunk_id(data), cid)

    def encode(self, cid: bytes, raw: bytes, comp: zstandard.ZstdCompressor) -> tuple[int, int, bytes]:
        """(codec, size as put, payload) for sending the plaintext ``raw`` of chunk ``cid``: zstd only when it
        saves MIN_SAVING; sealed (around either) for an encrypted target, whose ``size`` is the record's."""
        length = len(raw)
        packed = comp.compress(raw)
        saves = len(packed) <= length * (1 - MIN_SAVING)
        if self.sealer is not None:
            record = self.sealer.seal(cid, raw, packed if saves else None)
            return CODEC_SEALED, len(record), record
        if saves:
            return CODEC_ZSTD, length, packed
        return CODEC_RAW, length, raw

    def decode(
        self, cid: bytes, codec: int, size: int, payload: bytes, dctx: zstandard.ZstdDecompressor | None = None
    ) -> bytes:
        """The plaintext of a fetched chunk, checked against its id; :class:`ChunkForged`,
        :class:`SealingMismatch` or :class:`ChunkMismatch` saying what is wrong with it otherwise."""
        if self.sealer is not None:
            from neotwist.crypto import AuthenticationFailed

            if codec != CODEC_SEALED:
                raise SealingMismatch("the server sent an unsealed chunk for an encrypted target")
            try:
                return self.sealer.open(cid, payload, dctx or decompressor())
            except AuthenticationFailed as e:
                raise ChunkForged(str(e)) from None
        if codec == CODEC_SEALED:
            raise SealingMismatch("the server sent a sealed chunk for a plaintext target")
        raw = raw_bytes(codec, size, payload, dctx)
        if not self.matches(raw, cid):
            raise ChunkMismatch("a chunk from the server does not match its id")
        return raw


PLAIN = ChunkCodec()
"""The codec of every plaintext target."""
