"""Client-side encryption: the server stores only ciphertext, and delta sync still works.

One job per module:

- :mod:`~neotwist.crypto.keyfile`: the key file (a random master key wrapped under a passphrase through a
  memory-hard KDF), read, written atomically, re-wrapped;
- :mod:`~neotwist.crypto.keys`: subkeys derived with HKDF from the master key, per target from the target's
  salt, and the key-check record that lets a client refuse a wrong key before it writes anything;
- :mod:`~neotwist.crypto.chunks`: chunk ids as keyed BLAKE3 of the plaintext, chunk sealing (zstd, then
  AES-256-GCM with a random nonce, bound to the id);
- :mod:`~neotwist.crypto.names`: path components replaced by short deterministic keyed tokens, so the server's
  path model, versions and sub-path handles keep working;
- :mod:`~neotwist.crypto.meta`: an entry's real name and metadata (mode, mtime, size, symlink target) sealed
  deterministically (AES-SIV) into ``Entry.meta``, bound to its path, kind and chunk list;
- :mod:`~neotwist.crypto.tree`: the two above applied to whole entries (push) and listings (pull).

docs/encryption.md has the threat model and the formats. Nothing here does I/O on the network, and only
:mod:`keyfile` touches the disk.
"""

from __future__ import annotations


class CryptoError(Exception):
    """Base of the encryption errors; the message is one line fit for the terminal."""


class KeyFileError(CryptoError):
    """The key file is missing, unreadable or malformed (the message says which, and how to fix it)."""


class WrongPassphrase(CryptoError):
    """The passphrase does not unlock the key file."""


class WrongKey(CryptoError):
    """The key file holds another key than the one the target was encrypted with."""


class AuthenticationFailed(CryptoError):
    """Ciphertext (a chunk, a name or a manifest entry) failed authentication: modified, damaged or foreign."""


__all__ = ["AuthenticationFailed", "CryptoError", "KeyFileError", "WrongKey", "WrongPassphrase"]
