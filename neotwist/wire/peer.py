"""The Twisted adapter that drives the sans-IO frame connection over any byte stream.

One ``Peer`` is one end of a Neophytos session, on the client or the server, over an SSH channel, a TLS stream
or an OpenSSH subprocess: those transports only have to deliver ``dataReceived`` and offer ``write`` /
``loseConnection``.

Requests are pipelined: ``request`` returns at once with a Deferred, many may be in flight, replies are matched by
rid. Inbound messages that are not replies (every request, on the server) go to the ``MessageHandler`` strictly one
at a time in arrival order: the next is handed over only when the handler's Deferred (if it returned one) fires,
and only then is the frame's credit returned to the sender. That is the back-pressure: a slow handler stops
granting credit, so the sender stops sending, so memory stays bounded whatever conch's window does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from neotwist.wire import limits
from neotwist.wire.errors import NeoError
from neotwist.wire.messages import Message


class MessageHandler(TypingProtocol):
    """What a Peer hands inbound non-reply messages to (the server session; a client's is nearly empty)."""

    def message_received(self, peer: Peer, message: Message) -> Deferred[None] | None:
        """Handle one message. Return a Deferred to hold back the next message until it fires."""

    def connection_lost(self, peer: Peer, reason: Failure) -> None:
        """The stream ended (cleanly after bye, or not). Called exactly once."""


class Peer(Protocol):
    """One end of a session. See the module docstring."""

    def __init__(self, handler: MessageHandler, *, window: int = limits.WINDOW, is_client: bool) -> None:
        raise NotImplementedError

    # --- sending ---------------------------------------------------------------------------------------

    def request(
        self, message: Message, more: Callable[[Message], bool] | None = None
    ) -> Deferred[Message]:
        """Send ``message`` with a fresh rid; fire with its reply.

        Without ``more`` the first reply with that rid ends the request. With it, every reply is passed to
        ``more``, which returns True while further replies are due (``listing`` pages, ``chunk`` streams); the
        Deferred fires with the last one. An ``error`` reply errbacks with :class:`RemoteError`.
        """
        raise NotImplementedError

    def post(self, message: Message) -> None:
        """Send a request that has no success reply (``put``, ``entries``) with a fresh rid. An ``error`` for it
        later makes the peer *failed*: pending and future requests errback with that RemoteError."""
        raise NotImplementedError

    def send(self, message: Message) -> None:
        """Send ``message`` as is (a reply: the rid is the request's)."""
        raise NotImplementedError

    def reply_error(self, rid: int, error: NeoError) -> None:
        """Send an ``error`` reply; if the error is fatal, close the connection after it is written."""
        raise NotImplementedError

    def drain(self) -> Deferred[None]:
        """Fire when the output queue (frames waiting for credit) is below the peer's window: await this
        between posts so a fast producer never queues more than a window."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the connection after queued frames are written."""
        raise NotImplementedError

    # --- state ---------------------------------------------------------------------------------------

    @property
    def bytes_sent(self) -> int:
        """Frame bytes written so far (headers included): what --json reports as bytes_sent."""
        raise NotImplementedError

    @property
    def bytes_received(self) -> int:
        raise NotImplementedError

    def when_closed(self) -> Deferred[None]:
        """Fire when the connection is gone (each call gets its own Deferred)."""
        raise NotImplementedError
