"""Server accounts: names, bcrypt password hashes and authorized SSH public keys, in one SQLite file.

The store is shared between the running server and ``neo-admin`` in another process, so it opens a fresh
connection for every operation (WAL mode, a busy timeout): a change made by ``neo-admin`` is seen by the next
login without a restart, and nothing is cached that could go stale. Every method does blocking disk work and
(for passwords) deliberately slow bcrypt work: the server calls them from a thread pool, never on the reactor.

Plaintext passwords are never stored or logged; only bcrypt hashes reach the disk.
"""

from __future__ import annotations

import builtins
import hmac
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import bcrypt
from twisted.conch.ssh.keys import BadKeyError, FingerprintFormats, Key

from neotwist.paths import check_name
from neotwist.wire import limits
from neotwist.wire.errors import NeoError

BCRYPT_ROUNDS = 12
"""bcrypt work factor for new hashes (about a quarter of a second per check on a current core)."""

SCHEMA_VERSION = 1
"""Stored in ``PRAGMA user_version``; later versions (grants, quotas) migrate forward from it."""

_Row = tuple[int, str, float, bytes | None, int | None]
"""An accounts row as selected by ``AccountStore._COLUMNS``."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    password_hash BLOB,
    created REAL NOT NULL,
    quota_bytes INTEGER
);
CREATE TABLE IF NOT EXISTS keys (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    blob BLOB NOT NULL,
    key_type TEXT NOT NULL,
    comment TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    added REAL NOT NULL,
    UNIQUE (account_id, blob)
);
CREATE INDEX IF NOT EXISTS keys_by_account ON keys(account_id);
"""


class AccountError(Exception):
    """An account operation could not be done in the store's current state (the input itself was valid)."""


class NoSuchAccount(AccountError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no such account: {name!r} (see: neo-admin account list)")
        self.name = name


class AccountExists(AccountError):
    def __init__(self, name: str) -> None:
        super().__init__(f"account {name!r} already exists")
        self.name = name


@dataclass(frozen=True)
class Account:
    """One account. ``quota_bytes`` is a placeholder for quotas (None = unlimited)."""

    id: int
    name: str
    created: float
    has_password: bool = False
    quota_bytes: int | None = None


@dataclass(frozen=True)
class KeyRecord:
    """One authorized SSH public key of an account (the blob itself stays in the store)."""

    fingerprint: str
    key_type: str
    comment: str
    added: float


def fingerprint(key: Key) -> str:
    """The key's SHA-256 fingerprint as OpenSSH prints it (``SHA256:`` and unpadded base64)."""
    return "SHA256:" + key.fingerprint(FingerprintFormats.SHA256_BASE64).rstrip("=")


def parse_public_key(line: bytes) -> tuple[Key, str]:
    """Parse one OpenSSH public key line (``type base64 [comment]``) into the key and its comment.

    Raises ValueError naming the problem: a private key, an ``authorized_keys`` line with options, garbage.
    """
    line = line.strip()
    if not line:
        raise ValueError("empty public key")
    if b"PRIVATE KEY" in line:
        raise ValueError("that is a private key: give the public key (the .pub file)")
    parts = line.split(None, 2)
    try:
        key = Key.fromString(b" ".join(parts[:2]))
    except (BadKeyError, ValueError, IndexError) as e:
        raise ValueError(
            f"not an OpenSSH public key line ('ssh-ed25519 AAAA... comment'): {e or type(e).__name__}"
        ) from None
    if not key.isPublic():
        raise ValueError("that is a private key: give the public key (the .pub file)")
    comment = parts[2].decode("utf-8", "replace").strip() if len(parts) > 2 else ""
    return key, comment


def _password_bytes(password: str) -> bytes:
    """The UTF-8 password, refused if bcrypt would silently ignore part of it."""
    encoded = password.encode("utf-8")
    if not encoded:
        raise ValueError("the password is empty")
    if len(encoded) > limits.MAX_PASSWORD:
        raise ValueError(
            f"the password is {len(encoded)} bytes; bcrypt uses at most {limits.MAX_PASSWORD}:"
            " choose a shorter one"
        )
    return encoded


def _valid_name(name: str) -> str:
    try:
        return check_name(name, "account name")
    except NeoError as e:
        raise ValueError(e.message) from None


class AccountStore:
    """Accounts in the SQLite file at ``path`` (created on first use). Safe to use from several threads and
    processes at once: each operation opens its own connection and runs in one transaction."""

    def __init__(self, path: Path, *, bcrypt_rounds: int = BCRYPT_ROUNDS) -> None:
        self.path = Path(path)
        self.bcrypt_rounds = bcrypt_rounds
        self._dummy_hash: bytes | None = None
        self._dummy_lock = threading.Lock()
        if not self.path.exists():
            # Hashes are secrets too: the file (and SQLite's -wal/-shm, which copy its mode) is owner-only.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
        finally:
            db.close()
        with self._connect(write=True) as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # --- plumbing -----------------------------------------------------------------------------------------

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """One connection, one transaction: committed on success, rolled back on error, always closed. Writers
        take the write lock at once (BEGIN IMMEDIATE) so a check-then-change cannot race another process."""
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        try:
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    @staticmethod
    def _account(row: _Row) -> Account:
        return Account(
            id=row[0], name=row[1], created=row[2], has_password=row[3] is not None, quota_bytes=row[4]
        )

    _COLUMNS = "id, name, created, password_hash, quota_bytes"

    def _row(self, db: sqlite3.Connection, name: str) -> _Row | None:
        row: _Row | None = db.execute(
            f"SELECT {self._COLUMNS} FROM accounts WHERE name = ?", (name,)  # noqa: S608
        ).fetchone()
        return row

    def _require(self, db: sqlite3.Connection, name: str) -> _Row:
        row = self._row(db, _valid_name(name))
        if row is None:
            raise NoSuchAccount(name)
        return row

    def _hash(self, password: str) -> bytes:
        return bcrypt.hashpw(_password_bytes(password), bcrypt.gensalt(self.bcrypt_rounds))

    def _dummy(self) -> bytes:
        """A hash of nothing anyone knows, with this store's work factor: checked when there is no real hash
        so that a missing account or password costs the same time as a wrong password."""
        with self._dummy_lock:
            if self._dummy_hash is None:
                salt = bcrypt.gensalt(self.bcrypt_rounds)
                self._dummy_hash = bcrypt.hashpw(b"neophytos: no such account", salt)
            return self._dummy_hash

    # --- accounts ----------------------------------------------------------------------------------------

    def add(self, name: str, password: str | None) -> Account:
        """Create an account; ``password`` None makes a key-only account. Raises ValueError for a bad name or
        password, AccountExists if the name is taken."""
        _valid_name(name)
        hashed = None if password is None else self._hash(password)
        with self._connect(write=True) as db:
            try:
                cursor = db.execute(
                    "INSERT INTO accounts (name, password_hash, created) VALUES (?, ?, ?)",
                    (name, hashed, time.time()),
                )
            except sqlite3.IntegrityError:
                raise AccountExists(name) from None
            row = db.execute(
                f"SELECT {self._COLUMNS} FROM accounts WHERE id = ?", (cursor.lastrowid,)  # noqa: S608
            ).fetchone()
        return self._account(row)

    def get(self, name: str) -> Account | None:
        try:
            _valid_name(name)
        except ValueError:
            return None
        with self._connect() as db:
            row = self._row(db, name)
        return None if row is None else self._account(row)

    def list(self) -> builtins.list[Account]:
        with self._connect() as db:
            rows = db.execute(f"SELECT {self._COLUMNS} FROM accounts ORDER BY name").fetchall()  # noqa: S608
        return [self._account(row) for row in rows]

    def set_password(self, name: str, password: str | None) -> None:
        """Replace the account's password (None removes it: the account can then log in with keys only)."""
        hashed = None if password is None else self._hash(password)
        with self._connect(write=True) as db:
            self._require(db, name)
            db.execute("UPDATE accounts SET password_hash = ? WHERE name = ?", (hashed, name))

    def verify_password(self, name: str, password: str) -> Account | None:
        """The account if ``password`` is its password, else None.

        Runs one bcrypt check whatever happens (against a dummy hash when the account does not exist or has
        no password), so the time taken does not tell an attacker which names exist. Slow on purpose: call it
        in a thread.
        """
        encoded = password.encode("utf-8", "surrogateescape")
        if len(encoded) > limits.MAX_PASSWORD:
            return None
        row = None
        try:
            _valid_name(name)
        except ValueError:
            pass
        else:
            with self._connect() as db:
                row = self._row(db, name)
        stored = row[3] if row is not None else None
        try:
            matched = bcrypt.checkpw(encoded, stored if stored else self._dummy())
        except ValueError:  # a damaged stored hash: treat as a wrong password, never as a crash
            matched = False
        if row is None or not stored or not matched:
            return None
        return self._account(row)

    # --- keys ----------------------------------------------------------------------------------------------

    def add_key(self, name: str, openssh_public_key_line: bytes) -> str:
        """Authorize an SSH public key for the account; return its fingerprint. Raises ValueError for a line
        that is not a public key or a key the account already has, NoSuchAccount for an unknown account."""
        key, comment = parse_public_key(openssh_public_key_line)
        fp = fingerprint(key)
        with self._connect(write=True) as db:
            account_id = self._require(db, name)[0]
            try:
                db.execute(
                    "INSERT INTO keys (account_id, blob, key_type, comment, fingerprint, added)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (account_id, key.blob(), key.sshType().decode("ascii"), comment, fp, time.time()),
                )
            except sqlite3.IntegrityError:
                raise ValueError(f"account {name!r} already has key {fp}") from None
        return fp

    def remove_key(self, name: str, fingerprint_or_comment: str) -> str:
        """Remove the key with this fingerprint (or this comment, if exactly one key has it); return its
        fingerprint. Raises AccountError when nothing or more than one key matches."""
        with self._connect(write=True) as db:
            account_id = self._require(db, name)[0]
            rows = db.execute(
                "SELECT id, fingerprint FROM keys WHERE account_id = ? AND fingerprint = ?",
                (account_id, fingerprint_or_comment),
            ).fetchall()
            if not rows:
                rows = db.execute(
                    "SELECT id, fingerprint FROM keys WHERE account_id = ? AND comment = ?",
                    (account_id, fingerprint_or_comment),
                ).fetchall()
            if not rows:
                raise AccountError(
                    f"account {name!r} has no key with fingerprint or comment {fingerprint_or_comment!r}"
                    f" (see: neo-admin key list {name})"
                )
            if len(rows) > 1:
                raise AccountError(
                    f"{len(rows)} keys of {name!r} have the comment {fingerprint_or_comment!r}:"
                    " give the fingerprint"
                )
            db.execute("DELETE FROM keys WHERE id = ?", (rows[0][0],))
        return str(rows[0][1])

    def keys(self, name: str) -> builtins.list[KeyRecord]:
        with self._connect() as db:
            account_id = self._require(db, name)[0]
            rows = db.execute(
                "SELECT fingerprint, key_type, comment, added FROM keys"
                " WHERE account_id = ? ORDER BY added, id",
                (account_id,),
            ).fetchall()
        return [KeyRecord(*row) for row in rows]

    def authorized(self, name: str, blob: bytes) -> bool:
        """True if ``blob`` (an SSH public key blob) is one of the account's keys."""
        try:
            _valid_name(name)
        except ValueError:
            return False
        with self._connect() as db:
            rows = db.execute(
                "SELECT keys.blob FROM keys JOIN accounts ON accounts.id = keys.account_id"
                " WHERE accounts.name = ?",
                (name,),
            ).fetchall()
        found = False
        for (stored,) in rows:
            found |= hmac.compare_digest(stored, blob)
        return found
