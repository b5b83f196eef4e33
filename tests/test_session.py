"""The server session in memory: a client Peer and ``make_server_peer`` joined by iosim, a real repository and
account store on disk, repository calls run inline (no threads) and timers on a test clock.

Every request's success path and its refusals: order (hello first), versions, TLS login and its limits,
handles, paths, chunk verification, commit as the barrier for uploads, missing chunks, pulls that name
chunks of other files, and the login and idle timeouts.
"""

from __future__ import annotations

from typing import Any

import zstandard
from twisted.internet.defer import Deferred, maybeDeferred

from neotwist.server.repository import Repository
from neotwist.server.session import MAX_LOGIN_ATTEMPTS
from neotwist.testing import PASSWORD, SessionTestCase, chunk
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, RemoteError
from neotwist.wire.messages import (
    Bye,
    ChunkReply,
    Close,
    Commit,
    Committed,
    Entry,
    Get,
    Have,
    Hello,
    List,
    Listing,
    ListTargets,
    LoggedIn,
    Login,
    Missing,
    Open,
    Opened,
    PushBegin,
    PushEntries,
    Put,
    Targets,
)


class SessionTests(SessionTestCase):
    # --- order, version, login -------------------------------------------------------------------------

    def test_request_before_hello_is_refused(self) -> None:
        _server, client, pump = self.connect()
        error = self.call(client, pump, ListTargets(rid=0))
        assert isinstance(error, RemoteError) and error.code == ErrorCode.PROTOCOL
        assert "before hello" in error.message

    def test_unsupported_version_closes(self) -> None:
        server, client, pump = self.connect()
        error = self.call(client, pump, Hello(rid=0, version=99, software="t", window=client.window))
        assert isinstance(error, RemoteError) and error.code == ErrorCode.UNSUPPORTED_VERSION
        pump.flush()
        assert server._lost

    def test_ssh_session_is_already_authenticated(self) -> None:
        _server, client, pump = self.connect()
        welcome = self.hello(client, pump)
        assert welcome.account == "alice" and not welcome.login_required
        again = self.call(client, pump, Login(rid=0, account="alice", password=PASSWORD))
        assert isinstance(again, RemoteError) and again.code == ErrorCode.PROTOCOL

    def test_tls_login_required_then_accepted(self) -> None:
        _server, client, pump = self.connect(tls=True)
        welcome = self.hello(client, pump)
        assert welcome.login_required and welcome.account == ""
        refused = self.call(client, pump, ListTargets(rid=0))
        assert isinstance(refused, RemoteError) and refused.code == ErrorCode.AUTH_REQUIRED
        wrong = self.call(client, pump, Login(rid=0, account="alice", password="nope"))
        assert isinstance(wrong, RemoteError) and wrong.code == ErrorCode.AUTH_FAILED
        assert "nope" not in wrong.message
        ok = self.call(client, pump, Login(rid=0, account="alice", password=PASSWORD))
        assert isinstance(ok, LoggedIn) and ok.account == "alice"
        assert isinstance(self.call(client, pump, ListTargets(rid=0)), Targets)

    def test_tls_login_attempts_are_limited(self) -> None:
        server, client, pump = self.connect(tls=True)
        self.hello(client, pump)
        for _ in range(MAX_LOGIN_ATTEMPTS):
            error = self.call(client, pump, Login(rid=0, account="alice", password="wrong"))
            assert isinstance(error, RemoteError) and error.code == ErrorCode.AUTH_FAILED
        self.clock.advance(0)
        pump.flush()
        assert server._lost and client._lost

    def test_tls_failed_logins_are_throttled(self) -> None:
        from twisted.logger import formatEvent, globalLogPublisher

        from neotwist.server import throttle

        lines: list[str] = []
        observer = lambda event: lines.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        for _ in range(throttle.LIMIT):
            _server, client, pump = self.connect(tls=True)
            self.hello(client, pump)
            error = self.call(client, pump, Login(rid=0, account="alice", password="wrong guess"))
            assert isinstance(error, RemoteError) and error.code == ErrorCode.AUTH_FAILED
        _server, client, pump = self.connect(tls=True)
        self.hello(client, pump)
        error = self.call(client, pump, Login(rid=0, account="alice", password=PASSWORD))
        assert isinstance(error, RemoteError) and error.code == ErrorCode.THROTTLED
        assert error.message == "too many failed logins; try again in 30 s"
        self.clock.advance(throttle.BASE_DELAY)
        ok = self.call(client, pump, Login(rid=0, account="alice", password=PASSWORD))
        assert isinstance(ok, LoggedIn)
        text = "\n".join(lines)
        assert "login throttled: account=alice address=test:1" in text
        assert "wrong guess" not in text and PASSWORD not in text

    def test_login_timeout_and_idle_timeout(self) -> None:
        server, client, pump = self.connect(tls=True)
        self.hello(client, pump)
        self.clock.advance(limits.LOGIN_TIMEOUT + 1)
        pump.flush()
        assert server._lost
        server2, client2, pump2 = self.ready()
        self.clock.advance(limits.IDLE_TIMEOUT - 10)
        self.call(client2, pump2, ListTargets(rid=0))  # activity resets the idle timer
        self.clock.advance(20)
        pump2.flush()
        assert not server2._lost
        self.clock.advance(limits.IDLE_TIMEOUT)
        pump2.flush()
        assert server2._lost

    def test_bye_ends_cleanly(self) -> None:
        server, client, pump = self.ready()
        reply = self.call(client, pump, Bye(rid=0))
        assert isinstance(reply, Bye)
        pump.flush()
        assert server.ended_cleanly and server._lost

    # --- targets and handles ------------------------------------------------------------------------------

    def test_push_list_get_round_trip(self) -> None:
        _server, client, pump = self.ready()
        committed = self.push(client, pump, {"a": b"alpha" * 1000, "b": b"beta"})
        assert committed.snapshot == 1 and committed.files == 2 and committed.new_chunks == 2
        targets = self.call(client, pump, ListTargets(rid=0))
        assert [(t.name, t.files, t.latest) for t in targets.targets] == [("t", 2, 1)]

        opened = self.call(client, pump, Open(rid=0, target="t", path="", mode="read"))
        pages: list[Listing] = []
        self.call(client, pump, List(rid=0, handle=opened.handle, snapshot=None, path=""),
                  more=lambda m: pages.append(m) or not m.done)  # fmt: skip
        entries = {e.path: e for page in pages for e in page.entries}
        assert sorted(entries) == ["", "a", "b"]
        got: list[ChunkReply] = []
        ids = [entries["a"].chunks]
        self.call(client, pump, Get(rid=0, handle=opened.handle, snapshot=1, path="a", ids=ids),
                  more=lambda m: got.append(m) or len(got) < 1)  # fmt: skip
        assert got[0].data == b"alpha" * 1000 and got[0].id == ids[0]

    def test_get_refuses_chunks_of_another_file(self) -> None:
        _server, client, pump = self.ready()
        self.push(client, pump, {"public": b"public data", "secret": b"secret data"}, path="")
        opened = self.call(client, pump, Open(rid=0, target="t", path="", mode="read"))
        secret_id = chunk(b"secret data")[0]
        error = self.call(client, pump, Get(rid=0, handle=opened.handle, snapshot=1, path="public", ids=[secret_id]))
        assert isinstance(error, RemoteError) and error.code == ErrorCode.CHUNK_NOT_IN_FILE

    def test_sub_path_handle_is_the_root(self) -> None:
        _server, client, pump = self.ready()
        self.push(client, pump, {"x": b"in jan"}, path="2024/jan")
        self.push(client, pump, {"y": b"in feb"}, path="2024/feb")
        opened = self.call(client, pump, Open(rid=0, target="t", path="2024/jan", mode="read"))
        pages: list[Listing] = []
        self.call(client, pump, List(rid=0, handle=opened.handle, snapshot=None, path=""),
                  more=lambda m: pages.append(m) or not m.done)  # fmt: skip
        assert sorted(e.path for p in pages for e in p.entries) == ["", "x"]
        # a feb chunk named through the jan handle is not found there
        feb = chunk(b"in feb")[0]
        error = self.call(client, pump, Get(rid=0, handle=opened.handle, snapshot=2, path="../feb/y", ids=[feb]))
        assert isinstance(error, RemoteError) and error.code == ErrorCode.BAD_PATH

    def test_accounts_do_not_see_each_other(self) -> None:
        _server, client, pump = self.ready()
        self.push(client, pump, {"a": b"alice's"})
        _s2, bob, pump2 = self.ready(account=self.bob)
        assert self.call(bob, pump2, ListTargets(rid=0)).targets == []
        error = self.call(bob, pump2, Open(rid=0, target="t", path="", mode="read"))
        assert isinstance(error, RemoteError) and error.code == ErrorCode.NO_SUCH_TARGET

    def test_bad_names_paths_and_handles(self) -> None:
        _server, client, pump = self.ready()
        for target, path, code in [
            ("../etc", "", ErrorCode.BAD_NAME),
            (".hidden", "", ErrorCode.BAD_NAME),
            ("t", "../x", ErrorCode.BAD_PATH),
            ("t", "/abs", ErrorCode.BAD_PATH),
            ("t", "a//b", ErrorCode.BAD_PATH),
            ("t", "a/./b", ErrorCode.BAD_PATH),
        ]:
            error = self.call(client, pump, Open(rid=0, target=target, path=path, mode="push", create=True))
            assert isinstance(error, RemoteError) and error.code == code, (target, path, error)
        error = self.call(client, pump, Close(rid=0, handle=77))
        assert isinstance(error, RemoteError) and error.code == ErrorCode.BAD_HANDLE
        missing = self.call(client, pump, Open(rid=0, target="nothing", path="", mode="read"))
        assert isinstance(missing, RemoteError) and missing.code == ErrorCode.NO_SUCH_TARGET

    def test_too_many_handles_closes_the_connection(self) -> None:
        server, client, pump = self.ready()
        for _ in range(limits.MAX_OPEN_HANDLES):
            self.open_push(client, pump)
        error = self.call(client, pump, Open(rid=0, target="t", path="", mode="push", create=True))
        assert isinstance(error, RemoteError) and error.code == ErrorCode.LIMIT_EXCEEDED
        pump.flush()
        assert server._lost

    def test_read_handle_cannot_push(self) -> None:
        _server, client, pump = self.ready()
        self.push(client, pump, {"a": b"x"})
        opened = self.call(client, pump, Open(rid=0, target="t", path="", mode="read"))
        error = self.call(client, pump, PushBegin(rid=0, handle=opened.handle))
        assert isinstance(error, RemoteError) and error.code == ErrorCode.PROTOCOL

    # --- uploads and commit ---------------------------------------------------------------------------------

    def test_chunk_that_does_not_match_its_id_is_refused_and_blocks_the_commit(self) -> None:
        _server, client, pump = self.ready()
        h = self.open_push(client, pump).handle
        self.call(client, pump, PushBegin(rid=0, handle=h))
        cid = chunk(b"the real data")[0]
        client.post(Put(rid=0, handle=h, id=cid, codec=0, size=8, data=b"forgery!"))
        error = self.call(client, pump, Commit(rid=0, handle=h))
        assert isinstance(error, RemoteError) and error.code == ErrorCode.CHUNK_MISMATCH
        assert self.services.repository.find_target(self.alice.id, "t").latest() is None  # type: ignore[union-attr]

    def test_zstd_bomb_is_refused(self) -> None:
        _server, client, pump = self.ready()
        h = self.open_push(client, pump).handle
        self.call(client, pump, PushBegin(rid=0, handle=h))
        big = b"\0" * (limits.MAX_CHUNK)
        packed = zstandard.ZstdCompressor().compress(big)
        client.post(Put(rid=0, handle=h, id=chunk(big)[0], codec=1, size=100, data=packed))
        error = self.call(client, pump, Commit(rid=0, handle=h))
        assert isinstance(error, RemoteError) and error.code == ErrorCode.CHUNK_MISMATCH

    def test_commit_with_missing_chunks_changes_nothing_and_can_be_completed(self) -> None:
        _server, client, pump = self.ready()
        h = self.open_push(client, pump).handle
        self.call(client, pump, PushBegin(rid=0, handle=h))
        cid, raw = chunk(b"late chunk")
        client.post(
            PushEntries(
                rid=0, handle=h, entries=[Entry("", "d", 0o755, 0, 0), Entry("f", "f", 0o644, 0, len(raw), cid)]
            )
        )
        error = self.call(client, pump, Commit(rid=0, handle=h))
        assert isinstance(error, RemoteError) and error.code == ErrorCode.MISSING_CHUNKS
        have = self.call(client, pump, Have(rid=0, handle=h, ids=[cid]))
        assert isinstance(have, Missing) and have.bitmap == b"\x01"
        client.post(Put(rid=0, handle=h, id=cid, codec=0, size=len(raw), data=raw))
        committed = self.call(client, pump, Commit(rid=0, handle=h))
        assert isinstance(committed, Committed) and committed.snapshot == 1

    def test_entries_before_push_begin_and_bad_entries(self) -> None:
        _server, client, pump = self.ready()
        h = self.open_push(client, pump).handle
        error = self.call(client, pump, PushEntries(rid=0, handle=h, entries=[Entry("", "d", 0o755, 0, 0)]))
        assert isinstance(error, RemoteError) and error.code == ErrorCode.PROTOCOL

    def test_entry_with_dotdot_path_kills_the_push(self) -> None:
        _server, client, pump = self.ready()
        self.push(client, pump, {"keep": b"keep me"})
        h = self.open_push(client, pump).handle
        self.call(client, pump, PushBegin(rid=0, handle=h))
        client.post(PushEntries(rid=0, handle=h, entries=[Entry("../escape", "d", 0o755, 0, 0)]))
        error = self.call(client, pump, Commit(rid=0, handle=h))
        assert isinstance(error, RemoteError) and error.code == ErrorCode.BAD_PATH
        target = self.services.repository.find_target(self.alice.id, "t")
        assert target is not None and target.latest().id == 1  # type: ignore[union-attr]

    def test_connection_lost_mid_push_aborts_it(self) -> None:
        server, client, pump = self.ready()
        self.push(client, pump, {"a": b"one"})
        h = self.open_push(client, pump).handle
        self.call(client, pump, PushBegin(rid=0, handle=h))
        cid, raw = chunk(b"two")
        client.post(Put(rid=0, handle=h, id=cid, codec=0, size=len(raw), data=raw))
        client.post(
            PushEntries(rid=0, handle=h, entries=[Entry("", "d", 0o755, 0, 0), Entry("b", "f", 0o644, 0, 3, cid)])
        )
        pump.flush()
        client.transport.loseConnection()  # type: ignore[union-attr]
        pump.flush()
        assert server._lost
        target = self.services.repository.find_target(self.alice.id, "t")
        assert target is not None and target.latest().id == 1  # type: ignore[union-attr]
        # the chunk it uploaded is kept for the next push
        assert target.missing([cid]) == [False]
        assert not self.services.sessions

    def test_commit_waits_for_uploads_still_running(self) -> None:
        """With a thread-like runner whose jobs finish later, commit must not run before entries are staged."""
        pending: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

        def later(f: Any, *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append((d, f, args))
            return d

        def run_all() -> None:
            while pending:
                d, f, args = pending.pop(0)
                maybeDeferred(f, *args).chainDeferred(d)

        self.services.run_blocking = later
        _server, client, pump = self.connect()
        hello = client.request(Hello(rid=0, version=limits.PROTOCOL_VERSION, software="t", window=client.window))
        pump.flush()
        assert hello.called
        opened: list[Any] = []
        client.request(Open(rid=0, target="t", path="", mode="push", create=True)).addCallback(opened.append)
        pump.flush()
        run_all()
        pump.flush()
        h = opened[0].handle
        client.request(PushBegin(rid=0, handle=h))
        pump.flush()
        run_all()
        pump.flush()
        cid, raw = chunk(b"data")
        client.post(Put(rid=0, handle=h, id=cid, codec=0, size=4, data=raw))
        client.post(
            PushEntries(rid=0, handle=h, entries=[Entry("", "d", 0o755, 0, 0), Entry("f", "f", 0o644, 0, 4, cid)])
        )
        result: list[Any] = []
        client.request(Commit(rid=0, handle=h)).addBoth(result.append)
        pump.flush()
        # put and entries are admitted (running); the commit waits for them rather than running now
        assert sorted(f.__name__ for _d, f, _a in pending) == ["add", "store_batch"]
        for _ in range(5):
            run_all()
            pump.flush()
        assert isinstance(result[0], Committed) and result[0].files == 1

    def test_get_without_ids_is_refused(self) -> None:
        _server, client, pump = self.ready()
        self.push(client, pump, {"a": b"x"})
        opened = self.call(client, pump, Open(rid=0, target="t", path="", mode="read"))
        error = self.call(client, pump, Get(rid=0, handle=opened.handle, snapshot=1, path="a", ids=[]))
        assert isinstance(error, RemoteError) and error.code == ErrorCode.PROTOCOL

    # --- encrypted targets (issue 6) -------------------------------------------------------------------------

    def test_encrypted_target_keeps_its_key_check_and_refuses_plaintext(self) -> None:
        _server, client, pump = self.ready()
        record = bytes(range(81))
        no_record = self.call(client, pump, Open(rid=0, target="s", path="", mode="push", create=True, encrypted=True))
        assert isinstance(no_record, RemoteError) and no_record.code == ErrorCode.PROTOCOL
        made = self.call(
            client, pump, Open(rid=0, target="s", path="", mode="push", create=True, encrypted=True, key_check=record)
        )
        assert isinstance(made, Opened) and made.encrypted and not made.exists and made.key_check == record
        # a later create cannot replace the record; a read handle gets it too
        again = self.call(
            client, pump, Open(rid=0, target="s", path="", mode="push", create=True, encrypted=True, key_check=b"x")
        )
        assert isinstance(again, Opened) and again.exists and again.key_check == record
        read = self.call(client, pump, Open(rid=0, target="s", path="sub", mode="read"))
        assert isinstance(read, Opened) and read.key_check == record
        # a plaintext push into it, and plaintext codecs, are refused
        plain = self.call(client, pump, Open(rid=0, target="s", path="", mode="push", create=True))
        assert isinstance(plain, RemoteError) and plain.code == ErrorCode.ENCRYPTION_MISMATCH
        h = made.handle
        self.call(client, pump, PushBegin(rid=0, handle=h))
        cid, raw = chunk(b"plaintext")
        client.post(Put(rid=0, handle=h, id=cid, codec=0, size=len(raw), data=raw))
        refused = self.call(client, pump, Commit(rid=0, handle=h))
        assert isinstance(refused, RemoteError) and refused.code == ErrorCode.ENCRYPTION_MISMATCH
        # and the reverse (a failed post fails the client session: a new connection)
        _server, client, pump = self.ready()
        self.push(client, pump, {"a": b"x"}, target="p")
        p = self.call(client, pump, Open(rid=0, target="p", path="", mode="read"))
        assert isinstance(p, Opened) and not p.encrypted and p.key_check == b""
        enc = self.call(
            client, pump, Open(rid=0, target="p", path="", mode="push", create=True, encrypted=True, key_check=record)
        )
        assert isinstance(enc, RemoteError) and enc.code == ErrorCode.ENCRYPTION_MISMATCH

    def test_old_catalog_is_migrated_and_keeps_its_targets(self) -> None:
        import sqlite3

        from neotwist.chunking import DEFAULT_PARAMS
        from neotwist.server.repository import index

        root = self.tmp / "old"
        root.mkdir()
        db = sqlite3.connect(root / "catalog.sqlite")
        old_schema = index.CATALOG_SCHEMA.replace(
            "    key_check BLOB NOT NULL DEFAULT x'',  -- encrypted targets: the client's key-check record (opaque)\n",
            "",
        )
        assert "key_check" not in old_schema
        db.executescript(old_schema + "PRAGMA user_version=1;")
        db.execute(
            "INSERT INTO targets (account_id, name, created, encrypted, chunker_algorithm, chunker_min, chunker_avg,"
            " chunker_max, chunker_seed) VALUES (1, 'kept', 0, 0, 'fastcdc2020', 8192, 32768, 262144, 0)"
        )
        db.commit()
        db.close()
        repo = Repository(root)
        self.addCleanup(repo.close)
        kept = repo.find_target(1, "kept")
        assert kept is not None and kept.meta.key_check == b"" and not kept.meta.encrypted
        made = repo.create_target(1, "new", encrypted=True, chunker=DEFAULT_PARAMS, key_check=b"r" * 81)
        assert made.meta.key_check == b"r" * 81
        version = sqlite3.connect(root / "catalog.sqlite").execute("PRAGMA user_version").fetchone()[0]
        assert version == index.SCHEMA_VERSION + len(index.CATALOG_MIGRATIONS) == 2
