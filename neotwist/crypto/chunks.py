"""Chunk ids and chunk sealing for encrypted targets.

**Ids** are BLAKE3 of the plaintext keyed with the target's id key: equal plaintext still gives equal ids inside
the target (deduplication, ``have``, delta pulls and the files cache all keep working), but without the key
nobody can compute the id of a guessed plaintext, so the server learns no plaintext hash.

**Sealed record** (the ``data`` of a codec-2 ``put``; the server stores it as it is)::

    version u8 = 1 | nonce (12 random bytes) | AES-256-GCM( flag u8 | body ) with its 16-byte tag
    associated data: "neophytos/v1/chunk\\0" | chunk id (32 bytes)

``flag`` 0: ``body`` is the plaintext; 1: ``body`` is one zstd frame of it (used when zstd saves at least
``MIN_SAVING``, as for plaintext targets). Nonces are random: with a per-target key, 2^32 seals per key keep the
chance of a repeat under 2^-32 (a target of 128 TiB at the default chunk size). The id in the associated data
binds a record to its id, so the server cannot answer a ``get`` with another stored chunk; after opening, the
client also recomputes the keyed id of the plaintext.

``put.size`` of a sealed chunk is the sealed length, not the plaintext's: the server learns the compressed size
(it stores those bytes) but not the compression ratio.
"""

from __future__ import annotations

import os

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from neotwist.codec import compute_id, same_id
from neotwist.crypto import AuthenticationFailed
from neotwist.crypto.keys import TargetKeys
from neotwist.wire import limits

SEAL_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = 1 + NONCE_SIZE + 1 + TAG_SIZE
"""Bytes a sealed record adds to its body: a chunk of the chunker's ``max_size`` must still fit MAX_CHUNK."""
FLAG_RAW, FLAG_ZSTD = 0, 1
_AAD = b"neophytos/v1/chunk\0"


class ChunkSealer:
    """Keyed ids, sealing and opening of one target's chunks. Thread-safe (AESGCM objects are)."""

    def __init__(self, keys: TargetKeys) -> None:
        self.id_key = keys.id_key
        self._aead = AESGCM(keys.chunk_key)

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        return compute_id(data, self.id_key)

    def seal(self, chunk_id: bytes, raw: bytes | memoryview, packed: bytes | None = None) -> bytes:
        """The sealed record of ``raw`` (or of its zstd frame ``packed`` when given)."""
        nonce = os.urandom(NONCE_SIZE)
        body = (b"\x01" + packed) if packed is not None else (b"\x00" + bytes(raw))
        return bytes([SEAL_VERSION]) + nonce + self._aead.encrypt(nonce, body, _AAD + chunk_id)

    def open(self, chunk_id: bytes, record: bytes, dctx: zstandard.ZstdDecompressor) -> bytes:
        """The plaintext of ``record``; AuthenticationFailed if it was modified, is not ``chunk_id``'s record,
        or its plaintext does not have that keyed id."""
        if len(record) < OVERHEAD or record[0] != SEAL_VERSION:
            raise AuthenticationFailed("a chunk is not a sealed record of this format")
        nonce = record[1 : 1 + NONCE_SIZE]
        try:
            body = self._aead.decrypt(nonce, memoryview(record)[1 + NONCE_SIZE :], _AAD + chunk_id)
        except InvalidTag:
            raise AuthenticationFailed("a chunk failed authentication (modified, damaged or swapped)") from None
        flag = body[0] if body else -1
        if flag == FLAG_RAW:
            raw = body[1:]
        elif flag == FLAG_ZSTD:
            try:
                packed = memoryview(body)[1:]
                declared = zstandard.get_frame_parameters(packed).content_size
                if declared != zstandard.CONTENTSIZE_UNKNOWN and declared > limits.MAX_CHUNK:
                    raise AuthenticationFailed("a sealed chunk declares more than MAX_CHUNK bytes")
                raw = dctx.decompress(packed, max_output_size=limits.MAX_CHUNK)
            except zstandard.ZstdError as e:
                raise AuthenticationFailed(f"a sealed chunk does not decompress ({e})") from None
        else:
            raise AuthenticationFailed(f"a sealed chunk has an unknown body flag {flag}")
        if not same_id(self.chunk_id(raw), chunk_id):
            raise AuthenticationFailed("a chunk's plaintext does not match its keyed id")
        return raw
