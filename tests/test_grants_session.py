"""Grants in the server session (in memory): a grant's sub-path is the grantee's root, and nothing outside it can
be listed, pulled, pushed or learned: not by '..', not by chunk ids learned elsewhere, not through snapshot ids,
counts or sizes in replies. Rights are checked on every operation and grant changes apply at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_admin import admin

from neotwist.server.accounts import AccountStore
from neotwist.server.rights import Right
from neotwist.server.session import ServerSession
from neotwist.testing import Conn, Kit, chunk, committed
from neotwist.wire.errors import ErrorCode, RemoteError
from neotwist.wire.messages import (
    Abort,
    Check,
    CheckReport,
    ChunkDelta,
    ChunkReply,
    Close,
    Commit,
    Entry,
    FileIds,
    Get,
    GetFiles,
    Have,
    List,
    ListDeleted,
    ListSnapshots,
    ListTargets,
    ListVersions,
    Missing,
    Ok,
    Open,
    Opened,
    Prune,
    PushBegin,
    PushDeleted,
    PushEntries,
    Put,
    PutDelta,
    RemoveTarget,
    Sign,
)


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = Kit(tmp_path)
    k.account("alice")
    k.account("alice.viewer", parent="alice")
    k.account("bob")
    yield k
    k.close()


def documents(alice: Conn) -> None:
    """documents: presentations/{deck, 2024/q1} and private/{salary}, pushed in three snapshots."""
    committed(alice.push({"presentations/deck": b"slides v1", "private/salary": b"a secret number"}, "documents"))
    committed(alice.push({"diary": b"dear diary"}, "documents", "private"))
    committed(alice.push({"q1": b"first quarter"}, "documents", "presentations/2024"))


def refused(reply: object, code: ErrorCode, *words: str) -> None:
    assert isinstance(reply, RemoteError), reply
    assert reply.code == code, (reply.code, reply.message)
    for word in words:
        assert word in reply.message, reply.message


def test_read_grant_on_sub_path_sees_only_it(kit: Kit) -> None:
    alice = kit.connect("alice")
    documents(alice)
    kit.accounts.grant("alice.viewer", "alice", "documents", "presentations", Right.READ, "slides")
    viewer = kit.connect("alice.viewer")

    targets = viewer.call(ListTargets(rid=0)).targets
    assert [(t.name, t.right, t.owner, t.snapshots, t.latest, t.files, t.stored_bytes) for t in targets] == [
        ("slides", "read", "alice", 2, 3, 2, 0)  # snapshot 2 only touched private/: not this view's
    ]
    opened = viewer.open("slides")
    assert isinstance(opened, Opened) and opened.latest == 3
    entries = viewer.listing(opened.handle)
    assert sorted(entries) == ["", "2024", "2024/q1", "deck"]
    got: list[ChunkReply] = []
    viewer.call(Get(rid=0, handle=opened.handle, snapshot=3, path="deck", ids=[entries["deck"].chunks]),
                more=lambda m: got.append(m) or False)  # fmt: skip
    assert got[0].data == b"slides v1"
    # a sub-path of the grant is fine; history before the sub-path existed is not a snapshot of this view
    sub = viewer.open("slides", "2024")
    assert sorted(viewer.listing(sub.handle)) == ["", "q1"]
    assert sorted(viewer.listing(opened.handle, snapshot=1)) == ["", "deck"]


def test_nothing_outside_the_grant_is_reachable(kit: Kit) -> None:
    alice = kit.connect("alice")
    documents(alice)
    committed(alice.push({"w": b"work"}, "work"))
    kit.accounts.grant("alice.viewer", "alice", "documents", "presentations", Right.READ, "slides")
    viewer = kit.connect("alice.viewer")
    h = viewer.open("slides").handle

    for path in ["../private", "../private/salary", "a/../../private", "/private", "./x", "x//y", "a\\..\\b", "x\0"]:
        refused(viewer.open("slides", path), ErrorCode.BAD_PATH)
        refused(viewer.listing(h, path=path), ErrorCode.BAD_PATH)
    salary = chunk(b"a secret number")[0]
    refused(viewer.call(Get(rid=0, handle=h, snapshot=3, path="../private/salary", ids=[salary])), ErrorCode.BAD_PATH)
    # a chunk id learned elsewhere, asked for through a file inside the grant
    refused(viewer.call(Get(rid=0, handle=h, snapshot=3, path="deck", ids=[salary])), ErrorCode.CHUNK_NOT_IN_FILE)
    # the owner's other targets, the owner's target by its own name, and a sub-account's "own" target
    for name in ["work", "documents", "private"]:
        refused(viewer.open(name), ErrorCode.NO_SUCH_TARGET)
    refused(viewer.open("mine", mode="push", create=True), ErrorCode.NO_SUCH_TARGET, "no targets of its own")
    # snapshot 2 changed only private/: for this view it does not exist
    refused(viewer.listing(h, snapshot=2), ErrorCode.NO_SUCH_SNAPSHOT)
    refused(viewer.call(Get(rid=0, handle=h, snapshot=2, path="deck", ids=[chunk(b"slides v1")[0]])),
            ErrorCode.NO_SUCH_SNAPSHOT)  # fmt: skip
    # error texts speak of the grant, never of the owner's tree
    missing = viewer.listing(h, path="nothing/here")
    refused(missing, ErrorCode.NO_SUCH_PATH, "'nothing/here'")
    assert "presentations" not in missing.message


def test_append_grant_have_and_commit_cannot_use_chunks_from_elsewhere(kit: Kit) -> None:
    alice = kit.connect("alice")
    documents(alice)
    kit.accounts.grant("alice.viewer", "alice", "documents", "presentations", Right.APPEND, "slides")
    viewer = kit.connect("alice.viewer")
    h = viewer.open("slides", mode="push").handle
    assert isinstance(viewer.call(PushBegin(rid=0, handle=h)), Ok)
    salary, _ = chunk(b"a secret number")
    deck, _ = chunk(b"slides v1")
    have = viewer.call(Have(rid=0, handle=h, ids=[salary, deck]))
    assert isinstance(have, Missing) and have.bitmap == b"\x01"  # salary "missing", deck present (below root)
    # referencing the outside chunk without uploading it: as if the server did not have it
    viewer.post(PushEntries(rid=0, handle=h, entries=[
        Entry("", "d", 0o755, 0, 0), Entry("stolen", "f", 0o644, 0, 15, salary), Entry("deck", "f", 0o644, 1, 9, deck),
    ]))  # fmt: skip
    refused(viewer.call(Commit(rid=0, handle=h)), ErrorCode.MISSING_CHUNKS)
    # uploading it proves the client has the bytes: then it may commit
    viewer.post(Put(rid=0, handle=h, id=salary, codec=0, size=15, data=b"a secret number"))
    done = committed(viewer.call(Commit(rid=0, handle=h)))
    # files below the root only; new_chunks/new_bytes say what this push uploaded (the salary chunk, stored
    # already), never what was new to the store, which would tell that the content exists elsewhere
    assert (done.files, done.stored_bytes, done.new_chunks, done.new_bytes) == (3, 0, 1, 15)


@pytest.mark.parametrize("quota", [None, "tight"])
def test_a_confined_push_cannot_tell_whether_content_exists_elsewhere(kit: Kit, quota: str | None) -> None:
    """Guessing the content of private/salary from inside presentations/: a right and a wrong guess of the same
    size get the same answer, in ``committed`` and, with a quota that the new bytes would pass, in the refusal
    (early, at put, and at commit), which also does not show the owner's totals."""
    alice = kit.connect("alice")
    documents(alice)
    kit.accounts.grant("alice.viewer", "alice", "documents", "presentations", Right.APPEND, "slides")
    alice_account = kit.accounts.get("alice")
    assert alice_account is not None
    if quota:
        from neotwist.server.quota import account_usage

        kit.accounts.set_quota("alice", quota=account_usage(kit.repository, alice_account).used + 10)
    viewer = kit.connect("alice.viewer")
    replies = []
    for guess in (b"a secret number", b"a wrong number!"):  # the first one is right, both 15 bytes
        reply = viewer.push({"guess": guess}, "slides")
        if isinstance(reply, RemoteError):
            replies.append((reply.code, reply.message))
        else:
            replies.append((reply.new_chunks, reply.new_bytes, reply.files, reply.stored_bytes))
    assert replies[0] == replies[1], replies
    if quota:
        code, message = replies[0]
        assert code == ErrorCode.QUOTA_EXCEEDED and "alice's quota is full" in message and "15 B" in message
    else:
        assert replies[0] == (1, 15, 3, 0)


def test_rights_are_enforced_and_refusals_change_nothing(kit: Kit) -> None:
    alice = kit.connect("alice")
    documents(alice)
    target = kit.repository.find_target(kit.accounts.get("alice").id, "documents")  # type: ignore[union-attr]
    assert target is not None
    kit.accounts.grant("alice.viewer", "alice", "documents", "presentations", Right.READ, "slides")
    viewer = kit.connect("alice.viewer")
    refused(viewer.push({"x": b"new"}, "slides"), ErrorCode.PERMISSION_DENIED,
            "push needs the append right on slides", "alice.viewer has read")  # fmt: skip
    kit.accounts.grant("alice.viewer", "alice", "documents", "presentations", Right.APPEND, "slides")
    refused(viewer.push({"x": b"new"}, "slides", delete=True), ErrorCode.PERMISSION_DENIED,
            "push --delete needs the write right on slides", "alice.viewer has append")  # fmt: skip
    assert target.latest().id == 3  # type: ignore[union-attr]
    committed(viewer.push({"x": b"new"}, "slides"))
    kit.accounts.grant("alice.viewer", "alice", "documents", "presentations", Right.WRITE, "slides")
    done = committed(viewer.push({"x": b"new"}, "slides", delete=True))
    assert done.deleted == 3  # deck, 2024, 2024/q1: only below the root
    assert sorted(alice.listing(alice.open("documents").handle)) == [
        "", "presentations", "presentations/x", "private", "private/diary", "private/salary",
    ]  # fmt: skip


def test_revoke_applies_to_open_handles_at_once(kit: Kit) -> None:
    alice = kit.connect("alice")
    documents(alice)
    kit.accounts.grant("alice.viewer", "alice", "documents", "presentations", Right.APPEND, "slides")
    viewer = kit.connect("alice.viewer")
    h = viewer.open("slides").handle
    p = viewer.open("slides", mode="push").handle
    kit.accounts.revoke("alice.viewer", "slides")
    refused(viewer.listing(h), ErrorCode.NO_SUCH_TARGET, "revoked")
    refused(viewer.call(PushBegin(rid=0, handle=p)), ErrorCode.NO_SUCH_TARGET, "revoked")
    refused(viewer.open("slides"), ErrorCode.NO_SUCH_TARGET)
    # a grant that now points elsewhere under the same name is not the handle's any more
    kit.accounts.grant("alice.viewer", "alice", "documents", "private", Right.READ, "slides")
    refused(viewer.listing(h), ErrorCode.NO_SUCH_TARGET, "open it again")
    assert sorted(viewer.listing(viewer.open("slides").handle)) == ["", "diary", "salary"]


def test_whole_target_grant_to_another_account(kit: Kit) -> None:
    alice = kit.connect("alice")
    documents(alice)
    kit.accounts.grant("bob", "alice", "documents", "", Right.READ, "alices-docs")
    bob = kit.connect("bob")
    committed(bob.push({"b": b"bob's own"}, "mine"))
    targets = {t.name: t for t in bob.call(ListTargets(rid=0)).targets}
    assert sorted(targets) == ["alices-docs", "mine"]
    assert (targets["alices-docs"].right, targets["alices-docs"].owner, targets["alices-docs"].latest) == (
        "read", "alice", 3,
    )  # fmt: skip
    assert (targets["mine"].right, targets["mine"].owner) == ("full", "")
    h = bob.open("alices-docs").handle
    assert "private/salary" in bob.listing(h)
    # bob's push to alice's target by its grant is refused; his own target is untouched by alice's grant
    refused(bob.push({"x": b"y"}, "alices-docs"), ErrorCode.PERMISSION_DENIED, "append")


def test_stash_requests_through_a_sub_path_grant_say_nothing_of_the_rest(kit: Kit) -> None:
    from neotwist.wire.messages import Check, CheckReport, ListSnapshots, Prune, Pruned, SnapshotList

    alice = kit.connect("alice")
    documents(alice)
    kit.accounts.grant("alice.viewer", "alice", "documents", "presentations", Right.FULL, "slides")
    viewer = kit.connect("alice.viewer")
    h = viewer.open("slides").handle
    pages: list[SnapshotList] = []
    viewer.call(ListSnapshots(rid=0, handle=h), more=lambda m: pages.append(m) or not m.done)
    records = [r for p in pages for r in p.snapshots]
    # snapshot 2 only touched private/: not listed; counts are those below the root only
    assert [(r.id, r.files, r.new_bytes, r.root) for r in records] == [(1, 1, 0, ""), (3, 2, 0, "2024")]
    report = viewer.call(Check(rid=0, handle=h), more=lambda m: not isinstance(m, CheckReport))
    assert isinstance(report, CheckReport) and report.ok
    # only the chunks below the root were read: deck and 2024/q1
    assert (report.chunks_checked, report.bytes_checked, report.problems) == (2, 22, [])
    # prune is a whole-target operation: even full on a part of it is not enough
    refused(viewer.call(Prune(rid=0, handle=h, keep_last=1)), ErrorCode.PERMISSION_DENIED)
    # full on the whole target is; read on the whole target is not (and names the right)
    kit.accounts.grant("alice.viewer", "alice", "documents", "", Right.READ, "docs")
    whole = viewer.open("docs").handle
    refused(viewer.call(Prune(rid=0, handle=whole, keep_last=1)), ErrorCode.PERMISSION_DENIED,
            "prune needs the full right on docs; alice.viewer has read")  # fmt: skip
    kit.accounts.grant("alice.viewer", "alice", "documents", "", Right.FULL, "docs")
    pruned = viewer.call(Prune(rid=0, handle=viewer.open("docs").handle, keep_last=1))
    assert isinstance(pruned, Pruned) and (pruned.kept, pruned.removed) == (1, 2)
    # narrowing a grant applies to handles already open
    full = viewer.open("docs").handle
    kit.accounts.grant("alice.viewer", "alice", "documents", "", Right.APPEND, "docs")
    refused(viewer.call(Prune(rid=0, handle=full, keep_last=1)), ErrorCode.PERMISSION_DENIED, "alice.viewer has append")


def test_grant_root_is_a_component_boundary_and_odd_paths_stay_inside(kit: Kit) -> None:
    """A grant on ``pres`` sees nothing of ``pres-old`` or ``presentations``; symlinks are data (never followed);
    percent-encoded, look-alike-dot, other-case and other-normalization names are just names below the root."""
    alice = kit.connect("alice")
    committed(alice.push({
        "pres/deck": b"mine to see", "pres-old/secret": b"not mine", "presentations/secret": b"not mine either",
        "Pres/secret": b"other case", "caf\u00e9/x": b"nfc",
    }, "documents", extra_entries=[Entry("pres/escape", "l", 0o777, 0, 0, link="../pres-old/secret")]))  # fmt: skip
    kit.accounts.grant("alice.viewer", "alice", "documents", "pres", Right.APPEND, "p")
    viewer = kit.connect("alice.viewer")
    h = viewer.open("p").handle
    entries = viewer.listing(h)
    assert sorted(entries) == ["", "deck", "escape"]
    assert entries["escape"].kind == "l" and entries["escape"].link == "../pres-old/secret"
    secret = chunk(b"not mine")[0]
    refused(viewer.call(Get(rid=0, handle=h, snapshot=1, path="escape", ids=[secret])), ErrorCode.NO_SUCH_PATH)
    for name in ["%2e%2e/pres-old", "%2E%2E%2Fpres-old", "\u2024\u2024/pres-old", "\uff0e\uff0e/pres-old",
                 "..\u200b/pres-old", "-old", "../Pres", "cafe\u0301"]:  # fmt: skip
        reply = viewer.listing(h, path=name)
        assert isinstance(reply, RemoteError) and reply.code in (ErrorCode.NO_SUCH_PATH, ErrorCode.BAD_PATH), name
    ph = viewer.open("p", mode="push").handle
    assert isinstance(viewer.call(PushBegin(rid=0, handle=ph)), Ok)
    mine, other_case = chunk(b"mine to see")[0], chunk(b"other case")[0]
    have = viewer.call(Have(rid=0, handle=ph, ids=[secret, mine, other_case, chunk(b"not mine either")[0]]))
    assert isinstance(have, Missing) and have.bitmap == b"\x0d"  # only "mine to see" is present for this grant


def test_errors_name_paths_as_the_grantee_asked_for_them(kit: Kit) -> None:
    """A missing, deleted or damaged path is named relative to what the client opened (a single-file handle's
    requests say ''), never by where the grant's root lies in the owner's target."""
    from neotwist.server.repository import packs
    from neotwist.wire.messages import ListVersions

    alice = kit.connect("alice")
    documents(alice)  # snapshots 1..3
    committed(alice.push({"deck": b"slides v2"}, "documents", "presentations", delete=True))  # 4: 2024/q1 deleted
    kit.accounts.grant("alice.viewer", "alice", "documents", "presentations", Right.READ, "slides")
    viewer = kit.connect("alice.viewer")

    def only_grant_terms(reply: object, code: ErrorCode, *words: str) -> None:
        refused(reply, code, *words)
        assert isinstance(reply, RemoteError) and "presentations" not in reply.message, reply.message

    only_grant_terms(viewer.listing(viewer.open("slides", "2024/nope").handle), ErrorCode.NO_SUCH_PATH,
                     "nothing at '2024/nope' in snapshot 4")  # fmt: skip
    deleted = viewer.open("slides", "2024/q1").handle  # a file deleted in the latest snapshot
    only_grant_terms(viewer.listing(deleted), ErrorCode.NO_SUCH_PATH,
                     "'2024/q1' was deleted in that snapshot; snapshot 3 holds its last version",
                     "--snapshot 3", "neo-ls --versions 2024/q1")  # fmt: skip
    assert sorted(viewer.listing(deleted, snapshot=3)) == [""]  # ... and that snapshot has it
    only_grant_terms(viewer.listing(viewer.open("slides", "2024").handle, path="q1"), ErrorCode.NO_SUCH_PATH,
                     "'2024/q1' was deleted in that snapshot")  # fmt: skip
    only_grant_terms(viewer.listing(viewer.open("slides").handle, snapshot=1, path="2024/q1"),
                     ErrorCode.NO_SUCH_PATH, "nothing at '2024/q1' in snapshot 1; it first appears in snapshot 3")
    only_grant_terms(viewer.call(ListVersions(rid=0, handle=viewer.open("slides").handle, path="gone")),
                     ErrorCode.NO_SUCH_PATH, "no stored version of 'gone'")  # fmt: skip

    # A rotten chunk, fetched through a handle opened at the file itself: named 'deck', not '' nor its full path.
    target = kit.repository.find_target(kit.accounts.get("alice").id, "documents")  # type: ignore[union-attr]
    assert target is not None
    cid = chunk(b"slides v2")[0]
    pack, offset, _length, _codec, _size = target.locate([cid])[cid]
    with open(target.chunks.packs.path(pack), "r+b") as f:
        f.seek(offset + packs.HEADER_SIZE)
        f.write(b"X")
    one = viewer.open("slides", "deck").handle
    only_grant_terms(viewer.call(Get(rid=0, handle=one, snapshot=4, path="", ids=[cid])), ErrorCode.DAMAGED, "deck: ")


def _revoked_requests(h: int, p: int, deck: bytes) -> dict[type, object]:
    """One request of every kind that names a handle: ``h`` a read handle, ``p`` a push handle with a push begun."""
    new, data = chunk(b"uploaded after the revoke")
    delta = ChunkDelta(new, len(data), [deck], [(2**32 - 1, len(data))], 0, len(data), data)
    return {
        List: List(rid=0, handle=h, snapshot=None, path=""),
        ListSnapshots: ListSnapshots(rid=0, handle=h),
        ListVersions: ListVersions(rid=0, handle=h, path="deck"),
        ListDeleted: ListDeleted(rid=0, handle=h, path=""),
        Check: Check(rid=0, handle=h, verify_data=True),
        Get: Get(rid=0, handle=h, snapshot=3, path="deck", ids=[deck]),
        GetFiles: GetFiles(rid=0, handle=h, snapshot=3, files=[FileIds(path="deck", ids=[deck])]),
        Have: Have(rid=0, handle=p, ids=[deck]),
        Put: Put(rid=0, handle=p, id=new, codec=0, size=len(data), data=data),
        Sign: Sign(rid=0, handle=p, ids=[deck]),
        PutDelta: PutDelta(rid=0, handle=p, deltas=[delta]),
        PushEntries: PushEntries(rid=0, handle=p, entries=[Entry("", "d", 0o755, 0, 0)]),
        PushDeleted: PushDeleted(rid=0, handle=p, paths=["deck"]),
        Commit: Commit(rid=0, handle=p),
        PushBegin: PushBegin(rid=0, handle=h),  # a second push handle is opened for it below
        Prune: Prune(rid=0, handle=h, keep_last=1),
        RemoveTarget: RemoveTarget(rid=0, handle=h),
        Close: Close(rid=0, handle=h),
    }


@pytest.mark.parametrize("change", ["revoke", "re-point"])
def test_every_handle_request_sees_a_revoke_on_an_open_connection(kit: Kit, change: str) -> None:
    """Not only list and push: get, snapshots, versions, deleted, check, have, put, entries... each re-resolves
    the grant, so after ``grant remove`` (or the grant re-pointed at another path) nothing more is read or
    written through a handle opened before. The set of request types is taken from the session's dispatch
    table, so a new handle request without this protection fails here."""
    alice = kit.connect("alice")
    documents(alice)
    kit.accounts.grant("alice.viewer", "alice", "documents", "presentations", Right.APPEND, "slides")
    viewer = kit.connect("alice.viewer")
    h = viewer.open("slides").handle
    deck = viewer.listing(h)["deck"].chunks
    p = viewer.open("slides", mode="push").handle
    b = viewer.open("slides", mode="push").handle
    assert isinstance(viewer.call(PushBegin(rid=0, handle=p)), Ok)
    target = kit.repository.find_target(kit.accounts.get("alice").id, "documents")  # type: ignore[union-attr]
    assert target is not None
    before = (target.latest(), target.usage())
    if change == "revoke":
        kit.accounts.revoke("alice.viewer", "slides")
    else:
        kit.accounts.revoke("alice.viewer", "slides")
        kit.accounts.grant("alice.viewer", "alice", "documents", "private", Right.APPEND, "slides")

    requests = _revoked_requests(h, p, deck)
    requests[PushBegin] = PushBegin(rid=0, handle=b)
    with_handle = {t for t in ServerSession._handlers if "handle" in t.__struct_fields__}
    assert with_handle == set(requests) | {Abort}, with_handle ^ set(requests)
    for kind, request in requests.items():
        if kind is Close:
            continue  # closing is always allowed (below)
        if kind is Put:  # a put is answered only by an error, once its batch is stored (at the next tick)
            out: list[object] = []
            viewer.client.request(request).addBoth(out.append)
            viewer.pump.flush()
            kit.clock.advance(0)
            viewer.pump.flush()
            reply = out[0].value if out else None  # type: ignore[attr-defined]
        else:
            reply = viewer.call(request, more=lambda m: False)
        assert isinstance(reply, RemoteError), (kind, reply)
        if kind.__name__ in ("Prune", "RemoveTarget"):
            continue  # refused anyway: whole-target operations through a sub-path grant
        assert reply.code == ErrorCode.NO_SUCH_TARGET and "open it again" in reply.message, (kind, reply)
    assert (target.latest(), target.usage()) == before  # nothing was stored or committed after the change
    assert isinstance(viewer.call(Abort(rid=0, handle=p)), Ok)
    assert isinstance(viewer.call(requests[Close]), Ok)


@pytest.mark.parametrize("change", ["revoke", "re-point", "narrow"])
@pytest.mark.parametrize("by", ["another store", "neo-admin"])
def test_a_grant_changed_outside_this_process_stops_an_open_handle_at_once(kit: Kit, by: str, change: str) -> None:
    """The session keeps a handle's resolved grant until the account store changes (RequestContext.recheck). A
    change made through another AccountStore (its own connections, as ``neo-admin`` has) or by neo-admin itself
    in another process never passes through the server's store: only SQLite's change counter can tell, and the
    very next request on a handle whose grant was just resolved and kept must still see it."""
    alice = kit.connect("alice")
    documents(alice)
    kit.accounts.grant("alice.viewer", "alice", "documents", "presentations", Right.APPEND, "slides")
    viewer = kit.connect("alice.viewer")
    h = viewer.open("slides").handle
    deck = viewer.listing(h)["deck"].chunks
    p = viewer.open("slides", mode="push").handle
    assert isinstance(viewer.call(PushBegin(rid=0, handle=p)), Ok)
    get = Get(rid=0, handle=h, snapshot=3, path="deck", ids=[deck])
    have = Have(rid=0, handle=p, ids=[deck])
    for _ in range(2):  # resolved, then served from what the handle kept
        assert isinstance(viewer.call(get), ChunkReply)
        assert isinstance(viewer.call(have), Missing)
    if by == "neo-admin":
        steps = {
            "revoke": [("grant", "remove", "alice.viewer", "slides")],
            "re-point": [("grant", "remove", "alice.viewer", "slides"),
                         ("grant", "add", "alice.viewer", "alice/documents/private", "--right", "append", "--as",
                          "slides")],
            "narrow": [("grant", "add", "alice.viewer", "alice/documents/presentations", "--right", "read", "--as",
                        "slides")],
        }[change]  # fmt: skip
        for step in steps:
            ran = admin(kit.tmp, *step)
            assert ran.returncode == 0, ran.stderr
    else:
        other = AccountStore(kit.tmp / "accounts.sqlite", bcrypt_rounds=4)
        if change in ("revoke", "re-point"):
            other.revoke("alice.viewer", "slides")
        if change == "re-point":
            other.grant("alice.viewer", "alice", "documents", "private", Right.APPEND, "slides")
        if change == "narrow":
            other.grant("alice.viewer", "alice", "documents", "presentations", Right.READ, "slides")
    if change == "narrow":  # the same root with less: reads go on, the push is refused
        assert isinstance(viewer.call(get), ChunkReply)
        refused(viewer.call(have), ErrorCode.PERMISSION_DENIED, "alice.viewer has read")
    else:
        refused(viewer.call(get), ErrorCode.NO_SUCH_TARGET, "open it again")
        refused(viewer.call(have), ErrorCode.NO_SUCH_TARGET, "open it again")


def test_a_target_removed_by_neo_admin_stops_open_handles_at_once(kit: Kit) -> None:
    """``neo-admin target remove`` in another process, while the server runs: the owner's handle (which never
    looks at grants) and a grantee's, both just checked and kept, are refused at their next request; the
    catalog's change counter is what tells the server."""
    alice = kit.connect("alice")
    documents(alice)
    kit.accounts.grant("alice.viewer", "alice", "documents", "presentations", Right.READ, "slides")
    viewer = kit.connect("alice.viewer")
    mine, theirs = alice.open("documents").handle, viewer.open("slides").handle
    deck = viewer.listing(theirs)["deck"].chunks
    own = Get(rid=0, handle=mine, snapshot=3, path="presentations/deck", ids=[deck])
    granted = Get(rid=0, handle=theirs, snapshot=3, path="deck", ids=[deck])
    for _ in range(2):
        assert isinstance(alice.call(own), ChunkReply) and isinstance(viewer.call(granted), ChunkReply)
    ran = admin(kit.tmp, "target", "remove", "alice", "documents", "--yes")
    assert ran.returncode == 0, ran.stderr
    refused(alice.call(own), ErrorCode.NO_SUCH_TARGET, "open it again")
    refused(viewer.call(granted), ErrorCode.NO_SUCH_TARGET, "open it again")


def test_a_handle_looks_its_grant_up_again_only_after_a_change(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cost this saves: a grantee pulling many small files looked its grant up (a new connection to the
    account store) on every get. Now it does once, and again after any change to the store (even one that does
    not concern it: the store does not say what changed), and still answers."""
    alice = kit.connect("alice")
    documents(alice)
    kit.accounts.grant("alice.viewer", "alice", "documents", "presentations", Right.READ, "slides")
    viewer = kit.connect("alice.viewer")
    h = viewer.open("slides").handle
    deck = viewer.listing(h)["deck"].chunks
    lookups: list[str] = []
    find_grant = kit.accounts.find_grant

    def counted(grantee_id: int, name: str) -> object:
        lookups.append(name)
        return find_grant(grantee_id, name)

    monkeypatch.setattr(kit.accounts, "find_grant", counted)
    get = Get(rid=0, handle=h, snapshot=3, path="deck", ids=[deck])
    for _ in range(20):
        assert isinstance(viewer.call(get), ChunkReply)
    assert lookups == []  # the listing above resolved it; nothing changed since
    kit.account("carol")
    for _ in range(20):
        assert isinstance(viewer.call(get), ChunkReply)
    assert lookups == ["slides"]


def _open_push(conn: Conn, name: str, *, keep_history: bool | None = None, encrypted: bool = False) -> object:
    return conn.call(Open(rid=0, target=name, path="", mode="push", create=True, keep_history=keep_history,
                          encrypted=encrypted, key_check=b"k" * 32 if encrypted else b""))  # fmt: skip


def test_append_grantee_cannot_create_a_target_without_history(kit: Kit) -> None:
    """An append key that could create its target as no-history would then drop version 1 with its next push.
    Creating without history needs full on the whole target; a sub-path grantee (even full) cannot impose it on
    the owner's target either. Refused: nothing is created."""
    alice_id = kit.accounts.get("alice").id  # type: ignore[union-attr]
    kit.accounts.grant("alice.viewer", "alice", "laptop", "", Right.APPEND, "laptop")
    kit.accounts.grant("alice.viewer", "alice", "documents", "mine", Right.FULL, "part")
    viewer = kit.connect("alice.viewer")
    refused(_open_push(viewer, "laptop", keep_history=False), ErrorCode.PERMISSION_DENIED,
            "creating a target that keeps no history needs the full right on the whole target",
            "alice.viewer has append on all of 'laptop'")  # fmt: skip
    refused(_open_push(viewer, "part", keep_history=False), ErrorCode.PERMISSION_DENIED,
            "alice.viewer has full on a part of 'part'")  # fmt: skip
    assert kit.repository.find_target(alice_id, "laptop") is None
    assert kit.repository.find_target(alice_id, "documents") is None
    # with history (the default) it may create it; then it can never switch history off
    committed(viewer.push({"report": b"version 1"}, "laptop"))
    refused(_open_push(viewer, "laptop", keep_history=False), ErrorCode.PERMISSION_DENIED, "needs the full right")
    committed(viewer.push({"report": b"version 2"}, "laptop"))
    target = kit.repository.find_target(alice_id, "laptop")
    assert target is not None and target.meta.keep_history and len(target.snapshots()) == 2
    # a grantee with full on the whole target may create it without history
    kit.accounts.grant("alice.viewer", "alice", "mirror", "", Right.FULL, "mirror")
    opened = _open_push(viewer, "mirror", keep_history=False)
    assert isinstance(opened, Opened) and opened.keep_history is False


def test_encrypted_create_needs_a_grant_on_the_whole_target(kit: Kit) -> None:
    """A sub-path grantee creating the owner's target encrypted would bind all of it to the grantee's key; a
    whole-target append grantee may (an encrypted backup key: the target holds only what it pushes)."""
    alice_id = kit.accounts.get("alice").id  # type: ignore[union-attr]
    kit.accounts.grant("alice.viewer", "alice", "documents", "laptop", Right.APPEND, "part")
    kit.accounts.grant("alice.viewer", "alice", "vault", "", Right.APPEND, "vault")
    viewer = kit.connect("alice.viewer")
    refused(_open_push(viewer, "part", encrypted=True), ErrorCode.PERMISSION_DENIED,
            "creating an encrypted target needs a grant on the whole target",
            "alice.viewer has append on a part of 'part' only")  # fmt: skip
    assert kit.repository.find_target(alice_id, "documents") is None
    opened = _open_push(viewer, "vault", encrypted=True)
    assert isinstance(opened, Opened) and opened.encrypted and not opened.exists


@pytest.mark.parametrize("right", [Right.APPEND, Right.WRITE])
def test_pushes_below_full_are_refused_on_a_target_without_history(kit: Kit, right: Right) -> None:
    """On a no-history target every commit prunes the older snapshots: an append (or write) push overwriting a
    file would destroy the only copy. So pushing there needs full, at open, at push_begin and at commit (the
    owner may turn history off under an open handle); the owner's snapshot stays as it was."""
    alice = kit.connect("alice")
    alice_id = kit.accounts.get("alice").id  # type: ignore[union-attr]
    assert isinstance(_open_push(alice, "mirror", keep_history=False), Opened)
    committed(alice.push({"only/copy": b"the only copy"}, "mirror"))
    kit.accounts.grant("alice.viewer", "alice", "mirror", "", right, "mirror")
    kit.accounts.grant("alice.viewer", "alice", "laptop", "", right, "laptop")
    viewer = kit.connect("alice.viewer")
    refused(viewer.push({"only/copy": b"ransom note"}, "mirror"), ErrorCode.PERMISSION_DENIED,
            "pushing to a target that keeps no history (a push there replaces the only copy) needs the full right "
            f"on mirror; alice.viewer has {right.label}")  # fmt: skip
    mirror = kit.repository.find_target(alice_id, "mirror")
    assert mirror is not None and [s.id for s in mirror.snapshots()] == [1]
    assert viewer.listing(viewer.open("mirror").handle)["only/copy"].size == len(b"the only copy")

    # history turned off by the owner while the grantee's push handle is open: push_begin, then commit, refuse
    committed(viewer.push({"report": b"version 1"}, "laptop"))
    p = viewer.open("laptop", mode="push").handle
    q = viewer.open("laptop", mode="push").handle
    assert isinstance(viewer.call(PushBegin(rid=0, handle=q)), Ok)
    assert isinstance(_open_push(alice, "laptop", keep_history=False), Opened)
    refused(viewer.call(PushBegin(rid=0, handle=p)), ErrorCode.PERMISSION_DENIED, "keeps no history")
    cid, data = chunk(b"version 2")
    viewer.post(Put(rid=0, handle=q, id=cid, codec=0, size=len(data), data=data))
    viewer.post(PushEntries(rid=0, handle=q, entries=[Entry("", "d", 0o755, 0, 0),
                                                      Entry("report", "f", 0o644, 2, len(data), cid)]))  # fmt: skip
    refused(viewer.call(Commit(rid=0, handle=q)), ErrorCode.PERMISSION_DENIED, "keeps no history")
    laptop = kit.repository.find_target(alice_id, "laptop")
    assert laptop is not None and [s.id for s in laptop.snapshots()] == [1]


def _damage(kit: Kit, content: bytes) -> None:
    """Flip a byte of the stored record of ``content``'s chunk in alice's documents."""
    from neotwist.server.repository.packs import HEADER_SIZE

    target = kit.repository.find_target(kit.accounts.get("alice").id, "documents")  # type: ignore[union-attr]
    assert target is not None
    pack, offset, _length, _codec, _size = target.locate([chunk(content)[0]])[chunk(content)[0]]
    path = target.chunks.packs.path(pack)
    data = bytearray(path.read_bytes())
    data[offset + HEADER_SIZE] ^= 0xFF
    path.write_bytes(bytes(data))


def test_check_through_a_sub_path_grant_reads_only_its_chunks(kit: Kit) -> None:
    """A read grantee's ``check --verify-data`` reads the chunks its sub-path references and nothing else: damage
    elsewhere is neither read nor reported; damage below its root is."""
    alice = kit.connect("alice")
    documents(alice)
    kit.accounts.grant("alice.viewer", "alice", "documents", "presentations", Right.READ, "slides")
    _damage(kit, b"a secret number")
    viewer = kit.connect("alice.viewer")
    h = viewer.open("slides").handle
    report = viewer.call(Check(rid=0, handle=h, verify_data=True), more=lambda m: not isinstance(m, CheckReport))
    assert isinstance(report, CheckReport) and report.ok, report
    assert (report.chunks_checked, report.damaged_chunks, report.files) == (2, 0, [])
    owner = alice.call(Check(rid=0, handle=alice.open("documents").handle, verify_data=True),
                       more=lambda m: not isinstance(m, CheckReport))  # fmt: skip
    assert not owner.ok and owner.chunks_checked == 4 and [f.path for f in owner.files] == ["private/salary"]
    _damage(kit, b"first quarter")
    report = viewer.call(Check(rid=0, handle=h), more=lambda m: not isinstance(m, CheckReport))
    assert not report.ok and [f.path for f in report.files] == ["2024/q1"] and report.damaged_chunks == 1


def _check(conn: Conn, handle: int, repair: bool = False) -> Any:
    return conn.call(
        Check(rid=0, handle=handle, verify_data=True, repair=repair), more=lambda m: not isinstance(m, CheckReport)
    )


def test_check_repair_needs_the_full_right_and_a_grant_marks_only_below_its_root(kit: Kit) -> None:
    """Marking damage changes what the next pushes must send: a read or append grantee may check but not repair.
    A full grantee on a sub-path marks only what its sub-path refers to; a marked chunk is then missing for
    ``have`` (a confined push too) and a commit listing the unchanged file asks for it, until it is sent again."""
    alice = kit.connect("alice")
    documents(alice)
    _damage(kit, b"a secret number")
    _damage(kit, b"first quarter")
    kit.accounts.grant("alice.viewer", "alice", "documents", "presentations", Right.APPEND, "slides")
    viewer = kit.connect("alice.viewer")
    refused(_check(viewer, viewer.open("slides").handle, repair=True), ErrorCode.PERMISSION_DENIED,
            "check --repair needs the full right", "has append")  # fmt: skip
    assert _check(viewer, viewer.open("slides").handle).damaged_chunks == 1  # a plain check is fine

    kit.accounts.revoke("alice.viewer", "slides")
    kit.accounts.grant("alice.viewer", "alice", "documents", "presentations", Right.FULL, "slides")
    report = _check(viewer, viewer.open("slides").handle, repair=True)
    assert isinstance(report, CheckReport), report
    assert (report.repaired, report.marked_chunks, report.lost_chunks) == (True, 1, 1)
    assert [(f.path, f.marked) for f in report.files] == [("2024/q1", True)]
    owner = _check(alice, alice.open("documents").handle)
    assert {f.path: f.marked for f in owner.files} == {"presentations/2024/q1": True, "private/salary": False}
    assert (owner.marked_chunks, owner.lost_chunks, owner.repaired) == (0, 1, False)

    # The confined push is told to send it; a commit of the unchanged file without it is refused.
    q1 = chunk(b"first quarter")[0]
    p = viewer.open("slides", mode="push").handle
    assert isinstance(viewer.call(PushBegin(rid=0, handle=p)), Ok)
    assert viewer.call(Have(rid=0, handle=p, ids=[q1])).bitmap[0] & 1
    viewer.call(Abort(rid=0, handle=p))
    refused(alice.push({"q1": b"first quarter"}, "documents", "presentations/2024", upload=False),
            ErrorCode.MISSING_CHUNKS, "damaged on the server")  # fmt: skip
    committed(alice.push({"q1": b"first quarter"}, "documents", "presentations/2024"))
    healed = _check(alice, alice.open("documents").handle, repair=True)
    assert [f.path for f in healed.files] == ["private/salary"]
    assert (healed.marked_chunks, healed.lost_chunks) == (1, 1)
    assert isinstance(alice.call(Get(rid=0, handle=alice.open("documents").handle, snapshot=3,
                                     path="presentations/2024/q1", ids=[q1])), ChunkReply)  # fmt: skip
