"""An entry's real metadata, sealed into ``Entry.meta`` for encrypted targets.

In an encrypted target the server-visible fields of an entry carry nothing: ``mode``, ``mtime_ns`` and ``size``
are 0 and ``link`` is empty. Only ``kind`` stays (the server needs it: only files have chunks, directories
order listings) and ``chunks`` (the server checks at commit that they exist and serves ``get`` by them; they
are keyed ids). The real values travel in ``meta``::

    meta = version u8 = 1 | AES-256-SIV(meta key, plaintext, ad = ["neophytos/v1/meta", encrypted path, kind])
    plaintext = u32 length | msgpack EntryMeta | NUL padding to a multiple of 32 bytes

The sealing is deterministic on purpose: an unchanged file seals to the same bytes, so the server's commit sees
an unchanged entry and adds no version (the server would otherwise learn nothing more: it sees anyway which
entries a snapshot changed). The associated data binds the metadata to its path and kind, so the server cannot
move metadata between entries; ``ids_hash`` (BLAKE3 of the whole chunk-id list) binds it to the file's chunk
list, so the server cannot swap, reorder or cut the chunks of a file. Padding hides the exact length of symlink
targets and long names.
"""

from __future__ import annotations

import struct
from typing import Annotated

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from neotwist.crypto import AuthenticationFailed
from neotwist.wire import limits

META_VERSION = 1
PAD = 32
_AD = b"neophytos/v1/meta"
_LEN = struct.Struct(">I")


class EntryMeta(msgspec.Struct, array_like=True, frozen=True):
    """What an encrypted entry really is. ``name`` is set only when the path holds a long-name token;
    ``path`` only on the root entry of a sub-path push whose sub-path holds one (so listings from higher up
    can still name it)."""

    mode: Annotated[int, msgspec.Meta(ge=0, le=0o7777)]
    mtime_ns: int
    size: Annotated[int, msgspec.Meta(ge=0)]
    link: str = ""
    ids_hash: bytes = b""
    name: str = ""
    path: str = ""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(EntryMeta)


class MetaSealer:
    """Seals and opens one target's entry metadata (thread-safe)."""

    def __init__(self, meta_key: bytes) -> None:
        self._siv = AESSIV(meta_key)

    def seal(self, enc_path: str, kind: str, meta: EntryMeta) -> bytes:
        body = _encoder.encode(meta)
        plain = _LEN.pack(len(body)) + body
        plain += b"\0" * (-len(plain) % PAD)
        sealed = bytes([META_VERSION]) + self._siv.encrypt(plain, [_AD, enc_path.encode(), kind.encode()])
        if len(sealed) > limits.MAX_META:
            raise ValueError(f"sealed metadata of {len(sealed)} bytes exceeds MAX_META")
        return sealed

    def open(self, enc_path: str, kind: str, sealed: bytes) -> EntryMeta:
        """The metadata of the entry at ``enc_path`` (encrypted, from the target root) of ``kind``;
        AuthenticationFailed if it is missing, modified, or belongs to another entry."""
        if not sealed or sealed[0] != META_VERSION:
            raise AuthenticationFailed("its metadata is missing or of an unknown format")
        try:
            plain = self._siv.decrypt(sealed[1:], [_AD, enc_path.encode(), kind.encode()])
        except (InvalidTag, ValueError):
            raise AuthenticationFailed("its metadata failed authentication (modified or damaged)") from None
        (n,) = _LEN.unpack_from(plain)
        try:
            return _decoder.decode(plain[_LEN.size : _LEN.size + n])
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise AuthenticationFailed(f"its metadata does not decode ({e})") from None
