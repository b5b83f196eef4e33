"""A snapshot's label (host, source directory, tags, warnings), sealed for an encrypted target.

The server stores the sealed label opaque and hands it back in snapshot listings; only the key opens it::

    sealed = version u8 = 1 | nonce (16 random bytes) | AES-256-SIV(meta key, u32 length | msgpack label |
                                                       NUL padding to 64 bytes, ad = ["neophytos/v1/label", nonce])

Unlike entry metadata (sealed deterministically so an unchanged entry stays byte-identical), a label is sealed
with a random nonce: two snapshots with the same host, source and tags do not show it. Padding to 64 bytes
hides the exact lengths. The seal is not bound to a snapshot id (the id is the server's, given at commit): a
server can move a label to another snapshot of the same target, as it can serve an older snapshot (see
docs/encryption.md, "What is not protected").
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from neotwist.crypto import AuthenticationFailed
from neotwist.crypto.keys import TargetKeys
from neotwist.wire import label as wire_label
from neotwist.wire.label import SnapshotLabel

LABEL_VERSION = 1
NONCE = 16
PAD = 64
_AD = b"neophytos/v1/label"
_U32 = struct.Struct(">I")


def seal(keys: TargetKeys, label: SnapshotLabel) -> bytes:
    body = wire_label.encode(label)
    plain = _U32.pack(len(body)) + body
    plain += b"\0" * (-len(plain) % PAD)
    nonce = os.urandom(NONCE)
    sealed = bytes([LABEL_VERSION]) + nonce + AESSIV(keys.meta_key).encrypt(plain, [_AD, nonce])
    if len(sealed) > wire_label.MAX_SEALED_LABEL:
        raise wire_label.LabelError(f"the sealed label of {len(sealed)} bytes exceeds {wire_label.MAX_SEALED_LABEL}")
    return sealed


def open_label(keys: TargetKeys, sealed: bytes) -> SnapshotLabel:
    """The label sealed in ``sealed``; AuthenticationFailed if it was modified, is of an unknown format or was
    sealed with another key."""
    if len(sealed) < 1 + NONCE or sealed[0] != LABEL_VERSION:
        raise AuthenticationFailed("the snapshot's label is of an unknown format")
    nonce = sealed[1 : 1 + NONCE]
    try:
        plain = AESSIV(keys.meta_key).decrypt(sealed[1 + NONCE :], [_AD, nonce])
    except (InvalidTag, ValueError):
        raise AuthenticationFailed("the snapshot's label failed authentication (modified or damaged)") from None
    if len(plain) < 4:
        raise AuthenticationFailed("the snapshot's label is cut short")
    (n,) = _U32.unpack_from(plain)
    try:
        return wire_label.decode(plain[4 : 4 + n])
    except wire_label.LabelError as e:
        raise AuthenticationFailed(f"the snapshot's label does not decode: {e}") from None
