"""Path components encrypted deterministically, so the server's path model still works.

The server keys versions by path, answers ``list`` and ``get`` by path and opens handles at sub-paths. If names
were sealed with random nonces every push would look like a new tree. So each component is encrypted with
AES-256-SIV (RFC 5297, deterministic authenticated encryption) under the ``name`` key, with the *encrypted path
of its parent* as associated data::

    component = base64url_nopad( AES-SIV(name key, pad(name), ad = ["neophytos/v1/name", encrypted parent]) )

- The same name in the same directory always encrypts the same way (versions, unchanged-entry dedup and
  ``neo-pull REMOTE/SUB/PATH`` work: the client encrypts the sub-path itself), but the same name in two
  directories does not (the server cannot see that two directories both hold ``.git``).
- ``pad`` appends NUL bytes (never part of a name) up to a multiple of 16 bytes, so the server learns a name's
  length only to 16 bytes. The SIV tag (16 bytes) also authenticates the name: a modified component fails.
- A name whose padded ciphertext would not fit ``MAX_NAME`` (more than 175 bytes of UTF-8) is replaced by a
  token: ``~`` followed by base64url of a 24-byte BLAKE3 of (parent, name) keyed with the ``name-token`` key.
  Tokens are deterministic too; the real name travels sealed in the entry's metadata. ``~`` never starts a
  base64url component, so the two forms cannot be confused.

Encoded components contain only ``A-Z a-z 0-9 - _ ~``: never ``.``, ``..``, ``/``, NUL or backslash.
"""

from __future__ import annotations

import base64
import functools

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from neotwist.crypto import AuthenticationFailed
from neotwist.wire import limits

PAD = 16
SIV_TAG = 16
MAX_SEALED_NAME = (limits.MAX_NAME * 3) // 4 - SIV_TAG
"""Largest padded name whose base64url encoding (no padding) fits MAX_NAME: 175 bytes."""
LONG_NAME_MARK = "~"
TOKEN_BYTES = 24
_AD = b"neophytos/v1/name"
DIR_CACHE = 1 << 16
"""Encrypted directory paths remembered (a walk visits a directory's children together)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def is_token(component: str) -> bool:
    """Does this encrypted component stand for a long name kept in the entry's metadata?"""
    return component.startswith(LONG_NAME_MARK)


class PathCipher:
    """Encrypts and decrypts names and paths (thread-safe; keeps a bounded cache of directory paths)."""

    def __init__(self, name_key: bytes, token_key: bytes) -> None:
        self._siv = AESSIV(name_key)
        self._token_key = token_key
        self._dir = functools.lru_cache(maxsize=DIR_CACHE)(self._encrypt_path)

    def encrypt_name(self, parent: str, name: str) -> str:
        """The encrypted component for ``name`` in the directory whose encrypted path is ``parent``."""
        raw = name.encode("utf-8", "surrogateescape")
        padded = -(-len(raw) // PAD) * PAD
        if padded > MAX_SEALED_NAME:
            padded = MAX_SEALED_NAME
        if len(raw) > padded:
            digest = blake3.blake3(parent.encode() + b"\0" + raw, key=self._token_key).digest(length=TOKEN_BYTES)
            return LONG_NAME_MARK + _b64(digest)
        return _b64(self._siv.encrypt(raw + b"\0" * (padded - len(raw)), [_AD, parent.encode()]))

    def decrypt_name(self, parent: str, component: str) -> str | None:
        """The plaintext of ``component`` (under the encrypted ``parent``); None for a long-name token, whose
        name is in the entry's metadata. AuthenticationFailed if it was not made with this key."""
        if is_token(component):
            return None
        try:
            data = _unb64(component)
            raw = self._siv.decrypt(data, [_AD, parent.encode()])
        except (InvalidTag, ValueError):
            raise AuthenticationFailed(f"the encrypted name {component[:24]}... failed authentication") from None
        try:
            return raw.rstrip(b"\0").decode("utf-8")
        except UnicodeDecodeError:
            raise AuthenticationFailed("an encrypted name is not UTF-8") from None

    def token_matches(self, parent: str, component: str, name: str) -> bool:
        """Is ``component`` the token of ``name`` under ``parent``? (Checks a long name taken from metadata.)"""
        return self.encrypt_name(parent, name) == component

    def encrypt_path(self, path: str) -> str:
        """The encrypted form of a '/'-separated plaintext path ('' stays '')."""
        return self._encrypt_path(path) if path else ""

    def _encrypt_path(self, path: str) -> str:
        parent, _, name = path.rpartition("/")
        enc_parent = self._dir(parent) if parent else ""
        return join(enc_parent, self.encrypt_name(enc_parent, name))

    def decrypt_path(self, path: str) -> list[str | None]:
        """Each component of an encrypted path decrypted (None where a long-name token stands)."""
        out: list[str | None] = []
        parent = ""
        for component in path.split("/") if path else []:
            out.append(self.decrypt_name(parent, component))
            parent = join(parent, component)
        return out


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name
