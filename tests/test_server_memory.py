"""What one connection can make the server hold: the window it honours is capped whatever the client advertises,
get replies are read only as the client takes them, and a get of one id does not load the file's chunk list."""

from __future__ import annotations

import os

import pytest
from twisted.test.iosim import connectedServerAndClient

from neotwist.server.context import SESSION_MEMORY
from neotwist.server.reads import READ_GROUP_BYTES
from neotwist.server.repository import filechunks
from neotwist.server.session import PEER_WINDOW_HONOURED, make_server_peer
from neotwist.testing import PASSWORD, Client, Kit, call, committed
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, RemoteError
from neotwist.wire.messages import ChunkReply, Commit, Entry, Get, Hello, Ok, Open, Opened, PushBegin, PushEntries, Put
from neotwist.wire.peer import Peer

MiB = 1024 * 1024


def push_big(kit: Kit, chunks: int) -> list[bytes]:
    """A file "big" of ``chunks`` random 4 MiB chunks (stored raw); returns its ids."""
    import blake3

    alice = kit.connect("alice")
    h = alice.open("t", mode="push", create=True).handle
    assert isinstance(alice.call(PushBegin(rid=0, handle=h)), Ok)
    ids = []
    for _ in range(chunks):
        data = os.urandom(limits.MAX_CHUNK)
        cid = blake3.blake3(data).digest()
        ids.append(cid)
        alice.post(Put(rid=0, handle=h, id=cid, codec=0, size=len(data), data=data))
        alice.pump.flush()
    entry = Entry("big", "f", 0o644, 1, chunks * limits.MAX_CHUNK, b"".join(ids))
    alice.post(PushEntries(rid=0, handle=h, entries=[Entry("", "d", 0o755, 0, 0), entry]))
    committed(alice.call(Commit(rid=0, handle=h)))
    return ids


def test_unread_gets_hold_a_bounded_amount_whatever_window_the_client_advertises(kit: Kit) -> None:
    """Eight gets of a 48 MiB file from a client that advertised a 256 MiB window and then read nothing: the
    server wrote up to the window and queued more (RSS 116 -> 746 MiB on one connection)."""
    ids = push_big(kit, 12)
    account = kit.accounts.get("alice")
    client, server, pump = connectedServerAndClient(
        lambda: make_server_peer(kit.services, account, "test:1"),
        lambda: Peer(Client(), is_client=True, window=limits.MAX_WINDOW),
    )
    call(client, pump, Hello(rid=0, version=limits.PROTOCOL_VERSION, software="t", window=limits.MAX_WINDOW))
    opened = call(client, pump, Open(rid=0, target="t", path="", mode="read"))
    assert isinstance(opened, Opened)
    for _ in range(8):
        client.request(Get(rid=0, handle=opened.handle, snapshot=1, path="big", ids=ids))
    # Deliver the client's requests, never the server's replies: the client reads nothing.
    written = 0
    for _ in range(20):
        kit.clock.advance(0)
        data = pump.clientIO.getOutBuffer()
        if data:
            pump.serverIO.bufferReceived(data)
        written += len(pump.serverIO.getOutBuffer() or b"")
    held = written + server.queued_bytes
    assert held <= PEER_WINDOW_HONOURED + SESSION_MEMORY + READ_GROUP_BYTES, held / MiB
    assert written >= PEER_WINDOW_HONOURED - READ_GROUP_BYTES  # it did send what the window allowed


def test_a_get_reads_only_what_the_client_takes(kit: Kit) -> None:
    ids = push_big(kit, 12)
    conn = kit.connect("alice")
    h = conn.open("t").handle
    got: list[ChunkReply] = []
    get = Get(rid=0, handle=h, snapshot=1, path="big", ids=ids)
    reply = conn.call(get, more=lambda m: got.append(m) or len(got) < 12)
    assert isinstance(reply, ChunkReply) and [m.id for m in got] == ids


def test_a_get_of_one_id_does_not_load_the_file_s_chunk_list(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2M-id file (64 MiB of ids): each get of one id built a set of all of them (+600 MiB for eight)."""
    ids = push_big(kit, 1)
    conn = kit.connect("alice")
    p = conn.open("t", mode="push").handle
    assert isinstance(conn.call(PushBegin(rid=0, handle=p)), Ok)
    many = ids * limits.MAX_FILE_CHUNK_IDS  # 2 MiB of ids: one chunk again and again (as a sparse file's zeros)
    long = Entry("long", "f", 0o644, 1, len(many) * limits.MAX_CHUNK, b"".join(many))
    conn.post(PushEntries(rid=0, handle=p, entries=[Entry("", "d", 0o755, 0, 0), long]))
    committed(conn.call(Commit(rid=0, handle=p)))
    target = kit.repository.find_target(kit.accounts.get("alice").id, "t")  # type: ignore[union-attr]
    assert target is not None
    monkeypatch.setattr(type(target), "list_entries", lambda *a: pytest.fail("the whole chunk list was loaded"))
    h = conn.open("t").handle
    reply = conn.call(Get(rid=0, handle=h, snapshot=2, path="long", ids=ids))
    assert isinstance(reply, ChunkReply)
    stranger = bytes(32)
    refused = conn.call(Get(rid=0, handle=h, snapshot=2, path="long", ids=[stranger]))
    assert isinstance(refused, RemoteError) and refused.code == ErrorCode.CHUNK_NOT_IN_FILE


def test_chunk_lists_are_searched_at_aligned_positions_in_any_order(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    """An id made of the end of one listed id and the start of the next is not in the file; ids asked out of
    order, repeated, or more than the passes allow (the one-pass check) are all found."""
    monkeypatch.setattr(filechunks, "WINDOW", 64)  # windows of two ids: every boundary is crossed
    import blake3

    alice = kit.connect("alice")
    h = alice.open("t", mode="push", create=True).handle
    assert isinstance(alice.call(PushBegin(rid=0, handle=h)), Ok)
    ids, size = [], 0
    for n in range(40):
        data = b"chunk %d" % n
        size += len(data)
        cid = blake3.blake3(data).digest()
        ids.append(cid)
        alice.post(Put(rid=0, handle=h, id=cid, codec=0, size=len(data), data=data))
    alice.post(PushEntries(rid=0, handle=h, entries=[Entry("", "d", 0o755, 0, 0),
                                                     Entry("f", "f", 0o644, 1, size, b"".join(ids))]))  # fmt: skip
    committed(alice.call(Commit(rid=0, handle=h)))
    target = kit.repository.find_target(kit.accounts.get("alice").id, "t")  # type: ignore[union-attr]
    assert target is not None
    check = filechunks.check_file_chunks
    assert check(target, 1, "f", ids) == (None, 40 * 32)
    assert check(target, 1, "nothing", ids) is None
    assert check(target, 1, "f", ids[::-1])[0] is None  # reversed: beyond MAX_WRAPS, the one pass
    assert check(target, 1, "f", [ids[5], ids[5], ids[3], ids[39]], hint=20 * 32)[0] is None
    straddling = ids[7][16:] + ids[8][:16]
    assert check(target, 1, "f", [ids[1], straddling])[0] == straddling
    assert check(target, 1, "f", [*ids[::-1], straddling])[0] == straddling


def test_connections_per_account_are_capped(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    from neotwist.server import session as session_module
    from neotwist.wire.messages import LoggedIn, Login

    monkeypatch.setattr(session_module, "MAX_CONNECTIONS_PER_ACCOUNT", 2)
    kit.account("bob")
    first, second = kit.connect("alice"), kit.connect("alice")
    account = kit.accounts.get("alice")
    client, _server, pump = connectedServerAndClient(
        lambda: make_server_peer(kit.services, account, "test:3"), lambda: Peer(Client(), is_client=True)
    )
    refused = call(client, pump, Hello(rid=0, version=limits.PROTOCOL_VERSION, software="t", window=client.window))
    assert isinstance(refused, RemoteError) and refused.code == ErrorCode.LIMIT_EXCEEDED
    assert "alice has 2 connections open" in refused.message
    pump.flush()
    assert pump.clientIO.disconnected
    kit.connect("bob")  # another account is not concerned
    # over TLS the login is refused the same way; once one connection ends, the next gets in
    client, _server, pump = connectedServerAndClient(
        lambda: make_server_peer(kit.services, None, "test:4"), lambda: Peer(Client(), is_client=True)
    )
    call(client, pump, Hello(rid=0, version=limits.PROTOCOL_VERSION, software="t", window=client.window))
    refused = call(client, pump, Login(rid=0, account="alice", password=PASSWORD))
    assert isinstance(refused, RemoteError) and refused.code == ErrorCode.LIMIT_EXCEEDED
    first.client.transport.loseConnection()
    first.pump.flush()
    del second
    client, _server, pump = connectedServerAndClient(
        lambda: make_server_peer(kit.services, None, "test:5"), lambda: Peer(Client(), is_client=True)
    )
    call(client, pump, Hello(rid=0, version=limits.PROTOCOL_VERSION, software="t", window=client.window))
    assert isinstance(call(client, pump, Login(rid=0, account="alice", password=PASSWORD)), LoggedIn)


def test_many_files_are_checked_together_as_one_at_a_time(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    """check_files_chunks answers as check_file_chunks does for each file: short chunk lists read together and
    checked in memory, long ones (here over 8 ids) one at a time; a missing path, a foreign id and an id that
    straddles two listed ones are all caught."""
    import blake3

    monkeypatch.setattr(filechunks, "INLINE", 8 * 32)
    monkeypatch.setattr(filechunks, "_IN_PATHS", 3)  # several queries
    alice = kit.connect("alice")
    h = alice.open("t", mode="push", create=True).handle
    assert isinstance(alice.call(PushBegin(rid=0, handle=h)), Ok)
    entries = [Entry("", "d", 0o755, 0, 0)]
    lists: dict[str, list[bytes]] = {}
    for f, count in enumerate((1, 3, 8, 9, 20, 2, 5)):
        ids, size = [], 0
        for n in range(count):
            data = b"file %d chunk %d" % (f, n)
            size += len(data)
            ids.append(blake3.blake3(data).digest())
            alice.post(Put(rid=0, handle=h, id=ids[-1], codec=0, size=len(data), data=data))
        lists[f"f{f}"] = ids
        entries.append(Entry(f"f{f}", "f", 0o644, 1, size, b"".join(ids)))
    alice.post(PushEntries(rid=0, handle=h, entries=entries))
    committed(alice.call(Commit(rid=0, handle=h)))
    target = kit.repository.find_target(kit.accounts.get("alice").id, "t")  # type: ignore[union-attr]
    assert target is not None
    stranger = bytes(32)
    straddling = lists["f4"][2][16:] + lists["f4"][3][:16]
    asked = [(path, ids[::-1], 0) for path, ids in lists.items()]
    asked += [("f1", [lists["f1"][0], stranger], 0), ("f4", [straddling], 0), ("nothing", [stranger], 0)]
    asked += [("f2", [lists["f2"][1][16:] + lists["f2"][2][:16]], 0), ("f5", [lists["f6"][0]], 0)]
    together = filechunks.check_files_chunks(target, 1, asked)
    one_by_one = [filechunks.check_file_chunks(target, 1, path, ids, hint) for path, ids, hint in asked]
    assert [r if r is None else r[0] for r in together] == [r if r is None else r[0] for r in one_by_one]
    assert [r if r is None else r[0] for r in together] == [None] * 7 + [
        stranger, straddling, None, lists["f2"][1][16:] + lists["f2"][2][:16], lists["f6"][0],
    ]
