"""AccountStore, schema version 2: migration of a version-1 file, sub-accounts, grants and quota settings."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import bcrypt
import pytest

from neotwist.server.accounts import SCHEMA_VERSION, AccountError, AccountStore, NoSuchAccount
from neotwist.server.rights import Access, GrantView, Right, resolve
from neotwist.wire.errors import ErrorCode, NeoError

V1_SCHEMA = """
CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, password_hash BLOB,
    created REAL NOT NULL, quota_bytes INTEGER);
CREATE TABLE keys (id INTEGER PRIMARY KEY, account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    blob BLOB NOT NULL, key_type TEXT NOT NULL, comment TEXT NOT NULL, fingerprint TEXT NOT NULL,
    added REAL NOT NULL, UNIQUE (account_id, blob));
CREATE INDEX keys_by_account ON keys(account_id);
PRAGMA user_version=1;
"""


@pytest.fixture
def store(tmp_path: Path) -> AccountStore:
    return AccountStore(tmp_path / "accounts.sqlite", bcrypt_rounds=4)


def test_version_1_file_is_migrated_and_keeps_its_accounts(tmp_path: Path) -> None:
    path = tmp_path / "accounts.sqlite"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    hashed = bcrypt.hashpw(b"old password", bcrypt.gensalt(4))
    db.execute("INSERT INTO accounts (name, password_hash, created) VALUES ('olga', ?, 1.0)", (hashed,))
    db.commit()
    db.close()
    store = AccountStore(path, bcrypt_rounds=4)
    olga = store.verify_password("olga", "old password")
    assert olga is not None and not olga.is_sub_account and olga.quota_bytes is None
    assert olga.space_per_file == 0 and olga.space_per_dir == 0
    sub = store.add("olga.viewer", "pw", parent="olga")
    assert sub.parent == "olga"
    store.grant("olga.viewer", "olga", "docs", "", Right.READ)
    version = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION == 3
    AccountStore(path, bcrypt_rounds=4)  # opening again is a no-op
    assert [g.name for g in store.grants_held(sub.id)] == ["docs"]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "accounts.sqlite"
    AccountStore(path, bcrypt_rounds=4)
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with pytest.raises(AccountError, match="upgrade neophytos"):
        AccountStore(path, bcrypt_rounds=4)


def test_sub_accounts(store: AccountStore) -> None:
    store.add("alice", "pw")
    sub = store.add("alice.viewer", None, parent="alice")
    assert sub.is_sub_account and sub.parent == "alice"
    assert [a.name for a in store.sub_accounts("alice")] == ["alice.viewer"]
    with pytest.raises(AccountError, match="itself a sub-account"):
        store.add("deeper", None, parent="alice.viewer")
    with pytest.raises(NoSuchAccount):
        store.add("orphan", None, parent="nobody")
    with pytest.raises(AccountError, match="charged to 'alice'"):
        store.set_quota("alice.viewer", quota=10)
    # removing the owner removes its sub-accounts and their grants
    store.grant("alice.viewer", "alice", "docs", "", Right.READ)
    store.remove("alice")
    assert store.get("alice.viewer") is None and store.all_grants() == []


def test_grants(store: AccountStore) -> None:
    alice = store.add("alice", "pw")
    bob = store.add("bob", "pw")
    grant, new = store.grant("bob", "alice", "documents", "presentations", Right.READ, "slides")
    assert new and grant.name == "slides" and grant.owner == "alice" and grant.right is Right.READ
    assert grant.describe() == "bob has read on alice/documents/presentations as 'slides'"
    # the same grant again changes its right; another grant under that name is refused
    again, new = store.grant("bob", "alice", "documents", "presentations", Right.APPEND, "slides")
    assert not new and again.right is Right.APPEND and again.id == grant.id
    with pytest.raises(AccountError, match="already has a grant called 'slides'"):
        store.grant("bob", "alice", "documents", "", Right.READ, "slides")
    with pytest.raises(AccountError, match="full rights on its own"):
        store.grant("alice", "alice", "documents", "", Right.READ)
    for bad_path in ["../x", "/abs", "a//b", "a/./b", "a\\b", "a\0b"]:
        with pytest.raises(ValueError):
            store.grant("bob", "alice", "documents", bad_path, Right.READ, "x")
    with pytest.raises(ValueError):
        store.grant("bob", "alice", "../etc", "", Right.READ)
    assert store.find_grant(bob.id, "slides") == again
    assert store.find_grant(bob.id, "documents") is None
    assert [g.name for g in store.grants_given(alice.id)] == ["slides"]
    assert store.drop_target_grants(alice.id, "documents") == 1
    assert store.grants_held(bob.id) == []
    with pytest.raises(AccountError, match="no grant called"):
        store.revoke("bob", "slides")


def test_quota_settings(store: AccountStore) -> None:
    store.add("alice", "pw")
    a = store.set_quota("alice", quota=100_000_000, per_file=4096)
    assert (a.quota_bytes, a.space_per_file, a.space_per_dir) == (100_000_000, 4096, 0)
    a = store.set_quota("alice", per_dir=512)
    assert (a.quota_bytes, a.space_per_file, a.space_per_dir) == (100_000_000, 4096, 512)
    a = store.set_quota("alice", quota=None)
    assert a.quota_bytes is None
    with pytest.raises(ValueError):
        store.set_quota("alice", quota=-1)


def test_resolve() -> None:
    own = resolve(1, "alice", False, "docs", "a/b", None)
    assert own == Access(1, "docs", "a/b", Right.FULL, name="docs")
    assert not own.confined
    grant = GrantView(owner_id=1, target="documents", path="presentations", right=Right.READ)
    seen = resolve(2, "bob", True, "slides", "2024", grant)
    assert (seen.owner_id, seen.target, seen.root, seen.right) == (1, "documents", "presentations/2024", Right.READ)
    assert seen.confined and seen.relative("presentations/2024/x") == "2024/x"
    with pytest.raises(NeoError) as e:
        seen.require(Right.APPEND, "push", "bob")
    assert e.value.code == ErrorCode.PERMISSION_DENIED and "needs the append right on slides" in e.value.message
    assert "bob has read" in e.value.message
    with pytest.raises(NeoError) as e:
        resolve(2, "bob.sub", True, "docs", "", None)
    assert e.value.code == ErrorCode.NO_SUCH_TARGET
    for path in ["../x", "a/../b", "/x", "a//b", "a\\b", "a\0b"]:
        with pytest.raises(NeoError) as e:
            resolve(2, "bob", True, "slides", path, grant)
        assert e.value.code == ErrorCode.BAD_PATH
    assert Right.parse("Write") is Right.WRITE
    with pytest.raises(ValueError, match="read, append, write or full"):
        Right.parse("admin")
