"""The key file: a random 256-bit master key wrapped under a passphrase through a memory-hard KDF.

The file is one JSON object (``neo-key export`` prints it as it is, so it can be mailed, printed or kept in a
password manager; it is useless without the passphrase)::

    {"format": "neophytos-key", "version": 1,
     "key_id": "<32 hex digits>",
     "kdf": {"algorithm": "argon2id", "salt": "<base64>", "memory_kib": 131072, "iterations": 3, "lanes": 4},
     "cipher": "aes-256-gcm", "nonce": "<base64 of 12 bytes>", "wrapped_key": "<base64 of 32 + 16 bytes>"}

- ``key_id`` is a public fingerprint of the master key (:func:`neotwist.crypto.keys.key_id`). A target's
  key-check record names the key id it was created with, so a wrong key file is refused before any passphrase
  is asked; after unwrapping, the id is recomputed from the key and must match.
- The KDF's parameters are stored, so they can be raised later (``neo-key passwd`` re-wraps with the current
  defaults) without breaking old files. Argon2id (RFC 9106) is used when the installed ``cryptography`` has it,
  scrypt otherwise; both are memory-hard. When a file is read its parameters are bounded, so a crafted file
  cannot make the client allocate gigabytes or loop for hours.
- The master key is sealed with AES-256-GCM under the KDF's output, with every other field of the file as
  associated data: changing the id, the KDF parameters or the cipher name makes unwrapping fail, exactly like a
  wrong passphrase does (the two cannot be told apart, and need not be).

Files are written atomically (:func:`neotwist.atomicfile.atomic_write`: mode 0600, fsync, rename or link, fsync
of the directory) and never overwritten unless asked.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import platformdirs
from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from neotwist.atomicfile import atomic_write
from neotwist.crypto import KeyFileError, WrongPassphrase
from neotwist.crypto.keys import MASTER_KEY_SIZE, key_id

FORMAT: Literal["neophytos-key"] = "neophytos-key"
VERSION: Literal[1] = 1
MAX_KEY_FILE = 64 * 1024
"""A key file is a few hundred bytes; anything much bigger is not one (checked before parsing)."""

DEFAULT_MEMORY_KIB = 128 * 1024
"""Argon2id memory: 128 MiB, 3 passes, 4 lanes take about 0.2 s on a 2020s machine (RFC 9106 suggests 64 MiB
and 3 passes when 2 GiB cannot be spared); every push or pull of an encrypted target pays it once."""
DEFAULT_ITERATIONS = 3
DEFAULT_LANES = 4
MIN_MEMORY_KIB = 8 * 1024
MAX_MEMORY_KIB = 4 * 1024 * 1024
MAX_ITERATIONS = 64
MAX_LANES = 64
MAX_WORK_KIB = 16 * 1024 * 1024
"""Memory times passes (scrypt: n times p) of a key file that is read, at most 16 GiB: about 10 s of Argon2id.
The single bounds alone would allow 4 GiB x 64 passes (minutes), or scrypt's p = 64 at 4 GiB; an imported key
file is data from elsewhere, and must not be able to stall every push."""
MAX_SCRYPT_P = 16
RECOMMENDED_MEMORY_KIB = 64 * 1024
RECOMMENDED_ITERATIONS = 2
"""Below these (RFC 9106's second recommendation is 64 MiB and 3 passes), neo-key warns: such a key file is
cheap to attack if it leaks. They stay possible, for tests."""
SCRYPT_R = 8
"""scrypt's block size: 128 * r bytes per unit of n, so n = memory_kib at r = 8."""


class KdfParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the passphrase becomes the key that wraps the master key. For scrypt, ``memory_kib`` is its ``n``
    (a power of two; r = 8) and ``lanes`` its ``p``; ``iterations`` is 1."""

    algorithm: Literal["argon2id", "scrypt"]
    salt: Annotated[bytes, msgspec.Meta(min_length=16, max_length=64)]
    memory_kib: Annotated[int, msgspec.Meta(ge=MIN_MEMORY_KIB, le=MAX_MEMORY_KIB)]
    iterations: Annotated[int, msgspec.Meta(ge=1, le=MAX_ITERATIONS)]
    lanes: Annotated[int, msgspec.Meta(ge=1, le=MAX_LANES)]


class KeyFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The parsed key file (nothing secret in it without the passphrase)."""

    format: Literal["neophytos-key"]
    version: Literal[1]
    key_id: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{32}$")]
    kdf: KdfParams
    cipher: Literal["aes-256-gcm"]
    nonce: Annotated[bytes, msgspec.Meta(min_length=12, max_length=12)]
    wrapped_key: Annotated[bytes, msgspec.Meta(min_length=MASTER_KEY_SIZE + 16, max_length=MASTER_KEY_SIZE + 16)]


_decoder = msgspec.json.Decoder(KeyFile)


def default_path() -> Path:
    """Where the key lives unless ``--key-file`` says otherwise (next to the known-hosts files)."""
    return Path(platformdirs.user_config_dir("neophytos")) / "key"


def argon2_available() -> bool:
    """Does the installed ``cryptography`` (and its OpenSSL) provide Argon2id?"""
    try:
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

        Argon2id(salt=b"\0" * 16, length=32, iterations=1, lanes=1, memory_cost=8)
    except (ImportError, UnsupportedAlgorithm):
        return False
    return True


def default_params(memory_kib: int = DEFAULT_MEMORY_KIB, iterations: int = DEFAULT_ITERATIONS) -> KdfParams:
    """Fresh KDF parameters with a new random salt: Argon2id when available, else scrypt of the same memory."""
    salt = os.urandom(16)
    if argon2_available():
        return KdfParams("argon2id", salt, memory_kib, iterations, DEFAULT_LANES)
    n = 1 << max(memory_kib.bit_length() - 1, MIN_MEMORY_KIB.bit_length() - 1)  # a power of two, not above
    return KdfParams("scrypt", salt, n, 1, 1)


def _passphrase_bytes(passphrase: str) -> bytes:
    """NFC first: the same passphrase typed on macOS (NFD input) and Linux must give the same bytes."""
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def check_bounds(
    params: KdfParams,
    where: str = "the key file",
    fix: str = "re-protect the key with 'neo-key passwd' where it opens",
) -> None:
    """Refuse KDF parameters that would cost too much to run (KeyFileError naming ``where``, and saying ``fix``
    when the cost is too high): the per-field bounds are in :class:`KdfParams`; here the combined cost, and
    scrypt's own rules. neo-key checks the parameters it is asked to write with this too, so that it never
    writes a file it would refuse to read, nor refuses one it would read."""
    if params.algorithm == "scrypt":
        n = params.memory_kib
        if n & (n - 1):
            raise KeyFileError(f"{where} is malformed: scrypt's memory_kib (its n) must be a power of two")
        if params.iterations != 1 or params.lanes > MAX_SCRYPT_P:
            raise KeyFileError(
                f"{where} is malformed: scrypt takes iterations 1 and lanes (its p) 1..{MAX_SCRYPT_P}"
            )
    if params.memory_kib * (params.lanes if params.algorithm == "scrypt" else params.iterations) > MAX_WORK_KIB:
        raise KeyFileError(
            f"{where} asks for a KDF of {params.memory_kib // 1024} MiB x {params.iterations} pass(es) x "
            f"{params.lanes} lane(s): more than this client runs (memory x passes at most {MAX_WORK_KIB // 1024**2} "
            f"GiB); {fix}"
        )


def weak(params: KdfParams) -> str | None:
    """Why ``params`` are weaker than recommended (None if they are not): neo-key warns, and goes on."""
    if params.memory_kib < RECOMMENDED_MEMORY_KIB:
        return f"{params.memory_kib // 1024} MiB of KDF memory is below {RECOMMENDED_MEMORY_KIB // 1024} MiB"
    if params.algorithm == "argon2id" and params.iterations < RECOMMENDED_ITERATIONS:
        return f"{params.iterations} KDF pass is below {RECOMMENDED_ITERATIONS}"
    return None


def derive_kek(params: KdfParams, passphrase: str) -> bytes:
    """The 32-byte key-encryption key for ``passphrase`` under ``params`` (memory-hard: takes a while)."""
    check_bounds(params)
    secret = _passphrase_bytes(passphrase)
    if params.algorithm == "argon2id":
        try:
            from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

            kdf = Argon2id(
                salt=params.salt,
                length=32,
                iterations=params.iterations,
                lanes=params.lanes,
                memory_cost=params.memory_kib,
            )
        except (ImportError, UnsupportedAlgorithm):
            raise KeyFileError(
                "this key file uses Argon2id, which the installed cryptography library lacks: upgrade it "
                "(pip install -U cryptography)"
            ) from None
        return kdf.derive(secret)
    return Scrypt(salt=params.salt, length=32, n=params.memory_kib, r=SCRYPT_R, p=params.lanes).derive(secret)


def _aad(kf_id: str, params: KdfParams, cipher: str) -> bytes:
    """Everything in the file except the nonce and the sealed key, in a fixed encoding."""
    return b"neophytos key file v1\0" + msgspec.json.encode([FORMAT, VERSION, kf_id, params, cipher])


def wrap(master: bytes, passphrase: str, params: KdfParams | None = None) -> KeyFile:
    """A key file holding ``master`` under ``passphrase`` (fresh salt and nonce every time)."""
    if len(master) != MASTER_KEY_SIZE:
        raise ValueError("the master key is 32 bytes")
    if not passphrase:
        raise KeyFileError("the passphrase is empty: choose one (it is the only thing protecting the key)")
    params = params if params is not None else default_params()
    kid = key_id(master).hex()
    nonce = os.urandom(12)
    sealed = AESGCM(derive_kek(params, passphrase)).encrypt(nonce, master, _aad(kid, params, "aes-256-gcm"))
    return KeyFile(FORMAT, VERSION, kid, params, "aes-256-gcm", nonce, sealed)


def create(passphrase: str, params: KdfParams | None = None) -> tuple[KeyFile, bytes]:
    """A new random master key and its key file."""
    master = os.urandom(MASTER_KEY_SIZE)
    return wrap(master, passphrase, params), master


def unlock(kf: KeyFile, passphrase: str, where: str = "the key file") -> bytes:
    """The master key in ``kf``; WrongPassphrase if ``passphrase`` (or the file) is not right."""
    kek = derive_kek(kf.kdf, passphrase)
    try:
        master = AESGCM(kek).decrypt(kf.nonce, kf.wrapped_key, _aad(kf.key_id, kf.kdf, kf.cipher))
    except InvalidTag:
        raise WrongPassphrase(f"wrong passphrase for {where} (or the file was modified)") from None
    if key_id(master).hex() != kf.key_id:  # cannot happen unless the file was built wrongly: the id is sealed
        raise KeyFileError(f"{where} is inconsistent: its key id does not match its key")
    return master


def dumps(kf: KeyFile) -> bytes:
    """The file's bytes: pretty JSON and a newline (readable when exported)."""
    return msgspec.json.format(msgspec.json.encode(kf), indent=2) + b"\n"


def loads(data: bytes, where: str = "the key file") -> KeyFile:
    """Parse and bound-check a key file; KeyFileError naming ``where`` if it is not one."""
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"{where} is not a Neophytos key file (too big)")
    try:
        kf = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise KeyFileError(f"{where} is not a valid Neophytos key file: {e}") from None
    check_bounds(kf.kdf, where)
    return kf


def load(path: Path) -> KeyFile:
    """Read the key file at ``path``; a missing one says how to get one."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise KeyFileError(
            f"no key file at {path}: create one with 'neo-key init', or bring the target's key with "
            "'neo-key import FILE' (or give --key-file)"
        ) from None
    except OSError as e:
        raise KeyFileError(f"cannot read the key file {path}: {e.strerror}") from None
    return loads(data, str(path))


def save(path: Path, kf: KeyFile, *, replace: bool = False) -> None:
    """Write ``kf`` to ``path`` atomically with mode 0600; refuse an existing file unless ``replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        atomic_write(path, dumps(kf), replace=replace)
    except FileExistsError:
        raise KeyFileError(
            f"{path} already exists; it was left alone (give another --key-file, or remove it first)"
        ) from None
