"""Quotas in the server session (in memory): SpaceQuota on stored bytes, SpacePerFile / SpacePerDir charges, the
early refusal of puts, the exact check at commit, pushes through grants charged to the owner, usage numbers."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.python.failure import Failure

from neotwist.server.repository.target import Target
from neotwist.server.rights import Right
from neotwist.server.usage import account_usage, human
from neotwist.testing import Kit, Workers, chunk, committed
from neotwist.wire.errors import ErrorCode, RemoteError
from neotwist.wire.messages import Commit, Entry, Ok, PushBegin, PushEntries, Put


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = Kit(tmp_path)
    k.account("alice")
    k.account("alice.backup", parent="alice")
    yield k
    k.close()


def usage(kit: Kit, name: str = "alice") -> int:
    account = kit.accounts.get(name)
    assert account is not None
    return account_usage(kit.repository, account).used


def test_usage_counts_stored_bytes_and_charges(kit: Kit) -> None:
    alice = kit.connect("alice")
    committed(alice.push({"a": b"x" * 1000, "d/b": b"y" * 500}, "t1"))
    committed(alice.push({"c": b"z" * 100}, "t2"))
    kit.accounts.set_quota("alice", per_file=10, per_dir=3)
    got = account_usage(kit.repository, kit.accounts.get("alice"))  # type: ignore[arg-type]
    # t1: root, d (dirs), a, d/b (files); t2: root (dir), c (file)
    assert (got.stored_bytes, got.file_versions, got.dir_versions) == (1600, 3, 3)
    assert got.used == 1600 + 3 * 10 + 3 * 3 and got.quota is None and got.available is None
    assert [(t.name, t.stored_bytes) for t in got.targets] == [("t1", 1500), ("t2", 100)]
    # history counts: a new version of a adds a file version, the old one stays
    committed(alice.push({"a": b"w" * 1000}, "t1"))
    assert account_usage(kit.repository, kit.accounts.get("alice")).file_versions == 4  # type: ignore[arg-type]


def test_put_over_quota_is_refused_early_and_the_previous_snapshot_stays(kit: Kit) -> None:
    alice = kit.connect("alice")
    first = os.urandom(1000)
    committed(alice.push({"a": first}, "t"))
    kit.accounts.set_quota("alice", quota=3000)
    reply = alice.push({"big": os.urandom(2500)}, "t")
    assert isinstance(reply, RemoteError) and reply.code == ErrorCode.QUOTA_EXCEEDED, reply
    text = reply.message
    assert "this push's upload needs 2,500 B (2.4 KiB)" in text
    assert "uses 1,000 B" in text and "quota 3,000 B (2.9 KiB)" in text and "2,000 B (2.0 KiB) left" in text
    assert "nothing was committed" in text
    target = kit.repository.find_target(kit.accounts.get("alice").id, "t")  # type: ignore[union-attr]
    assert target is not None and target.latest().id == 1  # type: ignore[union-attr]
    assert usage(kit) == 1000  # the refused batch stored nothing
    again = kit.connect("alice")
    committed(again.push({"small": os.urandom(1500)}, "t"))  # fits: 2,500 of 3,000


def test_commit_charges_are_checked_exactly_and_concurrent_pushes_cannot_both_fit(kit: Kit) -> None:
    kit.accounts.set_quota("alice", quota=10_000, per_file=1000, per_dir=100)
    one, two = kit.connect("alice"), kit.connect("alice")
    handles = []
    for conn, prefix in ((one, "one"), (two, "two")):
        h = conn.open("t", mode="push", create=True).handle
        assert isinstance(conn.call(PushBegin(rid=0, handle=h)), Ok)
        entries = [Entry("", "d", 0o755, 0, 0)]
        for i in range(4):
            cid, raw = chunk(f"{prefix}{i}".encode())
            conn.post(Put(rid=0, handle=h, id=cid, codec=0, size=len(raw), data=raw))
            entries.append(Entry(f"{prefix}{i}", "f", 0o644, 0, len(raw), cid))
        conn.post(PushEntries(rid=0, handle=h, entries=entries))
        handles.append(h)
    # each alone: 4 files x 1000 + 1 dir x 100 + 16 bytes = 4,116 <= 10,000; together they would be 8,200+
    first = committed(one.call(Commit(rid=0, handle=handles[0])))
    assert first.snapshot == 1
    assert usage(kit) == 4 * 1000 + 100 + 16
    kit.accounts.set_quota("alice", quota=8000)
    refused = two.call(Commit(rid=0, handle=handles[1]))
    assert isinstance(refused, RemoteError) and refused.code == ErrorCode.QUOTA_EXCEEDED
    assert "this push needs 4,016 B (3.9 KiB) but account alice uses 4,116 B (4.0 KiB)" in refused.message
    assert "the push was aborted" in refused.message
    target = kit.repository.find_target(kit.accounts.get("alice").id, "t")  # type: ignore[union-attr]
    assert target.latest().id == 1 and target.snapshot_count() == 1  # type: ignore[union-attr]


def test_grantee_pushes_are_charged_to_the_owner(kit: Kit) -> None:
    alice = kit.connect("alice")
    committed(alice.push({"x": os.urandom(100)}, "laptop"))
    kit.accounts.grant("alice.backup", "alice", "laptop", "", Right.APPEND)
    kit.accounts.set_quota("alice", quota=1000)
    backup = kit.connect("alice.backup")
    committed(backup.push({"y": os.urandom(800)}, "laptop"))
    assert usage(kit) == 900 and usage(kit, "alice.backup") == 0
    reply = backup.push({"z": os.urandom(200)}, "laptop")
    assert isinstance(reply, RemoteError) and reply.code == ErrorCode.QUOTA_EXCEEDED
    # the grantee hears whose quota is full and what its push needed, never the owner's usage or quota (they
    # sum every target of the owner)
    assert reply.message.startswith("account alice's quota is full: this push's upload needs 200 B, more than "
                                    "the account has left: nothing was committed; ask alice to prune")  # fmt: skip
    assert "900" not in reply.message and "1,000" not in reply.message and "100 B" not in reply.message
    # the owner, pushing the same, gets the numbers
    reply = alice.push({"z": os.urandom(200)}, "laptop")
    assert isinstance(reply, RemoteError) and "account alice uses 900 B of its quota 1,000 B" in reply.message


def test_grantee_commit_refusal_does_not_show_the_owners_totals(kit: Kit) -> None:
    """Refused at commit (a per-file charge): the same wording, with the charge in what the push needs."""
    alice = kit.connect("alice")
    committed(alice.push({"x": os.urandom(100)}, "laptop"))
    kit.accounts.grant("alice.backup", "alice", "laptop", "", Right.APPEND)
    kit.accounts.set_quota("alice", quota=1000, per_file=500)
    reply = kit.connect("alice.backup").push({"y": b"12345"}, "laptop")
    assert isinstance(reply, RemoteError) and reply.code == ErrorCode.QUOTA_EXCEEDED
    assert reply.message.startswith("account alice's quota is full: this push needs 505 B, more than"), reply.message
    assert "uses" not in reply.message and "600" not in reply.message


def test_human() -> None:
    assert human(10) == "10 B"
    assert human(100_000_000) == "100,000,000 B (95.4 MiB)"


def pack_bytes(kit: Kit, target: str) -> int:
    t = kit.repository.find_target(kit.accounts.get("alice").id, target)  # type: ignore[union-attr]
    assert t is not None
    return sum(p.stat().st_size for p in (t.directory / "packs").rglob("*.pack"))


def test_refused_commit_leaves_nothing_behind(kit: Kit) -> None:
    """Refused at commit (by the per-file charge, after its data was uploaded): the previous snapshot is intact,
    the uploaded chunks are reclaimed at once, usage and the pack files on disk are back to what they were."""
    alice = kit.connect("alice")
    committed(alice.push({"old": os.urandom(10_000)}, "t"))
    kit.accounts.set_quota("alice", quota=200_000, per_file=100_000)
    used, disk = usage(kit), pack_bytes(kit, "t")
    assert used == 10_000 + 100_000 + 0
    reply = alice.push({"new": os.urandom(50_000)}, "t")  # 50,000 fits the bytes left, the new file's charge not
    assert isinstance(reply, RemoteError) and reply.code == ErrorCode.QUOTA_EXCEEDED
    assert "this push needs 150,000 B" in reply.message and "uses 110,000 B" in reply.message
    assert usage(kit) == used
    assert pack_bytes(kit, "t") == disk
    target = kit.repository.find_target(kit.accounts.get("alice").id, "t")  # type: ignore[union-attr]
    assert target is not None and target.latest().id == 1  # type: ignore[union-attr]
    h = alice.open("t").handle
    assert sorted(alice.listing(h)) == ["", "old"]


def test_prune_frees_quota(kit: Kit) -> None:
    from neotwist.wire.messages import Prune, Pruned

    alice = kit.connect("alice")
    for _ in range(3):
        committed(alice.push({"a": os.urandom(40_000)}, "t"))
    kit.accounts.set_quota("alice", quota=130_000)
    assert usage(kit) == 120_000
    refused = alice.push({"a": os.urandom(40_000)}, "t")
    assert isinstance(refused, RemoteError) and refused.code == ErrorCode.QUOTA_EXCEEDED
    again = kit.connect("alice")
    pruned = again.call(Prune(rid=0, handle=again.open("t").handle, keep_last=1))
    assert isinstance(pruned, Pruned) and pruned.removed == 2
    assert usage(kit) == 40_000
    committed(again.push({"a": os.urandom(40_000)}, "t"))


@pytest.mark.parametrize("who", ["alice", "alice.backup"])
def test_puts_outside_a_push_are_refused_and_store_nothing(kit: Kit, who: str) -> None:
    """The bypass: puts sent on a push handle before push_begin were stored with no quota check (the owner's
    quota was read only at push_begin): 25 MB against a 1 MB quota, through an append grant too."""
    kit.accounts.grant("alice.backup", "alice", "t", "", Right.APPEND)
    alice = kit.connect("alice")
    committed(alice.push({"a": b"first"}, "t"))
    kit.accounts.set_quota("alice", quota=1_000_000)
    conn = kit.connect(who)
    h = conn.open("t", mode="push", create=True).handle
    for _ in range(10):
        cid, data = chunk(os.urandom(256 * 1024))
        conn.post(Put(rid=0, handle=h, id=cid, codec=0, size=len(data), data=data))
    conn.pump.flush()
    assert isinstance(conn.client.failure, RemoteError) and conn.client.failure.code == ErrorCode.PROTOCOL
    assert "put before push_begin" in conn.client.failure.message
    assert usage(kit) == 5


def test_batches_storing_at_once_cannot_pass_the_quota_together(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two upload batches (here of two connections; a push's own batches run in parallel too) that each fit what
    the quota leaves, storing at the same time in worker threads: each checked usage before the other's bytes were
    stored, and both got in. A reservation held while a batch stores makes the second see the first."""
    alice = kit.connect("alice")
    committed(alice.push({"a": b"first"}, "t"))
    kit.accounts.set_quota("alice", quota=150_000)
    conns = [kit.connect("alice") for _ in range(2)]
    handles = [conn.open("t", mode="push").handle for conn in conns]
    for conn, h in zip(conns, handles, strict=True):
        assert isinstance(conn.call(PushBegin(rid=0, handle=h)), Ok)
    store = Target.store_chunks_sized
    both_checked = threading.Barrier(2, timeout=2)

    def store_when_both_checked(self: Target, chunks: Any, budget: int | None = None) -> tuple[int, int]:
        with contextlib.suppress(threading.BrokenBarrierError):
            both_checked.wait()
        return store(self, chunks, budget)

    monkeypatch.setattr(Target, "store_chunks_sized", store_when_both_checked)
    workers = Workers()
    jobs = workers.jobs
    kit.services.run_blocking = workers.submit
    for conn, h in zip(conns, handles, strict=True):
        cid, data = chunk(os.urandom(100_000))
        conn.post(Put(rid=0, handle=h, id=cid, codec=0, size=len(data), data=data))
        conn.pump.flush()
    kit.clock.advance(0)  # the partial batches are submitted
    assert len(jobs) == 2
    results: list[Any] = [None, None]

    def work(i: int) -> None:
        f, args, _d = jobs[i]
        try:
            results[i] = f(*args)
        except Exception as e:
            results[i] = Failure(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [r for r in results if isinstance(r, Failure)]
    assert len(refused) == 1 and refused[0].value.code == ErrorCode.QUOTA_EXCEEDED
    assert usage(kit) == 100_005
    for (_f, _args, d), result in zip(jobs, results, strict=True):
        d.callback(result) if not isinstance(result, Failure) else d.errback(result)
    for conn in conns:
        conn.pump.flush()
