"""The stash requests in memory (snapshots, versions, deleted, prune, check): a real repository on disk, a
client Peer joined to the server session by iosim, repository calls inline, a test clock."""

from __future__ import annotations

from typing import Any

import blake3

from neotwist.server import stash
from neotwist.testing import SessionTestCase
from neotwist.wire.errors import ErrorCode, RemoteError
from neotwist.wire.messages import (
    Check,
    CheckReport,
    Commit,
    Committed,
    DeletedList,
    Entry,
    ListDeleted,
    ListSnapshots,
    ListVersions,
    Message,
    Open,
    Opened,
    Prune,
    Pruned,
    PushBegin,
    PushEntries,
    Put,
    SnapshotList,
    VersionList,
)


class StashSessionTests(SessionTestCase):
    def pages(self, client: Any, pump: Any, message: Message, kind: type) -> list[Any]:
        got: list[Any] = []

        def more(reply: Message) -> bool:
            assert isinstance(reply, kind), reply
            got.append(reply)
            return not reply.done  # type: ignore[attr-defined]

        result = self.call(client, pump, message, more)
        if isinstance(result, RemoteError):
            raise result
        return got

    def read_handle(self, client: Any, pump: Any, path: str = "") -> int:
        opened = self.call(client, pump, Open(rid=0, target="t", path=path, mode="read"))
        assert isinstance(opened, Opened), opened
        return opened.handle

    def push_deleting(self, client: Any, pump: Any, name: str, data: bytes) -> int:
        """A push --delete whose tree is only ``name``."""
        h = self.open_push(client, pump).handle
        cid = blake3.blake3(data).digest()
        self.call(client, pump, PushBegin(rid=0, handle=h, delete=True))
        client.post(Put(rid=0, handle=h, id=cid, codec=0, size=len(data), data=data))
        entries = [Entry("", "d", 0o755, 0, 0), Entry(name, "f", 0o644, 2, len(data), cid)]
        client.post(PushEntries(rid=0, handle=h, entries=entries))
        committed = self.call(client, pump, Commit(rid=0, handle=h))
        assert isinstance(committed, Committed), committed
        return committed.snapshot

    def test_snapshots_versions_and_deleted(self) -> None:
        _server, client, pump = self.ready()
        s1 = self.push(client, pump, {"a": b"one", "sub/x": b"x"}).snapshot
        s2 = self.push_deleting(client, pump, "a", b"two")
        r = self.read_handle(client, pump)
        pages = self.pages(client, pump, ListSnapshots(rid=0, handle=r), SnapshotList)
        records = [s for p in pages for s in p.snapshots]
        assert [s.id for s in records] == [s1, s2]
        assert [s.delete_mode for s in records] == [False, True]
        pages = self.pages(client, pump, ListVersions(rid=0, handle=r, path="a"), VersionList)
        assert [(v.snapshot, v.until, v.size) for p in pages for v in p.versions] == [(s1, s2, 3), (s2, None, 3)]
        pages = self.pages(client, pump, ListDeleted(rid=0, handle=r, path=""), DeletedList)
        deleted = [d for p in pages for d in p.entries]
        assert "sub/x" in {d.path for d in deleted}
        assert all(d.deleted_in == s2 and d.last_snapshot == s1 for d in deleted)
        missing = self.call(client, pump, ListVersions(rid=0, handle=r, path="nope"))
        assert isinstance(missing, RemoteError) and missing.code == ErrorCode.NO_SUCH_PATH
        bad = self.call(client, pump, ListVersions(rid=0, handle=r, path="../x"))
        assert isinstance(bad, RemoteError) and bad.code == ErrorCode.BAD_PATH

    def test_snapshot_listing_comes_in_pages(self) -> None:
        _server, client, pump = self.ready()
        for n in range(5):
            self.push(client, pump, {"a": bytes([n])})
        r = self.read_handle(client, pump)
        self.patch(stash, "PAGE_BYTES", 100)  # two records per page (each counts 80 bytes)
        pages = self.pages(client, pump, ListSnapshots(rid=0, handle=r), SnapshotList)
        assert len(pages) >= 3 and pages[-1].done and not any(p.done for p in pages[:-1])
        assert [s.id for p in pages for s in p.snapshots] == [1, 2, 3, 4, 5]

    def test_prune_needs_a_rule_and_the_whole_target(self) -> None:
        _server, client, pump = self.ready()
        self.push(client, pump, {"a": b"1"})
        self.push(client, pump, {"a": b"2"})
        r = self.read_handle(client, pump)
        empty = self.call(client, pump, Prune(rid=0, handle=r))
        assert isinstance(empty, RemoteError) and empty.code == ErrorCode.BAD_ARGUMENT
        assert self.push(client, pump, {"b": b"3"}, path="sub").snapshot == 3
        rs = self.read_handle(client, pump, "sub")
        refused = self.call(client, pump, Prune(rid=0, handle=rs, keep_last=1))
        assert isinstance(refused, RemoteError) and refused.code == ErrorCode.PERMISSION_DENIED
        assert "whole target" in refused.message
        dry = self.call(client, pump, Prune(rid=0, handle=r, keep_last=1, dry_run=True))
        assert isinstance(dry, Pruned) and (dry.kept, dry.removed, dry.dry_run) == (1, 2, True)
        assert [d.keep for d in dry.decisions] == [False, False, True]
        done = self.call(client, pump, Prune(rid=0, handle=r, keep_last=1))
        assert isinstance(done, Pruned) and (done.kept, done.removed) == (1, 2)
        pages = self.pages(client, pump, ListSnapshots(rid=0, handle=r), SnapshotList)
        assert [s.id for p in pages for s in p.snapshots] == [3]

    def test_check_reports_a_clean_target(self) -> None:
        _server, client, pump = self.ready()
        self.push(client, pump, {"a": b"data" * 100, "b": b"more"})
        r = self.read_handle(client, pump)

        def more(reply: Message) -> bool:
            return not isinstance(reply, CheckReport)

        report = self.call(client, pump, Check(rid=0, handle=r, verify_data=True), more)
        assert isinstance(report, CheckReport), report
        assert report.ok and report.chunks_checked == 2 and report.files == [] and report.verified_data
