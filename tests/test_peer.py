"""Tests for the Twisted Peer: two real Peers connected in memory (iosim), or one on a StringTransport."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, cast

import msgspec
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import TestCase

from neotwist.wire import limits, messages
from neotwist.wire.errors import ErrorCode, NeoError, RemoteError
from neotwist.wire.framing import MAX_EXEMPT_FRAME
from neotwist.wire.messages import (
    Bye,
    Commit,
    Error,
    Hello,
    List,
    Listing,
    ListTargets,
    Message,
    Ok,
    Put,
    Targets,
    Welcome,
)
from neotwist.wire.peer import Peer

CHUNK_ID = bytes(range(32))


def put(size: int = 10) -> Put:
    return Put(rid=0, handle=1, id=CHUNK_ID, codec=0, size=size, data=b"\x33" * size)


class Handler:
    """A MessageHandler that records everything and lets each test decide the reaction."""

    def __init__(self, react: Callable[[Peer, Message], Deferred[None] | None] | None = None) -> None:
        self.received: list[Message] = []
        self.lost: list[Failure] = []
        self.react = react

    def message_received(self, peer: Peer, message: Message) -> Deferred[None] | None:
        self.received.append(message)
        if self.react is not None:
            return self.react(peer, message)
        return None

    def connection_lost(self, peer: Peer, reason: Failure) -> None:
        self.lost.append(reason)


def frames(data: bytes) -> list[Message]:
    """Decode a byte string of whole frames."""
    out = []
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        out.append(messages.decode(data[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return out


class CountingTransport(StringTransport):
    """A StringTransport that also counts write calls, to check that frames are batched."""

    writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


class PeerTestCase(TestCase):
    def setUp(self) -> None:
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def connect(
        self,
        server_handler: Handler,
        client_handler: Handler | None = None,
        *,
        server_window: int = limits.WINDOW,
        client_window: int = limits.WINDOW,
    ) -> tuple[Peer, Peer, IOPump]:
        client_handler = client_handler or Handler()
        client, server, pump = connectedServerAndClient(
            lambda: Peer(server_handler, window=server_window, is_client=False),
            lambda: Peer(client_handler, window=client_window, is_client=True),
        )
        return client, server, pump

    def collect(self, d: Deferred[Any]) -> list[Any]:
        """Results (or Failures) of ``d``, consumed so trial sees no unhandled error."""
        out: list[Any] = []
        d.addBoth(out.append)
        return out

    # --- requests and replies ------------------------------------------------------------------------

    def test_pipelined_requests_resolve_out_of_order_by_rid(self) -> None:
        server_handler = Handler()
        client, server, pump = self.connect(server_handler)
        fired: list[int] = []
        results = []

        def note(reply: Message) -> Message:
            fired.append(reply.rid)
            return reply

        for _ in range(3):
            results.append(self.collect(client.request(ListTargets(rid=0)).addCallback(note)))
        pump.flush()
        rids = [m.rid for m in server_handler.received]
        self.assertEqual(rids, [1, 3, 5])
        self.assertEqual(client.in_flight, 3)
        for rid in (5, 1, 3):
            server.send(Targets(rid=rid, targets=[]))
        pump.flush()
        self.assertEqual(fired, [5, 1, 3])
        self.assertEqual([r[0] for r in results], [Targets(rid=rid, targets=[]) for rid in rids])
        self.assertEqual(client.in_flight, 0)

    def test_multi_reply_stream_with_more(self) -> None:
        def react(peer: Peer, message: Message) -> None:
            assert isinstance(message, List)
            for page in range(3):
                peer.send(Listing(rid=message.rid, snapshot=7, entries=[], done=page == 2))

        client, _server, pump = self.connect(Handler(react))
        pages: list[Message] = []

        def more(reply: Message) -> bool:
            pages.append(reply)
            assert isinstance(reply, Listing)
            return not reply.done

        result = self.collect(client.request(List(rid=0, handle=1, snapshot=None, path=""), more))
        pump.flush()
        self.assertEqual([p.done for p in pages], [False, False, True])  # type: ignore[attr-defined]
        self.assertIs(result[0], pages[-1])
        self.assertEqual(client.in_flight, 0)

    def test_error_reply_errbacks_with_remote_error(self) -> None:
        def react(peer: Peer, message: Message) -> None:
            raise NeoError(ErrorCode.NO_SUCH_TARGET, "no target 'x'")

        client, server, pump = self.connect(Handler(react))
        result = self.collect(client.request(ListTargets(rid=0)))
        pump.flush()
        failure = result[0]
        self.assertIsInstance(failure, Failure)
        error = failure.value
        self.assertIsInstance(error, RemoteError)
        self.assertEqual((error.code, error.message), (ErrorCode.NO_SUCH_TARGET, "no target 'x'"))
        # a non-fatal error leaves the session usable
        self.assertIsNone(client.failure)
        self.assertFalse(server.transport.disconnecting)  # type: ignore[union-attr]

    def test_an_error_names_its_path_in_a_field(self) -> None:
        def react(peer: Peer, message: Message) -> None:
            raise NeoError(ErrorCode.DAMAGED, "cannot read: Input/output error", path="docs/q3.ods")

        client, _server, pump = self.connect(Handler(react))
        result = self.collect(client.request(ListTargets(rid=0)))
        pump.flush()
        error = result[0].value
        self.assertIsInstance(error, RemoteError)
        self.assertEqual((error.code, error.path, error.reason), (ErrorCode.DAMAGED, "docs/q3.ods",
                                                                  "cannot read: Input/output error"))  # fmt: skip
        self.assertEqual(error.message, "docs/q3.ods: cannot read: Input/output error")

    def test_handshake_adopts_advertised_windows(self) -> None:
        def react(peer: Peer, message: Message) -> None:
            assert isinstance(message, Hello)
            peer.send(
                Welcome(
                    rid=message.rid,
                    version=1,
                    software="server",
                    window=peer.window,
                    login_required=False,
                    account="alice",
                )
            )

        big = 4 * limits.WINDOW
        client, server, pump = self.connect(
            Handler(react), server_window=big, client_window=limits.MIN_WINDOW
        )
        self.assertEqual(client._conn.peer_window, limits.MIN_WINDOW)
        hello = Hello(rid=0, version=1, software="client", window=client.window)
        result = self.collect(client.request(hello))
        pump.flush()
        self.assertIsInstance(result[0], Welcome)
        self.assertEqual(client._conn.peer_window, big)
        self.assertEqual(server._conn.peer_window, limits.MIN_WINDOW)
        # the client may now have a whole 64 MiB in flight
        self.assertEqual(client._conn.send_credit, big - client.bytes_sent)

    # --- posts and failure ---------------------------------------------------------------------------

    def test_post_error_fails_the_peer(self) -> None:
        def react(peer: Peer, message: Message) -> None:
            if isinstance(message, Put) and message.size == 2:
                raise NeoError(ErrorCode.CHUNK_MISMATCH, "chunk does not match its id")
            if isinstance(message, Commit):
                peer.send(Ok(rid=message.rid))
            if isinstance(message, Bye):
                peer.send(Bye(rid=message.rid))
                peer.close()

        server_handler = Handler(react)
        client, server, pump = self.connect(server_handler)
        for size in (1, 2, 3):
            client.post(put(size))
        commit = self.collect(client.request(Commit(rid=0, handle=1)))
        pump.flush()
        self.assertEqual(len(server_handler.received), 4)  # one bad put does not stop the server
        self.assertIsInstance(client.failure, RemoteError)
        self.assertEqual(client.failure.code, ErrorCode.CHUNK_MISMATCH)  # type: ignore[union-attr]
        self.assertEqual(commit[0].value, client.failure)
        # later requests and drains fail at once; posts are dropped
        later = self.collect(client.request(ListTargets(rid=0)))
        self.assertEqual(later[0].value, client.failure)
        self.assertEqual(self.collect(client.drain())[0].value, client.failure)
        sent = client.bytes_sent
        client.post(put(4))
        self.assertEqual(client.bytes_sent, sent)
        # but the session can still end with a bye exchange
        bye = self.collect(client.request(Bye(rid=0)))
        pump.flush()
        self.assertIsInstance(bye[0], Bye)
        self.assertTrue(client.ended_cleanly)
        self.assertTrue(server.ended_cleanly)
        self.assertEqual(len(client.handler.lost), 1)  # type: ignore[attr-defined]

    def test_connection_level_error_fails_and_closes(self) -> None:
        client, server, pump = self.connect(Handler())
        pending = self.collect(client.request(ListTargets(rid=0)))
        pump.flush()
        server.send(Error(rid=0, code="internal", message="going away"))
        pump.flush()
        self.assertEqual(pending[0].value.code, ErrorCode.INTERNAL)
        self.assertEqual(client.failure, pending[0].value)
        self.assertTrue(client.transport.disconnected)  # type: ignore[union-attr]
        self.assertEqual(len(server.handler.lost), 1)  # type: ignore[attr-defined]

    # --- the handler ---------------------------------------------------------------------------------

    def test_handler_deferred_holds_back_next_message_and_credit(self) -> None:
        gate: Deferred[None] = Deferred()

        def react(peer: Peer, message: Message) -> Deferred[None] | None:
            return gate if len(server_handler.received) == 1 else None

        server_handler = Handler(react)
        window = limits.MIN_WINDOW
        client, server, pump = self.connect(server_handler, server_window=window, client_window=window)
        size = 1024 * 1024
        for _ in range(3):
            client.post(put(size))
        pump.flush()
        sent = client.bytes_sent
        self.assertEqual(len(server_handler.received), 1)
        self.assertEqual(server.held_bytes, 2 * (sent // 3))  # two decoded puts wait in the inbox
        self.assertEqual(client._conn.send_credit, window - sent)  # no credit came back
        gate.callback(None)
        self.assertEqual([m.size for m in server_handler.received], [size] * 3)  # type: ignore[attr-defined]
        self.assertEqual(server.held_bytes, 0)
        pump.flush()
        # 3 MiB released (over a quarter window): all of it came back as credit
        self.assertEqual(client._conn.send_credit, window)

    def test_handler_failure_is_logged_and_answered_internal(self) -> None:
        def react(peer: Peer, message: Message) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            d.errback(ZeroDivisionError("oops"))
            return d

        client, _server, pump = self.connect(Handler(react))
        result = self.collect(client.request(ListTargets(rid=0)))
        pump.flush()
        self.assertEqual(result[0].value.code, ErrorCode.INTERNAL)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        # the session goes on
        second = self.collect(client.request(ListTargets(rid=0)))
        pump.flush()
        self.assertEqual(second[0].value.code, ErrorCode.INTERNAL)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_fatal_handler_error_closes_the_connection(self) -> None:
        def react(peer: Peer, message: Message) -> None:
            raise NeoError(ErrorCode.LIMIT_EXCEEDED, "too many handles")

        server_handler = Handler(react)
        client, server, pump = self.connect(server_handler)
        first = self.collect(client.request(ListTargets(rid=0)))
        second = self.collect(client.request(ListTargets(rid=0)))
        pump.flush()
        self.assertEqual(first[0].value.code, ErrorCode.LIMIT_EXCEEDED)
        self.assertEqual(second[0].value.code, ErrorCode.PROTOCOL)  # connection lost
        self.assertEqual(len(server_handler.received), 1)  # nothing handled after a fatal error
        self.assertEqual(len(server_handler.lost), 1)
        self.assertFalse(server.ended_cleanly)

    # --- bad input -----------------------------------------------------------------------------------

    def assert_refused(self, data: bytes, code: ErrorCode) -> None:
        handler = Handler()
        server = Peer(handler, is_client=False)
        transport = StringTransport()
        server.makeConnection(transport)
        server.dataReceived(data)
        (error,) = frames(transport.value())
        self.assertIsInstance(error, Error)
        self.assertEqual((error.rid, error.code), (0, code))  # type: ignore[attr-defined]
        self.assertTrue(transport.disconnecting)
        self.assertEqual(handler.received, [])
        # nothing more is parsed or written after the violation
        server.dataReceived(b"\x00\x00\x00\x01")
        self.assertEqual(len(frames(transport.value())), 1)
        server.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(len(handler.lost), 1)
        self.assertEqual(self.flushLoggedErrors(), [])
        warnings = [e for e in self.events if "protocol violation" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertNotIn("log_failure", warnings[0])

    def test_oversize_frame_gets_error_and_close(self) -> None:
        self.assert_refused(struct.pack(">I", limits.MAX_FRAME + 1), ErrorCode.BAD_FRAME)

    def test_garbage_gets_error_and_close(self) -> None:
        self.assert_refused(b"\x00\x00\x00\x03\xc1\xc1\xc1", ErrorCode.BAD_MESSAGE)

    def test_bad_field_gets_error_and_close(self) -> None:
        body = msgspec.msgpack.encode(["open", 1, "", "", "read"])  # empty target name
        self.assert_refused(struct.pack(">I", len(body)) + body, ErrorCode.BAD_MESSAGE)

    def test_replies_in_one_read_are_written_once(self) -> None:
        def react(peer: Peer, message: Message) -> None:
            peer.send(Ok(rid=message.rid))

        server = Peer(Handler(react), is_client=False)
        transport = CountingTransport()
        server.makeConnection(transport)
        data = b"".join(
            struct.pack(">I", len(body)) + body
            for body in (messages.encode(ListTargets(rid=rid)) for rid in range(1, 200, 2))
        )
        server.dataReceived(data)
        self.assertEqual(transport.writes, 1)
        self.assertEqual([m.rid for m in frames(transport.value())], list(range(1, 200, 2)))

    def test_batch_collects_posts_into_one_write(self) -> None:
        client = Peer(Handler(), is_client=True)
        transport = CountingTransport()
        client.makeConnection(transport)
        with client.batch():
            for size in range(1, 51):
                client.post(put(size))
            self.assertEqual(transport.writes, 0)
        self.assertEqual(transport.writes, 1)
        sent = frames(transport.value())
        self.assertEqual([m.rid for m in sent], list(range(1, 101, 2)))
        self.assertEqual([m.size for m in sent], list(range(1, 51)))  # type: ignore[attr-defined]
        client.post(put(1))
        self.assertEqual(transport.writes, 2)  # outside a batch each send is written at once

    def test_more_raising_errbacks_and_later_replies_are_dropped(self) -> None:
        def react(peer: Peer, message: Message) -> None:
            for page in range(3):
                peer.send(Listing(rid=message.rid, snapshot=1, entries=[], done=page == 2))

        def more(reply: Message) -> bool:
            raise ValueError("bad page")

        client_handler = Handler()
        client, _server, pump = self.connect(Handler(react), client_handler)
        result = self.collect(client.request(List(rid=0, handle=1, snapshot=None, path=""), more))
        pump.flush()
        result[0].trap(ValueError)
        self.assertEqual(client.in_flight, 0)
        self.assertEqual(client_handler.received, [])  # stray replies never reach the handler
        self.assertIsNone(client.failure)
        # their credit was still returned: the client holds nothing
        self.assertEqual(client.held_bytes, 0)
        client._conn.flush_credit()
        self.assertEqual(client._conn.unreleased_bytes, 0)

    def test_unsendable_request_raises_and_leaves_nothing_pending(self) -> None:
        client = Peer(Handler(), is_client=True)
        client.makeConnection(StringTransport())
        self.collect(client.request(ListTargets(rid=0)))
        hello = Hello(rid=0, version=1, software="x", window=limits.MAX_WINDOW)  # not our window
        with self.assertRaises(ValueError):
            client.request(hello)
        self.assertEqual(client.in_flight, 1)

    # --- the end -------------------------------------------------------------------------------------

    def test_bye_exchange_ends_cleanly(self) -> None:
        def react(peer: Peer, message: Message) -> None:
            assert isinstance(message, Bye)
            peer.send(Bye(rid=message.rid))
            peer.close()

        server_handler, client_handler = Handler(react), Handler()
        client, server, pump = self.connect(server_handler, client_handler)
        closed = self.collect(client.when_closed())
        bye = self.collect(client.request(Bye(rid=0)))
        pump.flush()
        self.assertIsInstance(bye[0], Bye)
        self.assertEqual(closed, [None])
        self.assertTrue(client.ended_cleanly)
        self.assertTrue(server.ended_cleanly)
        self.assertEqual((len(client_handler.lost), len(server_handler.lost)), (1, 1))
        self.assertEqual(self.collect(server.when_closed()), [None])

    def test_eof_without_bye_is_not_clean(self) -> None:
        client, server, pump = self.connect(Handler())
        client.close()
        pump.flush()
        self.assertFalse(server.ended_cleanly)
        self.assertFalse(client.ended_cleanly)

    def test_connection_lost_twice_is_harmless(self) -> None:
        handler = Handler()
        client = Peer(handler, is_client=True)
        client.makeConnection(StringTransport())
        pending = self.collect(client.request(Commit(rid=0, handle=1)))
        drained = client.drain()
        closed = self.collect(client.when_closed())
        reason = Failure(ConnectionError("reset"))
        client.connectionLost(reason)
        client.connectionLost(reason)
        self.assertEqual(len(handler.lost), 1)
        self.assertIs(handler.lost[0], reason)
        self.assertEqual(pending[0].value.code, ErrorCode.PROTOCOL)
        self.assertEqual(closed, [None])
        self.assertEqual(self.collect(drained), [None])  # was not waiting: fired at once
        # after the end, requests fail at once and sends are ignored
        late = self.collect(client.request(Commit(rid=0, handle=1)))
        self.assertEqual(late[0].value.code, ErrorCode.PROTOCOL)
        client.send(Ok(rid=1))
        self.assertEqual(self.flushLoggedErrors(), [])

    # --- memory ----------------------------------------------------------------------------------------

    def test_slow_handler_bounds_memory(self) -> None:
        """Push 48 MiB at a server that handles one put per clock tick: neither side holds more than about a
        window, and everything arrives in order."""
        clock = Clock()

        def react(peer: Peer, message: Message) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            clock.callLater(0.01, d.callback, None)
            return d

        server_handler = Handler(react)
        window = limits.MIN_WINDOW
        client, server, pump = self.connect(server_handler, server_window=window, client_window=window)
        size = 512 * 1024
        total = 96
        state = {"posted": 0, "max_queued": 0}

        def produce(_: object = None) -> None:
            while state["posted"] < total:
                client.post(put(size))
                state["posted"] += 1
                state["max_queued"] = max(state["max_queued"], client.queued_bytes)
                d = client.drain()
                if not d.called:
                    d.addCallback(produce)
                    return

        produce()
        max_held = 0
        for _ in range(10_000):
            pump.flush()
            max_held = max(max_held, server.held_bytes, server._conn.unreleased_bytes)
            if len(server_handler.received) == total and not server.held_bytes:
                break
            clock.advance(0.01)
        self.assertEqual(len(server_handler.received), total)
        self.assertEqual({m.rid for m in server_handler.received}, set(range(1, 2 * total, 2)))
        rids = [m.rid for m in server_handler.received]
        self.assertEqual(rids, sorted(rids))
        frame = 4 + len(messages.encode(put(size)))
        self.assertGreater(total * frame, 5 * window)
        self.assertLessEqual(max_held, window + MAX_EXEMPT_FRAME)
        self.assertGreater(max_held, window // 2)  # the window was actually used
        self.assertLess(state["max_queued"], window + frame)
