"""Account management from the client and target removal, in the server session (in memory): sub-accounts
(names, keys, who may manage them), grants and revokes on one's own targets only, listings, usage, and
``remove_target`` (full right on the whole target, never during a push, other handles told, crash-safe)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from test_grants_session import refused
from twisted.conch.ssh.keys import Key

from neotwist.server.repository import Repository
from neotwist.server.rights import Right
from neotwist.testing import PASSWORD, Kit, committed
from neotwist.wire.errors import ErrorCode
from neotwist.wire.messages import (
    GetUsage,
    GrantAccess,
    ListShares,
    ListTargets,
    Ok,
    PushBegin,
    RemoveTarget,
    Revoke,
    Shares,
    SubAccountAdd,
    SubAccountRemove,
    SubAccountSet,
    TargetRemoved,
    UsageInfo,
)


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = Kit(tmp_path)
    k.account("alice")
    k.account("bob")
    yield k
    k.close()


def key_line() -> str:
    key = Key(ed25519.Ed25519PrivateKey.generate())
    return key.public().toString("openssh").decode() + " phone"


def test_sub_accounts_from_the_client(kit: Kit) -> None:
    alice = kit.connect("alice")
    line = key_line()
    assert isinstance(alice.call(SubAccountAdd(rid=0, name="alice.viewer", password="pw for viewer", keys=[line])), Ok)
    viewer = kit.accounts.get("alice.viewer")
    assert viewer is not None and viewer.parent == "alice"
    assert kit.accounts.verify_password("alice.viewer", "pw for viewer") is not None
    assert [k.comment for k in kit.accounts.keys("alice.viewer")] == ["phone"]
    refused(alice.call(SubAccountAdd(rid=0, name="viewer", password="x")), ErrorCode.BAD_NAME, "'alice.'")
    refused(alice.call(SubAccountAdd(rid=0, name="bob.x", password="x")), ErrorCode.BAD_NAME)
    refused(alice.call(SubAccountAdd(rid=0, name="alice.viewer", password="x")), ErrorCode.CONFLICT, "taken")
    refused(alice.call(SubAccountAdd(rid=0, name="alice.k", password=None, keys=["ssh-rsa garbage"])),
            ErrorCode.BAD_ARGUMENT, "key 1")  # fmt: skip
    refused(alice.call(SubAccountAdd(rid=0, name="alice.k", password=None)), ErrorCode.BAD_ARGUMENT, "never log in")
    assert kit.accounts.get("alice.k") is None
    # change it: new password, key removed by comment
    assert isinstance(alice.call(SubAccountSet(rid=0, name="alice.viewer", password="new pw", remove_keys=["phone"])),
                      Ok)  # fmt: skip
    assert kit.accounts.verify_password("alice.viewer", "new pw") is not None
    assert kit.accounts.keys("alice.viewer") == []
    # nobody else's sub-accounts, and sub-accounts manage nothing
    bob = kit.connect("bob")
    refused(bob.call(SubAccountSet(rid=0, name="alice.viewer", password="mine now")), ErrorCode.PERMISSION_DENIED)
    refused(bob.call(SubAccountRemove(rid=0, name="alice.viewer")), ErrorCode.PERMISSION_DENIED)
    refused(bob.call(SubAccountRemove(rid=0, name="alice")), ErrorCode.PERMISSION_DENIED)
    sub = kit.connect("alice.viewer")
    refused(sub.call(SubAccountAdd(rid=0, name="alice.viewer.x", password="x")), ErrorCode.PERMISSION_DENIED,
            "only alice manages")  # fmt: skip
    assert isinstance(alice.call(SubAccountRemove(rid=0, name="alice.viewer")), Ok)
    assert kit.accounts.get("alice.viewer") is None


def test_grants_from_the_client(kit: Kit) -> None:
    alice = kit.connect("alice")
    committed(alice.push({"presentations/deck": b"slides", "private/x": b"secret"}, "documents"))
    alice.call(SubAccountAdd(rid=0, name="alice.viewer", password=PASSWORD))
    ok = alice.call(GrantAccess(rid=0, grantee="alice.viewer", target="documents", path="presentations", right="read"))
    assert isinstance(ok, Ok)
    # only to one's own sub-accounts; never outside with a bad path
    refused(alice.call(GrantAccess(rid=0, grantee="bob", target="documents", path="", right="read")),
            ErrorCode.PERMISSION_DENIED, "not a sub-account of alice")  # fmt: skip
    refused(alice.call(GrantAccess(rid=0, grantee="alice.viewer", target="documents", path="../x", right="read")),
            ErrorCode.BAD_PATH)  # fmt: skip
    again = GrantAccess(rid=0, grantee="alice.viewer", target="work", path="", right="read", name="documents")
    refused(alice.call(again), ErrorCode.CONFLICT, "already has a grant called 'documents'")
    shares = alice.call(ListShares(rid=0))
    assert isinstance(shares, Shares)
    assert [(s.name, s.has_password, s.keys) for s in shares.sub_accounts] == [("alice.viewer", True, 0)]
    assert [(g.grantee, g.owner, g.target, g.path, g.right, g.name) for g in shares.grants] == [
        ("alice.viewer", "alice", "documents", "presentations", "read", "documents")
    ]
    viewer = kit.connect("alice.viewer")
    held = viewer.call(ListShares(rid=0))
    assert held.sub_accounts == [] and [g.name for g in held.grants] == ["documents"]
    # A grantee on a sub-path learns neither the owner's target name nor where its root lies in it.
    slides = GrantAccess(rid=0, grantee="alice.viewer", target="documents", path="presentations", right="read",
                         name="slides")  # fmt: skip
    assert isinstance(alice.call(slides), Ok)
    held = viewer.call(ListShares(rid=0))
    assert [(g.owner, g.target, g.path, g.name) for g in held.grants] == [
        ("alice", "documents", "", "documents"), ("alice", "slides", "", "slides")
    ]
    assert ("alice.viewer", "alice", "documents", "presentations", "read", "slides") in [
        (g.grantee, g.owner, g.target, g.path, g.right, g.name) for g in alice.call(ListShares(rid=0)).grants
    ]
    assert sorted(viewer.listing(viewer.open("documents").handle)) == ["", "deck"]
    # bob cannot revoke alice's grant; alice can
    bob = kit.connect("bob")
    refused(bob.call(Revoke(rid=0, grantee="alice.viewer", name="documents")), ErrorCode.PERMISSION_DENIED)
    assert isinstance(alice.call(Revoke(rid=0, grantee="alice.viewer", name="documents")), Ok)
    refused(viewer.open("documents"), ErrorCode.NO_SUCH_TARGET)


def test_usage_request(kit: Kit) -> None:
    alice = kit.connect("alice")
    committed(alice.push({"a": b"x" * 300}, "t"))
    kit.accounts.set_quota("alice", quota=10_000, per_file=100, per_dir=10)
    kit.accounts.add("alice.b", PASSWORD, parent="alice")
    info = alice.call(GetUsage(rid=0))
    assert isinstance(info, UsageInfo)
    assert (info.account, info.used, info.quota, info.stored_bytes, info.file_versions, info.dir_versions) == (
        "alice", 300 + 100 + 10, 10_000, 300, 1, 1,
    )  # fmt: skip
    assert [(t.name, t.stored_bytes) for t in info.targets] == [("t", 300)] and info.charged_to == ""
    sub = kit.connect("alice.b").call(GetUsage(rid=0))
    assert (sub.used, sub.quota, sub.targets, sub.charged_to) == (0, None, [], "alice")


def test_remove_target(kit: Kit) -> None:
    alice = kit.connect("alice")
    committed(alice.push({"a": b"x" * 300}, "old"))
    committed(alice.push({"b": b"y"}, "keep"))
    kit.accounts.add("alice.b", PASSWORD, parent="alice")
    kit.accounts.grant("alice.b", "alice", "old", "", Right.WRITE)
    kit.accounts.grant("bob", "alice", "old", "", Right.FULL, "alices-old")
    target = kit.repository.find_target(kit.accounts.get("alice").id, "old")  # type: ignore[union-attr]
    assert target is not None
    directory = target.directory
    # a grantee with less than full, a sub-path handle, and a push in progress are all refused
    sub = kit.connect("alice.b")
    refused(sub.call(RemoveTarget(rid=0, handle=sub.open("old").handle)), ErrorCode.PERMISSION_DENIED,
            "removing the target needs the full right on old", "alice.b has write")  # fmt: skip
    refused(alice.call(RemoveTarget(rid=0, handle=alice.open("old", "a").handle)), ErrorCode.PERMISSION_DENIED,
            "open the target itself")  # fmt: skip
    pusher = kit.connect("alice")
    ph = pusher.open("old", mode="push").handle
    assert isinstance(pusher.call(PushBegin(rid=0, handle=ph)), Ok)
    h = alice.open("old").handle
    refused(alice.call(RemoveTarget(rid=0, handle=h)), ErrorCode.CONFLICT, "1 push(es) in progress")
    pusher.client.transport.loseConnection()  # type: ignore[union-attr]
    pusher.pump.flush()
    other = alice.open("old").handle
    # bob's whole-target full grant may remove it
    bob = kit.connect("bob")
    done = bob.call(RemoveTarget(rid=0, handle=bob.open("alices-old").handle))
    assert isinstance(done, TargetRemoved) and (done.name, done.snapshots, done.stored_bytes) == ("alices-old", 1, 300)
    assert not directory.exists()
    refused(alice.listing(other), ErrorCode.NO_SUCH_TARGET, "was removed")
    refused(alice.open("old"), ErrorCode.NO_SUCH_TARGET)
    assert [t.name for t in alice.call(ListTargets(rid=0)).targets] == ["keep"]
    assert kit.accounts.grants_held(kit.accounts.get("alice.b").id) == []  # type: ignore[union-attr]
    # a new target of the same name starts empty, with a new id
    new = committed(alice.push({"c": b"z"}, "old"))
    assert new.snapshot == 1
    fresh = kit.repository.find_target(kit.accounts.get("alice").id, "old")  # type: ignore[union-attr]
    assert fresh is not None and fresh.meta.id > target.meta.id


def test_removal_interrupted_by_a_crash_is_finished_on_the_next_start(kit: Kit, tmp_path: Path) -> None:
    alice = kit.connect("alice")
    committed(alice.push({"a": b"x"}, "gone"))
    target = kit.repository.find_target(kit.accounts.get("alice").id, "gone")  # type: ignore[union-attr]
    assert target is not None
    directory = target.directory
    # the catalog step happened, the directory deletion did not (the server died in between)
    kit.repository._delete_directory = lambda target_id: None  # type: ignore[method-assign]
    kit.repository.remove_target(target)
    assert directory.exists()
    again = Repository(tmp_path / "repo")
    try:
        assert not directory.exists()
        assert again.find_target(kit.accounts.get("alice").id, "gone") is None  # type: ignore[union-attr]
    finally:
        again.close()
