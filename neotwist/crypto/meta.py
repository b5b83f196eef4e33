"""An entry's real name and metadata, sealed into ``Entry.meta`` for encrypted targets.

In an encrypted target the server-visible fields of an entry carry nothing: ``mode``, ``mtime_ns`` and ``size``
are 0, ``link`` is empty and the path is made of tokens (:mod:`neotwist.crypto.names`). Only ``kind`` stays (the
server needs it: only files have chunks, directories order listings) and ``chunks`` (the server checks at
commit that they exist and serves ``get`` by them; they are keyed ids). The real values travel in ``meta``, in
two seals, so that an entry whose attributes were tampered with can still be named in the error::

    meta  = version u8 = 1 | u16 length of the name seal | name seal | attribute seal
    name seal      = AES-256-SIV(meta key, name | NUL padding to 16 bytes,
                                 ad = ["neophytos/v1/name", encrypted path])
    attribute seal = AES-256-SIV(meta key, u32 length | msgpack [mode, mtime_ns, size, link, path, extra] | NUL
                                 padding to 16 bytes, ad = ["neophytos/v1/meta", encrypted path, kind, chunk ids])

``extra`` (owner, xattrs, hard link, special file: neotwist.client.metadata) was added later as a sixth element:
records without it read as having none, and readers that predate it ignore it.

Names are bytes: the name seal holds the name's own bytes, whatever they are (a UTF-8 name seals as it always
did). ``path`` is in its wire text (:func:`neotwist.paths.to_wire`), and ``link`` as the entry's link text is
(a target that is not UTF-8 is escaped there, its bytes kept in ``extra``).

The sealing is deterministic on purpose: an unchanged file seals to the same bytes, so the server's commit sees
an unchanged entry and adds no version (the server learns nothing more: it sees anyway which entries a snapshot
changed). The associated data binds the name to the encrypted path and the attributes to the path, the kind and
the whole chunk-id list, so the server cannot move metadata between entries, or swap, reorder or cut a file's
chunks. Padding hides the exact length of names and symlink targets (to 16 bytes).
"""

from __future__ import annotations

import struct
from typing import Annotated

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from neotwist import paths
from neotwist.crypto import AuthenticationFailed
from neotwist.wire import limits

META_VERSION = 1
PAD = 16
_NAME_AD = b"neophytos/v1/name"
_META_AD = b"neophytos/v1/meta"
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class EntryMeta(msgspec.Struct, array_like=True, frozen=True):
    """What an encrypted entry really is (its name is sealed apart). ``path`` is set only on the root entry of
    a sub-path push: the sub-path in plaintext, so that a listing from higher up can name the directories above
    it, which that push did not list."""

    mode: Annotated[int, msgspec.Meta(ge=0, le=0o7777)]
    mtime_ns: int
    size: Annotated[int, msgspec.Meta(ge=0)]
    link: str = ""
    path: str = ""
    extra: Annotated[bytes, msgspec.Meta(max_length=limits.MAX_META)] = b""


class _EntryMetaV1(msgspec.Struct, array_like=True, frozen=True):
    """EntryMeta as it was before ``extra``: what an entry without one is sealed as (same bytes as before)."""

    mode: int
    mtime_ns: int
    size: int
    link: str = ""
    path: str = ""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(EntryMeta)


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % PAD)


class MetaSealer:
    """Seals and opens one target's entry names and metadata (thread-safe)."""

    def __init__(self, meta_key: bytes) -> None:
        self._siv = AESSIV(meta_key)

    def seal(self, enc_path: str, kind: str, chunks: bytes, name: str, meta: EntryMeta) -> bytes:
        path = enc_path.encode()
        name_seal = self._siv.encrypt(_pad(name.encode("utf-8", "surrogateescape")), [_NAME_AD, path])
        if meta.path:
            meta = msgspec.structs.replace(meta, path=paths.to_wire(meta.path))
        if meta.extra:
            body = _encoder.encode(meta)
        else:
            body = _encoder.encode(_EntryMetaV1(meta.mode, meta.mtime_ns, meta.size, meta.link, meta.path))
        attrs = self._siv.encrypt(_pad(_U32.pack(len(body)) + body), [_META_AD, path, kind.encode(), chunks])
        sealed = bytes([META_VERSION]) + _U16.pack(len(name_seal)) + name_seal + attrs
        if len(sealed) > limits.MAX_META:
            raise ValueError(f"sealed metadata of {len(sealed)} bytes exceeds MAX_META")
        return sealed

    def _split(self, sealed: bytes) -> tuple[bytes, bytes]:
        if len(sealed) < 3 or sealed[0] != META_VERSION:
            raise AuthenticationFailed("its metadata is missing or of an unknown format")
        (n,) = _U16.unpack_from(sealed, 1)
        if len(sealed) < 3 + n:
            raise AuthenticationFailed("its metadata is cut short")
        return sealed[3 : 3 + n], sealed[3 + n :]

    def open_name(self, enc_path: str, sealed: bytes) -> str:
        """The plaintext name of the entry at ``enc_path`` (encrypted, from the target root);
        AuthenticationFailed if its name seal is missing, modified, or belongs to another entry."""
        name_seal, _ = self._split(sealed)
        try:
            raw = self._siv.decrypt(name_seal, [_NAME_AD, enc_path.encode()])
        except (InvalidTag, ValueError):
            raise AuthenticationFailed("its name failed authentication (modified or damaged)") from None
        return raw.rstrip(b"\0").decode("utf-8", "surrogateescape")

    def open(self, enc_path: str, kind: str, chunks: bytes, sealed: bytes) -> EntryMeta:
        """The attributes of the entry at ``enc_path`` of ``kind`` with the chunk ids ``chunks``;
        AuthenticationFailed if they are missing, modified, or belong to another entry or chunk list."""
        _, attrs = self._split(sealed)
        try:
            plain = self._siv.decrypt(attrs, [_META_AD, enc_path.encode(), kind.encode(), chunks])
        except (InvalidTag, ValueError):
            raise AuthenticationFailed("its metadata failed authentication (modified or damaged)") from None
        try:
            (n,) = _U32.unpack_from(plain)
            meta = _decoder.decode(plain[_U32.size : _U32.size + n])
            if meta.path:
                meta = msgspec.structs.replace(meta, path=paths.from_wire(meta.path))
            return meta
        except (struct.error, msgspec.DecodeError, msgspec.ValidationError, ValueError) as e:
            raise AuthenticationFailed(f"its metadata does not decode ({e})") from None
