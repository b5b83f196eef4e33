"""Path components of encrypted targets: short deterministic tokens; the real names are in the metadata.

The server keys versions by path, answers ``list`` and ``get`` by path and opens handles at sub-paths, so a name
must encrypt the same way every time, or every push would look like a new tree. Each component is replaced by a
token, a keyed hash of the name and of its parent's encrypted path::

    component = base64url( BLAKE3(parent | NUL | name, key = name-token key)[:9] )    (12 characters)

and the real name is sealed in the entry's metadata (:mod:`neotwist.crypto.meta`), whose associated data is the
entry's encrypted path, so a client that opens the metadata also checks that the token belongs to that name.

Why tokens rather than an encryption of the name itself (AES-SIV, say): every entry carries its whole path, so
path bytes are most of what a push sends for a tree of small files. An AES-SIV component is at least 16 bytes
of tag plus the padded name, 43 base64 characters or more; a token is 12 whatever the name, a little shorter than
a typical plaintext name, and it reveals nothing about the name's length. The cost: a name can only be read from its own
entry's metadata, so an entry whose directory's metadata fails authentication cannot be named either (it is
reported, not restored). Tokens are 72 bits: the chance that two names of one directory of a million entries
collide is about 10^-10, and only the key holder could search for a collision; it would be refused by the
server as a path listed twice, never silently merged.

- The same name in the same directory always gives the same token (versions, unchanged-entry dedup and
  ``neo-pull REMOTE/SUB/PATH`` work: the client computes the tokens of a plaintext sub-path itself).
- The same name in two directories does not (the server cannot see that two directories both hold ``.git``).
- A name is hashed as its bytes, whatever they are (``name`` as Python holds file names, lone surrogates
  for bytes that are not UTF-8): a UTF-8 name gets the token it always had.
- Tokens contain only ``A-Z a-z 0-9 - _``: never ``.``, ``..``, ``/``, NUL or backslash.
"""

from __future__ import annotations

import base64
import functools

import blake3

TOKEN_BYTES = 9
TOKEN_CHARS = 12
DIR_CACHE = 1 << 16
"""Encrypted directory paths remembered (a walk visits a directory's children together)."""


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


class PathCipher:
    """Turns plaintext names and paths into their tokens (thread-safe; a bounded cache of directory paths)."""

    def __init__(self, token_key: bytes) -> None:
        self._key = token_key
        self._dir = functools.lru_cache(maxsize=DIR_CACHE)(self._encrypt_path)

    def encrypt_name(self, parent: str, name: str) -> str:
        """The token of ``name`` in the directory whose encrypted path (from the target root) is ``parent``."""
        data = parent.encode() + b"\0" + name.encode("utf-8", "surrogateescape")
        digest = blake3.blake3(data, key=self._key).digest(TOKEN_BYTES)
        return base64.urlsafe_b64encode(digest).decode("ascii")  # 9 bytes: 12 characters, no padding

    def encrypt_path(self, path: str) -> str:
        """The encrypted form of a '/'-separated plaintext path from the target root ('' stays '')."""
        return self._dir(path) if path else ""

    def _encrypt_path(self, path: str) -> str:
        parent, _, name = path.rpartition("/")
        enc_parent = self._dir(parent) if parent else ""
        return join(enc_parent, self.encrypt_name(enc_parent, name))
