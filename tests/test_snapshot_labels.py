"""Snapshot labels (host, source, tags, warnings) without a network: tag rules, sealing, the wire's bounds, the
server's checks, and the index: a label survives a commit and listing, and an index from before labels reads.

End to end with the real CLIs: tests/test_snapshot_labels_e2e.py.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest
from repo_support import commit, dir_entry, every_target, file_entry

from neotwist.chunking import DEFAULT_PARAMS
from neotwist.client import labels
from neotwist.crypto import AuthenticationFailed
from neotwist.crypto import label as sealing
from neotwist.crypto.keys import MasterKey
from neotwist.server.labels import listed_label, stored_label
from neotwist.server.repository import Repository, index
from neotwist.testing import Kit, committed
from neotwist.wire import label as wire_label
from neotwist.wire import limits, messages
from neotwist.wire.errors import ErrorCode, NeoError, RemoteError
from neotwist.wire.label import LabelError, SnapshotLabel
from neotwist.wire.messages import Commit, ListSnapshots, Prune, SnapshotList

# --- tags as restic takes them -------------------------------------------------------------------------------


def test_push_tags_split_on_commas_keep_order_and_drop_repeats() -> None:
    assert labels.split_tags(["a,b", "c", "b", " d "]) == ["a", "b", "c", "d"]
    assert labels.split_tags([]) == []
    for bad, why in [("a,,b", "empty"), ("x\x1b[2Ky", "control"), ("t" * 129, "at most 128"), ("", "empty")]:
        with pytest.raises(LabelError, match=why):
            labels.split_tags([bad])
    with pytest.raises(LabelError, match="at most 64 tags"):
        labels.split_tags([",".join(f"t{i}" for i in range(65))])


def test_filters_need_every_tag_of_one_option() -> None:
    groups = labels.tag_filter(["a,b", "c"])  # (a and b) or c
    assert labels.matches(["a", "b", "z"], groups)
    assert labels.matches(["c"], groups)
    assert not labels.matches(["a"], groups)
    assert not labels.matches([], groups)
    assert labels.matches([], [])  # no filter: everything
    with pytest.raises(LabelError):
        labels.tag_filter(["ok,b\x07d"])


def record(sid: int, label: SnapshotLabel | None = None, sealed: bytes = b"") -> messages.SnapshotRecord:
    return messages.SnapshotRecord(sid, 1.0, 0, 0, 0, 0, 0, 0, "", False, label, sealed)


def test_keep_tagged_names_matches_and_unreadable_labels_and_the_newest_listed() -> None:
    keys = MasterKey(b"k" * 32).target(b"s" * 16)
    other = MasterKey(b"o" * 32).target(b"s" * 16)
    plain = [record(1, SnapshotLabel(tags=["keep"])), record(2, SnapshotLabel(tags=["daily"])), record(3)]
    read = labels.read_labels(plain, None)  # 3: from before labels, no tags
    assert [x.tags for x in read] == [["keep"], ["daily"], []] and not any(x.unreadable for x in read)
    assert labels.keep_tagged(read, labels.tag_filter(["keep"])) == ([1], 3)
    sealed = [
        record(1),
        record(2, sealed=sealing.seal(keys, SnapshotLabel(tags=["keep", "x"]))),
        record(3, sealed=sealing.seal(other, SnapshotLabel(tags=["daily"]))),  # cannot be opened: kept
        record(4, sealed=sealing.seal(keys, SnapshotLabel(tags=["daily"]))),
    ]
    read = labels.read_labels(sealed, keys)
    assert [x.tags for x in read] == [[], ["keep", "x"], [], ["daily"]]
    assert read[2].unreadable and read[2].label is None
    assert labels.keep_tagged(read, labels.tag_filter(["keep"])) == ([2, 3], 4)


# --- sealing -------------------------------------------------------------------------------------------------


def test_a_sealed_label_hides_its_text_opens_with_the_key_only_and_detects_changes() -> None:
    keys = MasterKey(b"k" * 32).target(b"s" * 16)
    label = SnapshotLabel("laptop-of-alice", "/home/alice/secret-project", ["pre-upgrade"], warnings=3)
    sealed = sealing.seal(keys, label)
    for text in (b"laptop-of-alice", b"secret-project", b"pre-upgrade"):
        assert text not in sealed
    assert sealing.open_label(keys, sealed) == label
    assert sealing.seal(keys, label) != sealed  # a random nonce: equal labels do not show
    assert len(sealing.seal(keys, SnapshotLabel("a"))) == len(sealing.seal(keys, SnapshotLabel("abc")))  # padded
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    with pytest.raises(AuthenticationFailed):
        sealing.open_label(keys, bytes(flipped))
    with pytest.raises(AuthenticationFailed):
        sealing.open_label(MasterKey(b"o" * 32).target(b"s" * 16), sealed)
    with pytest.raises(AuthenticationFailed):
        sealing.open_label(keys, b"\x02" + sealed[1:])


# --- the wire's bounds and the server's checks ------------------------------------------------------------


def test_the_decoder_bounds_every_label_field() -> None:
    def commit_frame(**label: Any) -> bytes:
        # encoded by hand (as a hostile client would): the struct itself does not check on construction
        return messages.encode(Commit(rid=1, handle=1, label=SnapshotLabel(**label)))

    ok = messages.decode(commit_frame(host="h", source="/s", tags=["a"], warnings=2))
    assert isinstance(ok, Commit) and ok.label == SnapshotLabel("h", "/s", ["a"], 2)
    for bad in ({"tags": ["t"] * 65}, {"tags": ["t" * 129]}, {"tags": [""]}, {"host": "h" * 256},
                {"source": "s" * 4097}, {"warnings": -1}):  # fmt: skip
        with pytest.raises(msgspec.ValidationError):
            messages.decode(commit_frame(**bad))
    with pytest.raises(msgspec.ValidationError):
        messages.decode(messages.encode(Commit(rid=1, handle=1, sealed_label=b"x" * (wire_label.MAX_SEALED_LABEL + 1))))
    many = list(range(1, limits.MAX_PRUNE_LISTED + 2))  # prune's tag keep set
    with pytest.raises(msgspec.ValidationError):
        messages.decode(messages.encode(Prune(rid=1, handle=1, keep_tagged=many, tagged_through=len(many))))
    prune = messages.decode(messages.encode(Prune(rid=1, handle=1, keep_tagged=many[:-1], tagged_through=9)))
    assert isinstance(prune, Prune) and len(prune.keep_tagged) == limits.MAX_PRUNE_LISTED


def test_the_server_stores_labels_of_the_targets_kind_only() -> None:
    label = SnapshotLabel("h", "/src", ["a", "b"], 1)
    assert listed_label(False, stored_label(False, label, b"")) == (label, b"")
    assert stored_label(False, None, b"") == b"" and listed_label(False, b"") == (None, b"")
    assert listed_label(True, stored_label(True, None, b"sealed")) == (None, b"sealed")
    with pytest.raises(NeoError) as e:
        stored_label(True, label, b"")  # plaintext would leak what an encrypted target keeps from the server
    assert e.value.code == ErrorCode.ENCRYPTION_MISMATCH
    with pytest.raises(NeoError) as e:
        stored_label(False, None, b"sealed")
    assert e.value.code == ErrorCode.ENCRYPTION_MISMATCH
    for bad in (SnapshotLabel(tags=["a", "a"]), SnapshotLabel(tags=["a,b"]), SnapshotLabel(host="x\x1b]0;t\x07")):
        with pytest.raises(NeoError) as e:
            stored_label(False, bad, b"")
        assert e.value.code == ErrorCode.BAD_ARGUMENT


def snapshot_records(conn: Any, target: str) -> list[messages.SnapshotRecord]:
    h = conn.open(target).handle
    pages: list[SnapshotList] = []
    conn.call(ListSnapshots(rid=0, handle=h), more=lambda m: pages.append(m) or not m.done)
    return [r for p in pages for r in p.snapshots]


def test_a_session_commits_the_label_and_lists_it_back(kit: Kit) -> None:
    alice = kit.connect("alice")
    label = SnapshotLabel("laptop", "/home/alice/docs", ["daily", "db"], warnings=2)
    committed(alice.push({"a": b"alpha"}, label=label))
    committed(alice.push({"a": b"beta"}))  # an older client: no label
    refused = alice.push({"a": b"gamma"}, label=SnapshotLabel(tags=["bad\x07"]))
    assert isinstance(refused, RemoteError) and refused.code == ErrorCode.BAD_ARGUMENT, refused
    refused = alice.push({"a": b"gamma"}, sealed_label=b"opaque")
    assert isinstance(refused, RemoteError) and refused.code == ErrorCode.ENCRYPTION_MISMATCH, refused
    first, second = snapshot_records(alice, "t")
    assert first.label == label and first.sealed_label == b""
    assert second.label is None and second.sealed_label == b""

    # prune's tag rule: ids the client found tagged, and everything after the newest id it listed
    h = alice.open("t").handle
    refused = alice.call(Prune(rid=0, handle=h, keep_tagged=[1]))
    assert isinstance(refused, RemoteError) and refused.code == ErrorCode.BAD_ARGUMENT, refused
    committed(alice.push({"a": b"delta"}))  # 3: committed after the client's listing of 1 and 2
    pruned = alice.call(Prune(rid=0, handle=h, keep_tagged=[1], tagged_through=2, dry_run=True))
    assert [(d.id, d.keep, d.reasons) for d in pruned.decisions] == [
        (1, True, ["tag"]), (2, False, []), (3, True, ["latest", "tag"])
    ]  # fmt: skip


# --- the index ---------------------------------------------------------------------------------------------


def test_labels_are_stored_with_the_snapshot_and_an_older_index_reads_and_migrates(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    t = repo.create_target(1, "home", encrypted=False, chunker=DEFAULT_PARAMS)
    commit(t, [dir_entry(""), file_entry("a", b"one", target=t)], 1.0)
    push = t.begin_push("", True)
    push.add([dir_entry(""), file_entry("a", b"two", target=t)])
    stored = wire_label.encode(SnapshotLabel("h", "/src", ["x"], 0))
    assert push.commit(2.0, None, stored).snapshot.label == stored
    assert [s.label for s in t.snapshots()] == [b"", stored]
    assert t.latest() is not None and t.latest().label == stored  # type: ignore[union-attr]
    repo.close()

    db_path = next((tmp_path / "repo").glob("t*")) / "index.sqlite"
    with sqlite3.connect(db_path) as db:  # as the previous version left it: no label column
        db.execute("ALTER TABLE snapshots DROP COLUMN label")
        db.execute(f"PRAGMA user_version={index.SCHEMA_VERSION + len(index.INDEX_MIGRATIONS) - 1}")

    tool = Repository(tmp_path / "repo", read_only=True)  # neo-admin check beside an older server: no migration
    [old] = every_target(tool)
    assert [s.label for s in old.snapshots()] == [b"", b""] and old.snapshot(2) is not None
    assert old.check().ok
    tool.close()

    repo = Repository(tmp_path / "repo")  # the server opens it: migrated, old snapshots have no label
    [t] = every_target(repo)
    assert [(s.id, s.label) for s in t.snapshots()] == [(1, b""), (2, b"")]
    commit(t, [dir_entry(""), file_entry("a", b"three", target=t)], 3.0)
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == index.SCHEMA_VERSION + len(index.INDEX_MIGRATIONS)
    repo.close()


def test_the_largest_label_seals_within_the_bound_and_a_deep_source_is_cut_not_refused() -> None:
    keys = MasterKey(b"k" * 32).target(b"s" * 16)
    wide = "\U0001f600"  # 4 UTF-8 bytes
    largest = SnapshotLabel(
        wide * wire_label.MAX_HOST,
        wide * 4096,
        [f"{i:02}" + wide * (wire_label.MAX_TAG - 2) for i in range(wire_label.MAX_TAGS)],
        2**63 - 1,
    )
    sealed = sealing.seal(keys, largest)
    assert len(sealed) <= wire_label.MAX_SEALED_LABEL
    assert sealing.open_label(keys, sealed) == largest
    deep = "/" + "/".join(["d" * 200] * 30)
    label = labels.push_label(deep, ["t"], host="h\x1bx")
    assert len(label.source) == 4096 and label.source.endswith("...")
    assert label.host == "h\\x1bx"  # escaped, never refused: the push goes on
    wire_label.check_label(label)


def test_a_plaintext_label_listed_for_an_encrypted_target_is_not_believed() -> None:
    keys = MasterKey(b"k" * 32).target(b"s" * 16)
    [forged] = labels.read_labels([record(1, SnapshotLabel(tags=["keep"]))], keys)
    assert forged.label is None and "plaintext label" in forged.unreadable
    assert labels.keep_tagged([forged], labels.tag_filter(["other"])) == ([1], 1)  # kept: its tags are unknown
