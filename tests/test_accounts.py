"""AccountStore: bcrypt passwords, the constant-work dummy path, SSH keys, and sharing between processes."""

from __future__ import annotations

import stat
import time
from pathlib import Path
from unittest import mock

import bcrypt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh.keys import Key

from neotwist.server.accounts import AccountError, AccountExists, AccountStore, NoSuchAccount, fingerprint

ROUNDS = 4


@pytest.fixture
def store(tmp_path: Path) -> AccountStore:
    return AccountStore(tmp_path / "accounts.sqlite", bcrypt_rounds=ROUNDS)


def new_key(comment: bytes = b"alice@laptop") -> tuple[Key, bytes]:
    key = Key(ed25519.Ed25519PrivateKey.generate())
    return key, key.public().toString("openssh") + b" " + comment + b"\n"


def test_add_get_list(store: AccountStore) -> None:
    before = time.time()
    alice = store.add("alice", "correct horse")
    store.add("bob", None)
    assert alice.name == "alice" and alice.has_password and alice.created >= before
    assert store.get("alice") == alice
    assert store.get("nobody") is None
    assert store.get("../etc") is None
    assert [a.name for a in store.list()] == ["alice", "bob"]
    assert store.get("bob") is not None and not store.get("bob").has_password  # type: ignore[union-attr]


def test_duplicate_and_bad_names(store: AccountStore) -> None:
    store.add("alice", None)
    with pytest.raises(AccountExists):
        store.add("alice", None)
    for bad in ["", ".hidden", "a/b", "..", "ümlaut", "x" * 256, "a b"]:
        with pytest.raises(ValueError, match="account name"):
            store.add(bad, None)


def test_password_is_stored_as_bcrypt_hash_only(store: AccountStore, tmp_path: Path) -> None:
    store.add("alice", "s3cret-pass")
    raw = (tmp_path / "accounts.sqlite").read_bytes()
    assert b"s3cret-pass" not in raw
    assert stat.S_IMODE((tmp_path / "accounts.sqlite").stat().st_mode) == 0o600


def test_verify_password(store: AccountStore) -> None:
    store.add("alice", "correct horse")
    account = store.verify_password("alice", "correct horse")
    assert account is not None and account.name == "alice"
    assert store.verify_password("alice", "wrong horse") is None
    assert store.verify_password("alice", "") is None
    assert store.verify_password("Alice", "correct horse") is None


def test_set_password(store: AccountStore) -> None:
    store.add("alice", "old password")
    store.set_password("alice", "new password")
    assert store.verify_password("alice", "old password") is None
    assert store.verify_password("alice", "new password") is not None
    store.set_password("alice", None)
    assert store.verify_password("alice", "new password") is None
    with pytest.raises(NoSuchAccount):
        store.set_password("nobody", "x")


def test_missing_account_and_no_password_still_run_bcrypt(store: AccountStore) -> None:
    """A missing account, a key-only account and a bad name cost one bcrypt check each, like a wrong
    password, so timing does not tell which names exist."""
    store.add("alice", "correct horse")
    store.add("keyonly", None)
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    with mock.patch("neotwist.server.accounts.bcrypt.checkpw", counting):
        assert store.verify_password("nobody", "correct horse") is None
        assert store.verify_password("keyonly", "") is None
        assert store.verify_password("../bad", "x") is None
        assert store.verify_password("alice", "wrong") is None
    assert len(calls) == 4
    # The first three ran against the same dummy hash, with the store's work factor.
    assert calls[0] == calls[1] == calls[2] != calls[3]
    assert calls[0].startswith(b"$2b$%02d$" % ROUNDS)


def test_dummy_path_takes_about_as_long_as_a_real_check(tmp_path: Path) -> None:
    store = AccountStore(tmp_path / "a.sqlite", bcrypt_rounds=10)
    store.add("alice", "correct horse")
    store.verify_password("nobody", "warm-up")  # the dummy hash is made on first use

    def timed(name: str) -> float:
        start = time.perf_counter()
        for _ in range(3):
            store.verify_password(name, "wrong")
        return time.perf_counter() - start

    real, missing = timed("alice"), timed("nobody")
    assert 0.5 < missing / real < 2.0


def test_72_byte_limit(store: AccountStore) -> None:
    ok = "é" * 36  # 72 bytes
    store.add("alice", ok)
    assert store.verify_password("alice", ok) is not None
    with pytest.raises(ValueError, match="73 bytes; bcrypt uses at most 72"):
        store.add("bob", "x" * 73)
    assert store.get("bob") is None  # nothing was created
    with pytest.raises(ValueError, match="at most 72"):
        store.set_password("alice", ok + "x")
    assert store.verify_password("alice", ok + "x") is None  # too long is never valid, and never raises
    with pytest.raises(ValueError, match="empty"):
        store.add("carol", "")


def test_keys_add_list_authorized_remove(store: AccountStore) -> None:
    store.add("alice", None)
    store.add("bob", None)
    key, line = new_key()
    other, other_line = new_key(b"second")
    fp = store.add_key("alice", line)
    assert fp == fingerprint(key) and fp.startswith("SHA256:") and not fp.endswith("=")
    store.add_key("alice", other_line)
    records = store.keys("alice")
    assert [(r.fingerprint, r.comment, r.key_type) for r in records] == [
        (fp, "alice@laptop", "ssh-ed25519"),
        (fingerprint(other), "second", "ssh-ed25519"),
    ]
    assert store.authorized("alice", key.public().blob())
    assert not store.authorized("bob", key.public().blob())
    assert not store.authorized("nobody", key.public().blob())
    assert not store.authorized("../x", key.public().blob())
    with pytest.raises(ValueError, match="already has key"):
        store.add_key("alice", line)

    assert store.remove_key("alice", "second") == fingerprint(other)  # by comment
    assert store.remove_key("alice", fp) == fp  # by fingerprint
    assert store.keys("alice") == []
    assert not store.authorized("alice", key.public().blob())
    with pytest.raises(AccountError, match="no key"):
        store.remove_key("alice", fp)


def test_remove_key_by_ambiguous_comment(store: AccountStore) -> None:
    store.add("alice", None)
    store.add_key("alice", new_key(b"same")[1])
    store.add_key("alice", new_key(b"same")[1])
    with pytest.raises(AccountError, match="give the fingerprint"):
        store.remove_key("alice", "same")
    assert len(store.keys("alice")) == 2


def test_key_parsing_refuses_bad_input(store: AccountStore, tmp_path: Path) -> None:
    store.add("alice", None)
    private = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="private key"):
        store.add_key("alice", private)
    with pytest.raises(ValueError, match="not an OpenSSH public key"):
        store.add_key("alice", b"ssh-ed25519 notbase64!!! comment")
    with pytest.raises(ValueError, match="not an OpenSSH public key"):
        store.add_key("alice", b'command="ls" ' + new_key()[1])
    with pytest.raises(ValueError, match="empty"):
        store.add_key("alice", b"  \n")
    with pytest.raises(NoSuchAccount):
        store.add_key("nobody", new_key()[1])
    assert store.keys("alice") == []


def test_changes_are_visible_to_a_second_store(tmp_path: Path) -> None:
    """The server's store sees what neo-admin's (another instance, another process) changed, at once."""
    server = AccountStore(tmp_path / "accounts.sqlite", bcrypt_rounds=ROUNDS)
    admin = AccountStore(tmp_path / "accounts.sqlite", bcrypt_rounds=ROUNDS)
    assert server.get("alice") is None
    admin.add("alice", "first password")
    assert server.verify_password("alice", "first password") is not None
    admin.set_password("alice", "second password")
    assert server.verify_password("alice", "first password") is None
    assert server.verify_password("alice", "second password") is not None
    key, line = new_key()
    admin.add_key("alice", line)
    assert server.authorized("alice", key.public().blob())
    admin.remove_key("alice", fingerprint(key))
    assert not server.authorized("alice", key.public().blob())
