"""Server accounts: names, bcrypt password hashes and authorized SSH public keys, in one SQLite file.

The store is shared between the running server and ``neo-admin`` in another process, so it opens a fresh
connection for every operation (WAL mode, a busy timeout): a change made by ``neo-admin`` is seen by the next
login without a restart, and nothing is cached here that could go stale. :meth:`AccountStore.generation` tells
a caller that keeps what it read (the session keeps each handle's resolved grant) when to read again: it moves
on after any commit to the file, by this process or another. Every method does blocking disk work and
(for passwords) deliberately slow bcrypt work: the server calls them from a thread pool, never on the reactor.

Plaintext passwords are never stored or logged; only bcrypt hashes reach the disk.

Besides credentials the store keeps who may reach what: sub-accounts (``parent_id``: an account created and
managed by another one), grants (a right on a sub-path of another account's target) and each account's quota
(``quota_bytes`` = SpaceQuota, ``space_per_file``, ``space_per_dir``). Schema changes migrate forward through
``PRAGMA user_version`` when any process opens the file, so existing data directories keep working.

Why one file of over 500 lines: accounts, keys, sub-accounts, grants and quotas are rows of one schema whose
changes share transactions (removing an account removes its keys, sub-accounts and grants in one commit) and one
migration path; split apart, each part would need the others' tables and connection rules.
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

from neotwist.paths import check_name, check_path
from neotwist.server.changes import ChangeCounter
from neotwist.server.rights import Right
from neotwist.wire import limits
from neotwist.wire.errors import NeoError

BCRYPT_ROUNDS = 12
"""bcrypt work factor for new hashes (about a quarter of a second per check on a current core)."""

SCHEMA_VERSION = 3
"""Stored in ``PRAGMA user_version``. 1: accounts and keys. 2: sub-accounts, grants, per-file/per-dir charges.
3: account ids are never reused (AUTOINCREMENT), and a credentials counter per account."""

_Row = tuple[int, str, float, bytes | None, int | None, int, int, int | None, str | None, int]
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

_MIGRATIONS: dict[int, str] = {
    # 1 -> 2: sub-accounts, grants, quota charges. quota_bytes (version 1's placeholder) is SpaceQuota.
    2: """
ALTER TABLE accounts ADD COLUMN parent_id INTEGER REFERENCES accounts(id) ON DELETE CASCADE;
ALTER TABLE accounts ADD COLUMN space_per_file INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN space_per_dir INTEGER NOT NULL DEFAULT 0;
CREATE INDEX accounts_by_parent ON accounts(parent_id);
CREATE TABLE grants (
    id INTEGER PRIMARY KEY,
    grantee_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    owner_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    target TEXT NOT NULL,
    path TEXT NOT NULL,
    access INTEGER NOT NULL CHECK (access BETWEEN 1 AND 4),
    name TEXT NOT NULL,
    created REAL NOT NULL,
    UNIQUE (grantee_id, name)
);
CREATE INDEX grants_by_owner ON grants(owner_id, target);
""",
    # 2 -> 3: the accounts table again, with AUTOINCREMENT: an id once given is never given again, so nothing that
    # still holds a removed account's id (an open connection, a target) can ever reach a later account's data.
    # SQLite cannot add AUTOINCREMENT to a table, so it is rebuilt (foreign keys off meanwhile: see __init__);
    # the copied ids seed the sequence. ``credentials`` grows at every password change or key removal.
    3: """
CREATE TABLE accounts_v3 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    password_hash BLOB,
    created REAL NOT NULL,
    quota_bytes INTEGER,
    parent_id INTEGER REFERENCES accounts(id) ON DELETE CASCADE,
    space_per_file INTEGER NOT NULL DEFAULT 0,
    space_per_dir INTEGER NOT NULL DEFAULT 0,
    credentials INTEGER NOT NULL DEFAULT 0
);
INSERT INTO accounts_v3 (id, name, password_hash, created, quota_bytes, parent_id, space_per_file, space_per_dir)
    SELECT id, name, password_hash, created, quota_bytes, parent_id, space_per_file, space_per_dir FROM accounts;
DROP TABLE accounts;
ALTER TABLE accounts_v3 RENAME TO accounts;
CREATE INDEX accounts_by_parent ON accounts(parent_id);
""",
}
"""Forward migrations: the statements that take the schema from version n-1 to n, run in one transaction."""

MAX_CHARGE = 2**40
"""Largest SpacePerFile / SpacePerDir (1 TiB per entry): anything bigger is a typo."""

MAX_QUOTA = 2**62
"""Largest SpaceQuota (4 EiB)."""


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
    """One account.

    ``quota_bytes`` is SpaceQuota (None = unlimited); ``space_per_file`` / ``space_per_dir`` are charged for every
    stored file or directory version on top of its data. ``parent`` names the owning account of a sub-account.
    """

    id: int
    name: str
    created: float
    has_password: bool = False
    quota_bytes: int | None = None
    space_per_file: int = 0
    space_per_dir: int = 0
    parent_id: int | None = None
    parent: str | None = None
    credentials: int = 0  # grows at every password change or key removal: older logins no longer count

    def same_login(self, now: Account | None) -> bool:
        """True if ``now`` (this account as the store holds it now) still admits a connection that logged in as
        this one: the account exists, under the same id, name and creation time, with no password change or
        key removal since."""
        return now is not None and (now.id, now.name, now.created, now.credentials) == (
            self.id,
            self.name,
            self.created,
            self.credentials,
        )

    @property
    def is_sub_account(self) -> bool:
        return self.parent_id is not None


@dataclass(frozen=True)
class Grant:
    """``grantee`` holds ``right`` on ``path`` (a sub-path, "" = all) of ``owner``'s target ``target``, and
    reaches it under ``name``."""

    id: int
    grantee_id: int
    grantee: str
    owner_id: int
    owner: str
    target: str
    path: str
    right: Right
    name: str
    created: float

    def describe(self) -> str:
        where = f"{self.owner}/{self.target}" + (f"/{self.path}" if self.path else "")
        return f"{self.grantee} has {self.right.label} on {where} as {self.name!r}"


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


def _valid_target(name: str) -> str:
    try:
        return check_name(name, "target name")
    except NeoError as e:
        raise ValueError(e.message) from None


def _valid_path(path: str) -> str:
    try:
        return check_path(path)
    except NeoError as e:
        raise ValueError(e.message) from None


_UNCHANGED: object = object()


class AccountStore:
    """Accounts in the SQLite file at ``path`` (created on first use). Safe to use from several threads and
    processes at once: each operation opens its own connection and runs in one transaction."""

    def __init__(self, path: Path, *, bcrypt_rounds: int = BCRYPT_ROUNDS) -> None:
        self.path = Path(path)
        self.bcrypt_rounds = bcrypt_rounds
        self._dummy_hash: bytes | None = None
        self._dummy_lock = threading.Lock()
        self._changes = ChangeCounter(self.path)
        if not self.path.exists():
            # Hashes are secrets too: the file (and SQLite's -wal/-shm, which copy its mode) is owner-only.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
        finally:
            db.close()
        # Foreign keys off while the schema is made or migrated: rebuilding the accounts table (version 3) drops
        # the old one, which with them on would cascade to every key and grant. Checked once done.
        with self._connect(write=True, foreign_keys=False) as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:  # a new file (or one written before user_version was set): version 1's tables
                version = 1
            if version > SCHEMA_VERSION:
                raise AccountError(
                    f"{self.path} has schema version {version}; this software knows up to {SCHEMA_VERSION}:"
                    " upgrade neophytos"
                )
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step].split(";"):
                    if statement.strip():
                        db.execute(statement)
            if version < SCHEMA_VERSION and db.execute("PRAGMA foreign_key_check").fetchall():
                raise AccountError(f"{self.path}: a migration left dangling references; restore a backup")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # --- plumbing -----------------------------------------------------------------------------------------

    @contextmanager
    def _connect(self, write: bool = False, foreign_keys: bool = True) -> Iterator[sqlite3.Connection]:
        """One connection, one transaction: committed on success, rolled back on error, always closed. Writers
        take the write lock at once (BEGIN IMMEDIATE) so a check-then-change cannot race another process."""
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        try:
            if foreign_keys:
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
        if write:
            self._changes.bump()

    def generation(self) -> int:
        """A number that grows after every change to the store, made by this process or any other (neo-admin):
        something read while it had some value is still current while it keeps that value. Read it *before*
        reading what is to be kept. Blocking but cheap: no connection is opened after a thread's first call
        (:class:`~neotwist.server.changes.ChangeCounter`)."""
        return self._changes.current()

    @staticmethod
    def _account(row: _Row) -> Account:
        return Account(
            id=row[0],
            name=row[1],
            created=row[2],
            has_password=row[3] is not None,
            quota_bytes=row[4],
            space_per_file=row[5],
            space_per_dir=row[6],
            parent_id=row[7],
            parent=row[8],
            credentials=row[9],
        )

    _COLUMNS = (
        "a.id, a.name, a.created, a.password_hash, a.quota_bytes, a.space_per_file, a.space_per_dir, a.parent_id,"
        " p.name, a.credentials"
    )
    _FROM = "accounts a LEFT JOIN accounts p ON p.id = a.parent_id"

    def _row(self, db: sqlite3.Connection, name: str) -> _Row | None:
        row: _Row | None = db.execute(
            f"SELECT {self._COLUMNS} FROM {self._FROM} WHERE a.name = ?", (name,)  # noqa: S608
        ).fetchone()
        return row

    def _row_by_id(self, db: sqlite3.Connection, account_id: int) -> _Row | None:
        row: _Row | None = db.execute(
            f"SELECT {self._COLUMNS} FROM {self._FROM} WHERE a.id = ?", (account_id,)  # noqa: S608
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

    def add(self, name: str, password: str | None, *, parent: str | None = None) -> Account:
        """Create an account; ``password`` None makes a key-only account. With ``parent`` it is a sub-account of
        that (top-level) account: it has no targets of its own and its owner manages it. Raises ValueError for a
        bad name or password, AccountExists if the name is taken, NoSuchAccount / AccountError for a parent
        that does not exist or is itself a sub-account."""
        _valid_name(name)
        hashed = None if password is None else self._hash(password)
        with self._connect(write=True) as db:
            parent_id = None
            if parent is not None:
                prow = self._require(db, parent)
                if prow[7] is not None:
                    raise AccountError(
                        f"{parent!r} is itself a sub-account (of {prow[8]!r}): sub-accounts cannot have their own"
                    )
                parent_id = prow[0]
            try:
                cursor = db.execute(
                    "INSERT INTO accounts (name, password_hash, created, parent_id) VALUES (?, ?, ?, ?)",
                    (name, hashed, time.time(), parent_id),
                )
            except sqlite3.IntegrityError:
                raise AccountExists(name) from None
            row = self._row_by_id(db, int(cursor.lastrowid or 0))
        assert row is not None
        return self._account(row)

    def remove(self, name: str) -> Account:
        """Delete an account with its keys, its sub-accounts, and every grant it gave or holds. The caller makes
        sure it owns no targets first (they live in the repository, not here)."""
        with self._connect(write=True) as db:
            row = self._require(db, name)
            db.execute("DELETE FROM accounts WHERE id = ?", (row[0],))
        return self._account(row)

    def get_by_id(self, account_id: int) -> Account | None:
        with self._connect() as db:
            row = self._row_by_id(db, account_id)
        return None if row is None else self._account(row)

    def sub_accounts(self, owner: str) -> builtins.list[Account]:
        """The sub-accounts of ``owner``, by name."""
        with self._connect() as db:
            owner_id = self._require(db, owner)[0]
            rows = db.execute(
                f"SELECT {self._COLUMNS} FROM {self._FROM} WHERE a.parent_id = ? ORDER BY a.name",  # noqa: S608
                (owner_id,),
            ).fetchall()
        return [self._account(row) for row in rows]

    def set_quota(
        self,
        name: str,
        *,
        quota: int | object | None = _UNCHANGED,
        per_file: int | object = _UNCHANGED,
        per_dir: int | object = _UNCHANGED,
    ) -> Account:
        """Change SpaceQuota (None = unlimited), SpacePerFile and SpacePerDir; arguments left out stay as they
        are. A sub-account stores into its owner's targets and is charged there, so it has no quota of its
        own (AccountError)."""
        changes: dict[str, object] = {}
        if quota is not _UNCHANGED:
            if quota is not None and (not isinstance(quota, int) or not 0 <= quota <= MAX_QUOTA):
                raise ValueError(f"the quota must be a size from 0 to {MAX_QUOTA} bytes, or none")
            changes["quota_bytes"] = quota
        for column, value in (("space_per_file", per_file), ("space_per_dir", per_dir)):
            if value is not _UNCHANGED:
                if not isinstance(value, int) or not 0 <= value <= MAX_CHARGE:
                    raise ValueError(f"{column} must be a size from 0 to {MAX_CHARGE} bytes")
                changes[column] = value
        with self._connect(write=True) as db:
            row = self._require(db, name)
            if row[7] is not None and changes:
                raise AccountError(
                    f"{name!r} is a sub-account of {row[8]!r}: what it stores is charged to {row[8]!r}; "
                    f"set the quota there (neo-admin account set {row[8]} --quota ...)"
                )
            for column, value in changes.items():  # column names are the constants above
                db.execute(f"UPDATE accounts SET {column} = ? WHERE id = ?", (value, row[0]))  # noqa: S608
            updated = self._row_by_id(db, row[0])
        assert updated is not None
        return self._account(updated)

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
            rows = db.execute(f"SELECT {self._COLUMNS} FROM {self._FROM} ORDER BY a.name").fetchall()  # noqa: S608
        return [self._account(row) for row in rows]

    def set_password(self, name: str, password: str | None) -> None:
        """Replace the account's password (None removes it: the account can then log in with keys only)."""
        hashed = None if password is None else self._hash(password)
        with self._connect(write=True) as db:
            self._require(db, name)
            db.execute(
                "UPDATE accounts SET password_hash = ?, credentials = credentials + 1 WHERE name = ?", (hashed, name)
            )

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
            db.execute("UPDATE accounts SET credentials = credentials + 1 WHERE id = ?", (account_id,))
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

    # --- grants --------------------------------------------------------------------------------------------

    _GRANT_COLUMNS = (
        "g.id, g.grantee_id, ge.name, g.owner_id, o.name, g.target, g.path, g.access, g.name, g.created"
    )
    _GRANT_FROM = "grants g JOIN accounts ge ON ge.id = g.grantee_id JOIN accounts o ON o.id = g.owner_id"

    @staticmethod
    def _grant(row: tuple) -> Grant:
        gid, grantee_id, grantee, owner_id, owner, target, path, access, name, created = row
        return Grant(gid, grantee_id, grantee, owner_id, owner, target, path, Right(access), name, created)

    def _grants(self, db: sqlite3.Connection, where: str, args: tuple) -> builtins.list[Grant]:
        rows = db.execute(
            f"SELECT {self._GRANT_COLUMNS} FROM {self._GRANT_FROM} WHERE {where}"  # noqa: S608
            " ORDER BY ge.name, g.name",
            args,
        ).fetchall()
        return [self._grant(row) for row in rows]

    def grant(
        self, grantee: str, owner: str, target: str, path: str, right: Right, name: str | None = None
    ) -> tuple[Grant, bool]:
        """Give ``grantee`` ``right`` on ``path`` of ``owner``'s target ``target``, reached as ``name`` (default:
        the target's name). Granting the same (owner, target, path) under the same name again changes the right.
        Returns the grant and whether it was new.

        Raises ValueError (bad names or path), NoSuchAccount, AccountError (a grant to the owner itself, to a
        sub-account's own sub-account... or the name is taken by another grant of the grantee). The caller
        checks that the grantee has no own target called ``name`` (targets live in the repository).
        """
        _valid_target(target)
        _valid_path(path)
        name = _valid_target(name if name is not None else target)
        with self._connect(write=True) as db:
            grow = self._require(db, grantee)
            orow = self._require(db, owner)
            if grow[0] == orow[0]:
                raise AccountError(f"{owner!r} already has full rights on its own targets")
            if orow[7] is not None:
                raise AccountError(f"{owner!r} is a sub-account: it has no targets of its own to grant")
            existing = self._grants(db, "g.grantee_id = ? AND g.name = ?", (grow[0], name))
            if existing:
                old = existing[0]
                if (old.owner_id, old.target, old.path) != (orow[0], target, path):
                    raise AccountError(
                        f"{grantee!r} already has a grant called {name!r} ({old.describe()}): "
                        "revoke it first, or choose another name (--as NAME)"
                    )
                db.execute("UPDATE grants SET access = ? WHERE id = ?", (int(right), old.id))
                new = False
            else:
                db.execute(
                    "INSERT INTO grants (grantee_id, owner_id, target, path, access, name, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (grow[0], orow[0], target, path, int(right), name, time.time()),
                )
                new = True
            result = self._grants(db, "g.grantee_id = ? AND g.name = ?", (grow[0], name))[0]
        return result, new

    def revoke(self, grantee: str, name: str) -> Grant:
        """Remove ``grantee``'s grant called ``name``; AccountError if it has none."""
        with self._connect(write=True) as db:
            grow = self._require(db, grantee)
            found = self._grants(db, "g.grantee_id = ? AND g.name = ?", (grow[0], name))
            if not found:
                raise AccountError(
                    f"{grantee!r} has no grant called {name!r} (see: neo-admin grant list {grantee})"
                )
            db.execute("DELETE FROM grants WHERE id = ?", (found[0].id,))
        return found[0]

    def find_grant(self, grantee_id: int, name: str) -> Grant | None:
        """The grant ``grantee_id`` reaches as ``name``, if any (looked up on every open, and again on an open
        handle's next request after :meth:`generation` moved on: changes apply at once)."""
        with self._connect() as db:
            found = self._grants(db, "g.grantee_id = ? AND g.name = ?", (grantee_id, name))
        return found[0] if found else None

    def grants_held(self, grantee_id: int) -> builtins.list[Grant]:
        """Every grant the account holds, by name."""
        with self._connect() as db:
            return self._grants(db, "g.grantee_id = ?", (grantee_id,))

    def grants_given(self, owner_id: int) -> builtins.list[Grant]:
        """Every grant on the account's targets, by grantee and name."""
        with self._connect() as db:
            return self._grants(db, "g.owner_id = ?", (owner_id,))

    def all_grants(self) -> builtins.list[Grant]:
        with self._connect() as db:
            return self._grants(db, "1", ())

    def drop_target_grants(self, owner_id: int, target: str) -> int:
        """Remove every grant on ``owner_id``'s target ``target`` (before the target is removed, so a later
        target of the same name does not inherit them); returns how many."""
        with self._connect(write=True) as db:
            cur = db.execute("DELETE FROM grants WHERE owner_id = ? AND target = ?", (owner_id, target))
            return int(cur.rowcount)
