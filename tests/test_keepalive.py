"""Pings are answered by the connection layer ahead of a busy handler, never grow the output queue, and the
client's watchdog times out a silent peer after its timeout (in memory, on a Clock)."""

from __future__ import annotations

from typing import Any

from test_peer import Handler
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import TestCase

from neotwist.client.keepalive import PINGS, ConnectionSilent, Watchdog
from neotwist.wire import limits
from neotwist.wire.errors import NeoError
from neotwist.wire.framing import FrameConnection
from neotwist.wire.messages import Hello, ListTargets, Message, Ping, Pong, Put
from neotwist.wire.peer import Peer


class PeerTestCase(TestCase):
    def connect(self, server_handler: Handler) -> tuple[Peer, Peer, IOPump]:
        client, server, pump = connectedServerAndClient(
            lambda: Peer(server_handler, is_client=False), lambda: Peer(Handler(), is_client=True)
        )
        return client, server, pump

    def collect(self, d: Deferred[Any]) -> list[Any]:
        out: list[Any] = []
        d.addBoth(out.append)
        return out


class PingTests(PeerTestCase):
    def test_a_ping_is_answered_while_the_handler_is_busy(self) -> None:
        stuck: Deferred[None] = Deferred()
        server_handler = Handler(lambda _peer, _message: stuck)
        client, _server, pump = self.connect(server_handler)
        self.collect(client.request(ListTargets(rid=0)))
        pump.flush()
        pong = self.collect(client.request(Ping(rid=0)))
        pump.flush()
        self.assertEqual(len(pong), 1)
        self.assertIsInstance(pong[0], Pong)
        self.assertEqual([type(m) for m in server_handler.received], [ListTargets])  # the handler never saw it
        stuck.callback(None)

    def test_pings_never_grow_the_output_queue(self) -> None:
        """A client that sends pings and grants no credit gets no pong once a window of output waits."""
        server = Peer(Handler(), is_client=False)
        transport = StringTransport()
        server.makeConnection(transport)
        window = limits.MIN_WINDOW
        sender = FrameConnection(window)
        sender.set_peer_window(limits.WINDOW)
        server.dataReceived(_frames(sender, [Hello(rid=1, version=1, software="x", window=window)]))
        data = b"\0" * (limits.MAX_CHUNK - 64)
        for _ in range(5):  # replies the client never grants credit for: about a window and a half queued
            server.send(Put(rid=2, handle=1, id=bytes(32), codec=0, size=len(data), data=data))
        queued = server.queued_bytes
        self.assertGreaterEqual(queued, server._conn.peer_window)
        for start in range(0, 100_000, 5000):
            batch: list[Message] = [Ping(rid=2 * i + 3) for i in range(start, start + 5000)]
            server.dataReceived(_frames(sender, batch))
        self.assertEqual(server.queued_bytes, queued)
        self.assertIsNone(server.failure)


def _frames(sender: FrameConnection, batch: list[Message]) -> bytes:
    for message in batch:
        sender.send(message)
    return sender.data_to_send()


class WatchdogTests(PeerTestCase):
    def test_a_silent_peer_fails_pending_requests_after_the_timeout(self) -> None:
        clock = Clock()
        stuck: Deferred[None] = Deferred()
        client, _server, pump = self.connect(Handler(lambda _peer, _message: stuck))
        Watchdog(clock, client, "example:4323", 8).start()
        listing = self.collect(client.request(ListTargets(rid=0)))
        pump.flush()
        # The server is busy, not dead: its connection layer answers the pings, so nothing times out.
        for _ in range(3 * PINGS):
            clock.advance(2)
            pump.flush()
        self.assertEqual(listing, [])
        # Now the link goes silent: nothing is pumped any more.
        for _ in range(PINGS):
            clock.advance(2)
        self.assertEqual(len(listing), 1)
        error: Any = listing[0].value
        self.assertIsInstance(error, ConnectionSilent)
        self.assertIn("nothing heard from example:4323 for 8 s", error.message)
        self.assertTrue(error.message.startswith("connection lost"))
        later = self.collect(client.request(ListTargets(rid=0)))
        self.assertIsInstance(later[0].value, NeoError)
        stuck.callback(None)

    def test_a_slow_reactor_is_not_a_silent_peer(self) -> None:
        """One long tick (the reactor was blocked) only sends a ping; the reply read next keeps the link."""
        clock = Clock()
        client, _server, pump = self.connect(Handler())
        watchdog = Watchdog(clock, client, "example:4323", 8)
        watchdog.start()
        clock.advance(600)
        pump.flush()
        clock.advance(2)
        pump.flush()
        self.assertIsNone(client.failure)
        watchdog.stop()
