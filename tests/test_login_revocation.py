"""What a user removes stops working on connections already open: an account removed, a password changed or a key
removed (by neo-admin, or by the owner of a sub-account) ends that account's open sessions at their next request,
own targets included; and an account id is never given to another account, so nothing that still holds a removed
account's id can reach a later account's data."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_admin import admin

from neotwist.server.accounts import SCHEMA_VERSION, AccountStore
from neotwist.server.rights import Right
from neotwist.testing import Conn, Kit, committed
from neotwist.wire.errors import ErrorCode, RemoteError
from neotwist.wire.messages import Get, ListTargets, Opened, Targets

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGmOtYBaXRsgXM6ZeS9oVwZ19OWdAn3hSHqXFHfEZkJQ laptop"


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = Kit(tmp_path)
    k.account("zed")
    k.account("alice")
    yield k
    k.close()


def ended(conn: Conn, reply: object) -> None:
    """``reply`` refuses the request because the login no longer holds, and the connection is closed after it."""
    assert isinstance(reply, RemoteError), reply
    assert reply.code == ErrorCode.AUTH_REQUIRED and "log in again" in reply.message, reply
    conn.kit.clock.advance(0)
    conn.pump.flush()
    assert conn.client.transport.disconnected  # type: ignore[attr-defined]


def test_account_ids_are_never_reused(kit: Kit) -> None:
    zed = kit.accounts.get("zed")
    assert zed is not None
    kit.accounts.remove("alice")
    kit.accounts.remove("zed")
    newbie = kit.account("newbie")
    assert newbie.id > zed.id


def test_a_removed_account_cannot_read_the_next_account_s_data(kit: Kit) -> None:
    """The attack: zed's connection stays open while zed is removed; the next account created pushes a diary.
    zed's old connection can neither create a target nor list, nor read anything of the newcomer's."""
    zed = kit.connect("zed")
    own = zed.open("t", mode="push", create=True)
    assert isinstance(own, Opened)
    other = AccountStore(kit.tmp / "accounts.sqlite", bcrypt_rounds=4)  # as neo-admin in another process
    other.remove("zed")
    newbie = kit.connect(kit.account("newbie"))
    committed(newbie.push({"private/diary.txt": b"dear diary"}, "t"))
    ended(zed, zed.open("t", mode="push", create=True))
    assert not [t for t in kit.repository.list_targets(kit.accounts.get("newbie").id) if t.name != "t"]  # type: ignore[union-attr]


@pytest.mark.parametrize("change", ["account removed", "password changed", "key removed"])
def test_an_open_connection_ends_at_its_next_request(kit: Kit, change: str) -> None:
    """Own targets too: a handle already open on the account's own target (which never looks at grants)."""
    kit.accounts.add_key("zed", KEY.encode())
    zed = kit.connect("zed")
    committed(zed.push({"a": b"first"}, "t"))
    h = zed.open("t").handle
    chunks = zed.listing(h)["a"].chunks
    assert zed.call(Get(rid=0, handle=h, snapshot=1, path="a", ids=[chunks])).data == b"first"
    if change == "account removed":
        kit.repository.remove_target(kit.repository.find_target(zed.account.id, "t"))  # type: ignore[arg-type]
        ran = admin(kit.tmp, "account", "remove", "zed")
    elif change == "password changed":
        ran = admin(kit.tmp, "account", "passwd", "zed", "--password-stdin", stdin="another password\n")
    else:
        ran = admin(kit.tmp, "key", "remove", "zed", "laptop")
    assert ran.returncode == 0, ran.stderr
    if change == "account removed":
        ended(zed, zed.call(ListTargets(rid=0)))
    else:
        ended(zed, zed.call(Get(rid=0, handle=h, snapshot=1, path="a", ids=[chunks])))


def test_changes_that_take_nothing_away_leave_open_connections_alone(kit: Kit) -> None:
    zed = kit.connect("zed")
    committed(zed.push({"a": b"first"}, "t"))
    kit.accounts.add_key("zed", KEY.encode())
    kit.accounts.set_password("alice", "another password")
    kit.accounts.set_quota("zed", quota=10**9)
    assert isinstance(zed.call(ListTargets(rid=0)), Targets)
    committed(zed.push({"a": b"second"}, "t"))


def test_a_sub_account_s_sessions_end_when_its_owner_changes_its_password(kit: Kit) -> None:
    kit.account("zed.phone", parent="zed")
    phone = kit.connect("zed.phone")
    assert isinstance(phone.call(ListTargets(rid=0)), Targets)
    kit.accounts.set_password("zed.phone", "a new password")
    ended(phone, phone.call(ListTargets(rid=0)))


def test_a_version_2_file_is_migrated_and_its_ids_are_then_never_reused(tmp_path: Path) -> None:
    """The rebuild that adds AUTOINCREMENT keeps every account, key, grant and sub-account as it was."""
    path = tmp_path / "accounts.sqlite"
    store = AccountStore(path, bcrypt_rounds=4)
    for name in ("a", "b", "c"):
        store.add(name, "password one")
    store.add("a.sub", "password two", parent="a")
    store.add_key("b", KEY.encode())
    store.grant("a.sub", "a", "t", "p", Right.READ)
    before = (store.list(), store.keys("b"), store.all_grants())
    # Back to how version 2 laid the accounts table out (no AUTOINCREMENT, no credentials column).
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        """
        CREATE TABLE old (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, password_hash BLOB, created REAL NOT NULL,
            quota_bytes INTEGER, parent_id INTEGER REFERENCES accounts(id) ON DELETE CASCADE,
            space_per_file INTEGER NOT NULL DEFAULT 0, space_per_dir INTEGER NOT NULL DEFAULT 0);
        INSERT INTO old SELECT id, name, password_hash, created, quota_bytes, parent_id, space_per_file, space_per_dir
            FROM accounts;
        DROP TABLE accounts; DELETE FROM sqlite_sequence; ALTER TABLE old RENAME TO accounts;
        CREATE INDEX accounts_by_parent ON accounts(parent_id);
        PRAGMA user_version=2;
        """
    )
    db.close()
    migrated = AccountStore(path, bcrypt_rounds=4)
    assert (migrated.list(), migrated.keys("b"), migrated.all_grants()) == before
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert migrated.verify_password("a", "password one") is not None
    c = migrated.get("c")
    assert c is not None
    migrated.remove("c")
    assert migrated.add("d", "password three").id > c.id
    migrated.remove("a")  # cascades still work after the rebuild
    assert migrated.get("a.sub") is None and migrated.all_grants() == []
