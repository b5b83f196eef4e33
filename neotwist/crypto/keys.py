"""Subkeys of the master key, and a target's key-check record.

Every key used for data is derived with HKDF-SHA256 (RFC 5869) from the 32-byte master key, with a distinct
``info`` per purpose, so no key is ever used for two jobs:

=============  =======  ===========================  =====================================================
purpose        bytes    HKDF salt                    used for
=============  =======  ===========================  =====================================================
``key-id``     16       none                         the public key id (key file, key-check record)
``name-token`` 32       none                         keyed BLAKE3 tokens that stand for names in paths
``check``      32       the target's salt            HMAC-SHA256 tag of the key-check record
``chunk-id``   32       the target's salt            keyed BLAKE3 chunk ids
``chunk``      32       the target's salt            AES-256-GCM of chunk contents
``meta``       64       the target's salt            AES-256-SIV of entry metadata
``chunker``    6        the target's salt            the chunker's seed (48 bits: all pyfastcdc's gear uses)
=============  =======  ===========================  =====================================================

Content keys are per target: each encrypted target gets a random 32-byte salt when it is created, so two
targets encrypted with one key file share no chunk ids and the server cannot see what they have in common.
Name keys are not salted: a client must be able to encrypt a plaintext sub-path *before* it opens the target
(a handle is opened at its encrypted root), and the salt only arrives with the open reply.

The **key-check record** (``Open.key_check`` when a target is created, ``Opened.key_check`` afterwards; 81
bytes, opaque to the server)::

    version u8 = 1 | key id (16) | target salt (32) | HMAC-SHA256(check key, label | version | key id | salt)

It names the key the target was created with, so a client holding another key file refuses before asking for a
passphrase; and its tag proves the unlocked key is that key, so nothing is written with a wrong one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from neotwist.crypto import WrongKey

MASTER_KEY_SIZE = 32
KEY_ID_SIZE = 16
SALT_SIZE = 32
CHECK_VERSION = 1
KEY_CHECK_SIZE = 1 + KEY_ID_SIZE + SALT_SIZE + 32
_CHECK_LABEL = b"neophytos/v1/key-check\0"


def derive(secret: bytes, purpose: str, length: int, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 of ``secret`` for one ``purpose`` (the ``info`` is ``neophytos/v1/<purpose>``)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=b"neophytos/v1/" + purpose.encode())
    return hkdf.derive(secret)


def key_id(master: bytes) -> bytes:
    """The public 16-byte id of a master key: says which key, reveals nothing of it."""
    return derive(master, "key-id", KEY_ID_SIZE)


def key_check_id(record: bytes) -> bytes | None:
    """The key id a key-check record names, or None if the record is not one this client understands."""
    if len(record) != KEY_CHECK_SIZE or record[0] != CHECK_VERSION:
        return None
    return record[1 : 1 + KEY_ID_SIZE]


@dataclass(frozen=True, repr=False)
class TargetKeys:
    """The content keys of one encrypted target (repr hides them from logs and tracebacks)."""

    salt: bytes
    id_key: bytes  # keyed BLAKE3 chunk ids
    chunk_key: bytes  # AES-256-GCM chunk contents
    meta_key: bytes  # AES-256-SIV entry metadata
    chunker_seed: int = 0  # keyed FastCDC seed: chunk boundaries differ from every other target's

    def __repr__(self) -> str:
        return f"TargetKeys(salt={self.salt.hex()[:16]}...)"

    @property
    def fingerprint(self) -> str:
        """A public name for this keying (the files cache is kept apart per keying): the salt's SHA-256."""
        return hashlib.sha256(self.salt).hexdigest()[:32]


class MasterKey:
    """An unlocked master key and its unsalted subkeys. Never written anywhere but wrapped in a key file."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != MASTER_KEY_SIZE:
            raise ValueError("a master key is 32 bytes")
        self._secret = secret
        self.id = key_id(secret)
        self.token_key = derive(secret, "name-token", 32)

    def __repr__(self) -> str:
        return f"MasterKey(id={self.id.hex()})"

    def target(self, salt: bytes) -> TargetKeys:
        """The content keys of the target whose salt is ``salt``."""
        s = self._secret
        return TargetKeys(
            salt=salt,
            id_key=derive(s, "chunk-id", 32, salt),
            chunk_key=derive(s, "chunk", 32, salt),
            meta_key=derive(s, "meta", 64, salt),
            chunker_seed=int.from_bytes(derive(s, "chunker", 6, salt), "big"),
        )

    def _tag(self, salt: bytes) -> bytes:
        check = derive(self._secret, "check", 32, salt)
        return hmac.new(check, _CHECK_LABEL + bytes([CHECK_VERSION]) + self.id + salt, hashlib.sha256).digest()

    def new_target(self) -> tuple[bytes, TargetKeys]:
        """A fresh salt for a new target: (its key-check record, its keys)."""
        salt = os.urandom(SALT_SIZE)
        record = bytes([CHECK_VERSION]) + self.id + salt + self._tag(salt)
        return record, self.target(salt)

    def open_target(self, record: bytes) -> TargetKeys:
        """The keys of the target whose key-check record is ``record``; WrongKey unless this key made it."""
        named = key_check_id(record)
        if named is None:
            raise WrongKey(
                "the target's key-check record is missing or unknown (it was not created by this client version)"
            )
        if not hmac.compare_digest(named, self.id):
            raise WrongKey(
                f"the target was encrypted with key {named.hex()}, not with this key ({self.id.hex()}): use "
                "the right --key-file, or 'neo-key import' that key"
            )
        salt = record[1 + KEY_ID_SIZE : 1 + KEY_ID_SIZE + SALT_SIZE]
        if not hmac.compare_digest(record[1 + KEY_ID_SIZE + SALT_SIZE :], self._tag(salt)):
            raise WrongKey(
                f"the target's key-check record does not verify with key {self.id.hex()}: it was modified "
                "or the key file is damaged"
            )
        return self.target(salt)
