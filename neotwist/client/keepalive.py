"""Tell a dead connection from a busy server: ping when the server has been silent, give up when it stays so.

A connection whose packets are dropped (a NAT that forgot it, a cable pulled, a blackholing firewall) sends no
FIN: without this the client waits for replies forever. Every ``timeout / PINGS`` seconds of silence the
watchdog sends a ``ping``, which the server's connection layer answers at once even while a long request is
being handled; if nothing at all arrives for ``PINGS`` ticks in a row, every pending and later request fails
with :class:`ConnectionSilent` and the connection is aborted.

Silence is counted in ticks of a repeating timer, not wall-clock time: after the reactor was blocked (a slow
local disk), the first tick only sends a ping, and the replies already waiting in the socket are read before
the next tick, so a busy client never mistakes itself for a dead server.
"""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from neotwist.wire.errors import ErrorCode, NeoError
from neotwist.wire.messages import Ping
from neotwist.wire.peer import Peer

log = Logger()

PINGS = 4
"""Ticks of silence (each sends a ping) before the connection is declared dead."""

class ConnectionSilent(NeoError):
    """Nothing arrived from the server for ``timeout`` seconds, pings included."""

    def __init__(self, address: str, timeout: float) -> None:
        super().__init__(
            ErrorCode.PROTOCOL,
            f"connection lost: nothing heard from {address} for {timeout:g} s (--timeout)",
        )


class Watchdog:
    """Pings ``peer`` while it is silent and times it out after ``timeout`` seconds of silence."""

    def __init__(self, clock: Any, peer: Peer, address: str, timeout: float) -> None:
        self._peer = peer
        self._address = address
        self._timeout = timeout
        self._seen = peer.bytes_received
        self._silent_ticks = 0
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock

    def start(self) -> None:
        self._loop.start(self._timeout / PINGS, now=False).addErrback(
            lambda f: log.failure("keepalive watchdog failed", f)
        )
        self._peer.when_closed().addCallback(lambda _: self.stop())

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _tick(self) -> None:
        received = self._peer.bytes_received
        if received != self._seen:
            self._seen = received
            self._silent_ticks = 0
            return
        self._silent_ticks += 1
        if self._silent_ticks >= PINGS:
            log.info("no data from {address} for {timeout} s: giving up", address=self._address,
                     timeout=self._timeout)  # fmt: skip
            self.stop()
            self._peer.time_out(ConnectionSilent(self._address, self._timeout))
            return
        self._peer.request(Ping(rid=0)).addErrback(lambda _f: None)


_T = TypeVar("_T")


def limit_setup(clock: Any, setup: Deferred[_T], timeout: float, error: Exception) -> Deferred[_T]:
    """Cancel ``setup`` (connecting, the handshakes, logging in) once ``PINGS`` ticks of ``timeout / PINGS``
    seconds have passed without it ending, and fail it with ``error`` then. Ticks, not wall-clock time: a
    prompt that blocked the reactor (a password, a new host key) counts as one tick."""
    ticks = [0]
    timed_out = [False]

    def tick() -> None:
        ticks[0] += 1
        if ticks[0] >= PINGS and not setup.called:
            timed_out[0] = True
            setup.cancel()

    loop = LoopingCall(tick)
    loop.clock = clock
    loop.start(timeout / PINGS, now=False)

    def done(result: object) -> object:
        if loop.running:
            loop.stop()
        if timed_out[0]:
            raise error
        return result

    return setup.addBoth(done)
