"""The Twisted adapter that drives the sans-IO frame connection over any byte stream.

One ``Peer`` is one end of a Neophytos session, on the client or the server, over an SSH channel, a TLS
stream or an OpenSSH subprocess: those transports only have to deliver ``dataReceived`` and offer ``write``
/ ``loseConnection``.

Requests are pipelined: ``request`` returns at once with a Deferred, many may be in flight, replies are
matched by rid. Inbound messages that are not replies (every request, on the server) go to the
``MessageHandler`` strictly one at a time in arrival order: the next is handed over only when the handler's
Deferred (if it returned one) fires, and only then is the frame's credit returned to the sender. That is the
back-pressure: a slow handler stops granting credit, so the sender stops sending, so memory stays bounded
whatever conch's window does.

Rids: the client numbers its requests 1, 3, 5, ...; the server (which originates none in protocol v1) would
use 2, 4, 6, ...; rid 0 carries credit and connection-level errors. So an inbound message is a reply exactly
when its rid is one of our pending requests, and a message with the peer's parity is always one of the
peer's requests.

Writes are batched: while a ``dataReceived`` call (or a handler's completion) is being processed, frames
sent by callbacks are collected and written with one ``transport.write`` at the end, so a burst of replies
or posts costs one SSH packet / TLS record run instead of one per message.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol as TypingProtocol
from typing import cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, NeoError, ProtocolViolation, RemoteError
from neotwist.wire.framing import FrameConnection
from neotwist.wire.messages import Bye, Error, Hello, Message, Ping, Pong, Welcome

log = Logger()

_RID_LIMIT = 2**32 - 1


class _Stream(TypingProtocol):
    """All a Peer needs of its transport (an SSH channel, a TLS stream, process pipes)."""

    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...


class MessageHandler(TypingProtocol):
    """What a Peer hands inbound non-reply messages to (the server session; a client's is nearly empty)."""

    def message_received(self, peer: Peer, message: Message) -> Deferred[None] | None:
        """Handle one message. Return a Deferred to hold back the next message until it fires."""

    def connection_lost(self, peer: Peer, reason: Failure) -> None:
        """The stream ended (cleanly after bye, or not). Called exactly once."""


def _remote_error(message: Error) -> RemoteError:
    """The exception for an inbound ``error``; a code this version does not know keeps its text."""
    try:
        code = ErrorCode(message.code)
    except ValueError:
        return RemoteError(ErrorCode.PROTOCOL, f"unknown error code {message.code!r}: {message.message}", message.path)
    return RemoteError(code, message.message, message.path)


class Peer(Protocol):
    """One end of a session. See the module docstring."""

    def __init__(
        self,
        handler: MessageHandler,
        *,
        window: int = limits.WINDOW,
        is_client: bool,
        max_peer_window: int = limits.MAX_WINDOW,
    ) -> None:
        """``max_peer_window``: the most of the window the peer advertises that this end honours (sends before
        its credit returns). The peer's window bounds what it buffers; what this end holds for it (written, not
        yet acknowledged) is its own memory, so a server caps it whatever a client advertises."""
        self.handler = handler
        self._max_peer_window = max(limits.MIN_WINDOW, min(max_peer_window, limits.MAX_WINDOW))
        self.is_client = is_client
        self._conn = FrameConnection(window)
        self._parity = 1 if is_client else 0
        self._next_rid = 1 if is_client else 2
        # rid -> (Deferred, more): a tuple, not an object, because thousands are in flight.
        self._pending: dict[int, tuple[Deferred[Message], Callable[[Message], bool] | None]] = {}
        self._failure: NeoError | None = None  # set once the peer failed: every later request gets it
        self.features: frozenset[str] = frozenset()  # what the other end listed in its hello / welcome
        self._window_known = False

        self._inbox: deque[tuple[Message, int]] = deque()
        self._inbox_bytes = 0
        self.max_inbox: int | None = None  # bytes of requests waiting for the handler; over it: limit_exceeded
        self._busy = False  # a handler Deferred is outstanding
        self._dispatching = False

        self._batch = 0  # > 0 while writes are being collected
        self._drain_waiters: deque[Deferred[None]] = deque()
        self._closed_waiters: list[Deferred[None]] = []
        self._closing = False  # close() asked: lose the connection once the queue is written
        self._disconnecting = False  # loseConnection called: write nothing more
        self._lost = False
        self._bye_sent = False
        self._bye_received = False

    # --- sending ---------------------------------------------------------------------------------------

    def _take_rid(self) -> int:
        rid = self._next_rid
        nxt = rid + 2
        self._next_rid = nxt if nxt <= _RID_LIMIT else 2 - self._parity
        return rid

    def request(
        self, message: Message, more: Callable[[Message], bool] | None = None
    ) -> Deferred[Message]:
        """Send ``message`` with a fresh rid; fire with its reply.

        Without ``more`` the first reply with that rid ends the request. With it, every reply is passed to
        ``more``, which returns True while further replies are due (``listing`` pages, ``chunk`` streams); the
        Deferred fires with the last one. An ``error`` reply errbacks with :class:`RemoteError`.

        Once the peer has failed (an error for a posted request, or a connection-level error) requests errback
        with that error at once, except ``bye``, so a session can still end with the bye exchange.
        """
        is_bye = type(message) is Bye
        if self._lost or self._disconnecting:
            return fail(self._failure or NeoError(ErrorCode.PROTOCOL, "connection lost"))
        if self._failure is not None and not is_bye:
            return fail(self._failure)
        rid = self._take_rid()
        message.rid = rid
        d: Deferred[Message] = Deferred()
        self._pending[rid] = (d, more)
        try:
            self._send(message)
        except BaseException:
            del self._pending[rid]
            raise
        if is_bye:
            self._bye_sent = True
        return d

    def post(self, message: Message) -> None:
        """Send a request that has no success reply (``put``, ``entries``) with a fresh rid. An ``error`` for
        it later makes the peer *failed*: pending and future requests errback with that RemoteError.

        After the failure (or the connection's end) posts are dropped: the producer learns of it from
        :meth:`drain` or its next request, and nothing it posted after the failure could have been committed.
        """
        if self._failure is not None or self._disconnecting or self._lost:
            return
        message.rid = self._take_rid()
        self._send(message)

    def send(self, message: Message) -> None:
        """Send ``message`` as is (a reply: the rid is the request's)."""
        if self._disconnecting or self._lost:
            return
        if type(message) is Bye:
            self._bye_sent = True
        self._send(message)

    def _send(self, message: Message) -> None:
        self._conn.send(message)
        if not self._batch:
            self._flush()

    def reply_error(self, rid: int, error: NeoError) -> None:
        """Send an ``error`` reply; if the error is fatal, close the connection after it is written."""
        text, path = error.reason, error.path
        if len(text) > limits.MAX_TEXT:
            text = text[: limits.MAX_TEXT - 3] + "..."
        if path is not None and len(path) > limits.MAX_TEXT:
            text, path = error.message[: limits.MAX_TEXT - 3] + "...", None
        frame = Error(rid=rid, code=str(error.code), message=text, path=path)
        if error.fatal:
            self._abort(frame)
        else:
            self.send(frame)

    def drain(self) -> Deferred[None]:
        """Fire when the output queue (frames waiting for credit) is below the peer's window: await this
        between posts so a fast producer never queues more than a window. Errbacks once the peer failed or
        the connection is gone."""
        if self._failure is not None:
            return fail(self._failure)
        if self._lost or self._disconnecting:
            return fail(NeoError(ErrorCode.PROTOCOL, "connection lost"))
        if self._conn.queued_bytes < self._conn.peer_window:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drain_waiters.append(d)
        return d

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Collect the frames sent inside the ``with`` block into one ``transport.write`` (a producer posting
        many small messages from outside ``dataReceived`` uses this to save SSH packets / TLS records)."""
        self._batch += 1
        try:
            yield
        finally:
            self._batch -= 1
            if not self._batch:
                self._flush()

    def close(self) -> None:
        """Close the connection after queued frames are written."""
        self._closing = True
        self._inbox.clear()
        self._inbox_bytes = 0
        if not self._batch:
            self._flush()

    # --- state ---------------------------------------------------------------------------------------

    @property
    def bytes_sent(self) -> int:
        """Frame bytes written so far (headers included): what --json reports as bytes_sent."""
        return self._conn.bytes_sent

    @property
    def bytes_received(self) -> int:
        return self._conn.bytes_received

    @property
    def max_frame(self) -> int:
        """Largest frame body accepted from the peer (``bad_frame``, fatal, beyond it)."""
        return self._conn.max_frame

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        self._conn.max_frame = max(1, min(value, limits.MAX_FRAME))

    @property
    def window(self) -> int:
        """Our receive window: what the session must advertise in its hello / welcome."""
        return self._conn.window

    @property
    def ended_cleanly(self) -> bool:
        """True once a bye went each way: the session ended by agreement, not by EOF or error."""
        return self._bye_sent and self._bye_received

    @property
    def failure(self) -> NeoError | None:
        """The error that failed this peer (an error for a post, a connection-level error), if any."""
        return self._failure

    @property
    def in_flight(self) -> int:
        """Requests awaiting their reply."""
        return len(self._pending)

    @property
    def queued_bytes(self) -> int:
        """Bytes of outbound frames waiting for the peer's credit."""
        return self._conn.queued_bytes

    @property
    def held_bytes(self) -> int:
        """Inbound bytes held in memory: parsed messages not yet handled plus a partial frame."""
        return self._inbox_bytes + self._conn.buffered_bytes

    def when_closed(self) -> Deferred[None]:
        """Fire when the connection is gone (each call gets its own Deferred)."""
        if self._lost:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed_waiters.append(d)
        return d

    # --- output ----------------------------------------------------------------------------------------

    @property
    def _stream(self) -> _Stream:
        return cast(_Stream, self.transport)

    def _flush(self) -> None:
        """Write every frame credit allows, wake drain waiters, and finish a requested close."""
        if self.transport is None or self._disconnecting or self._lost:
            return
        conn = self._conn
        waiters = self._drain_waiters
        self._batch += 1
        try:
            while True:
                data = conn.data_to_send()
                if data:
                    self._stream.write(data)
                if not waiters or conn.queued_bytes >= conn.peer_window or self._failure is not None:
                    break
                # A woken producer may post more: loop to write it in the same pass.
                while waiters and conn.queued_bytes < conn.peer_window:
                    waiters.popleft().callback(None)
        finally:
            self._batch -= 1
        if self._closing and not conn.queued_bytes and not self._disconnecting:
            self._disconnecting = True
            self._stream.loseConnection()

    def _abort(self, error: Error) -> None:
        """Fatal error: write what credit allows, then the error (exempt from credit), then disconnect."""
        if self._disconnecting or self._lost:
            return
        self._closing = True
        self._inbox.clear()
        self._inbox_bytes = 0
        conn = self._conn
        pending = conn.data_to_send() if self.transport is not None else b""
        conn.discard_queued()
        conn.send(error)
        data = pending + conn.data_to_send()
        if self.transport is not None:
            self._disconnecting = True
            self._stream.write(data)
            self._stream.loseConnection()

    # --- input ---------------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        # Frames sent before the transport existed (a hello sent from a factory) go out now.
        self._flush()

    def dataReceived(self, data: bytes) -> None:
        if self._lost or self._disconnecting:
            return
        self._batch += 1
        try:
            try:
                frames = self._conn.receive(data)
            except ProtocolViolation as violation:
                log.warn(
                    "Closing connection: protocol violation by peer: {code}: {reason}",
                    code=str(violation.code),
                    reason=violation.message,
                )
                self._abort(Error(rid=0, code=str(violation.code), message=violation.message))
                return
            for message, size in frames:
                if self._disconnecting:
                    break
                self._route(message, size)
            if self._inbox and not self._busy:
                self._dispatch()
        except Exception:
            # A bug here must not leave the stream half-parsed and alive: report it and disconnect.
            log.failure("Neophytos peer failed on received data")
            self._abort(Error(rid=0, code=str(ErrorCode.INTERNAL), message="internal error"))
        finally:
            self._batch -= 1
            if not self._batch:
                self._flush()

    def _route(self, message: Message, size: int) -> None:
        kind = type(message)
        rid = message.rid
        if kind is Error:
            self._error_received(message)  # type: ignore[arg-type]
            return
        if kind is Ping:
            self._ping_received(rid, size)
            return
        if kind is Bye:
            self._bye_received = True
        elif (kind is Hello or kind is Welcome) and not self._window_known:
            self._window_known = True
            window = message.window  # type: ignore[attr-defined]
            # Out of range is refused (set_peer_window); in range, honoured up to our cap.
            in_range = limits.MIN_WINDOW <= window <= limits.MAX_WINDOW
            self._conn.set_peer_window(min(window, self._max_peer_window) if in_range else window)
        entry = self._pending.get(rid) if rid else None
        if entry is not None:
            self._reply_received(rid, entry, message)
            self._conn.release(size)
        elif (rid and rid & 1 == self._parity) or self._closing:
            # A late reply to a request that already failed (the peer failed, or ``more`` raised), or
            # anything after close(): nothing waits for it.
            log.debug("Dropping {kind} for rid {rid}", kind=kind.__name__, rid=rid)
            self._conn.release(size)
        else:
            self._inbox.append((message, size))
            self._inbox_bytes += size
            if self.max_inbox is not None and self._inbox_bytes > self.max_inbox:
                log.info("Closing connection: {n} bytes of requests queued, at most {most} allowed now",
                         n=self._inbox_bytes, most=self.max_inbox)  # fmt: skip
                text = f"more than {self.max_inbox} bytes of requests queued (allowed now; log in first?)"
                self._abort(Error(rid=0, code=str(ErrorCode.LIMIT_EXCEEDED), message=text))

    def _ping_received(self, rid: int, size: int) -> None:
        """Answer at once, ahead of the handler's queue: a ping asks whether the connection lives, not whether
        the handler is free. No pong while a window of output already waits for the peer's credit (it hears
        from us then anyway), so pings cannot grow our output queue."""
        self._conn.release(size)
        if not self._closing and self._conn.queued_bytes < self._conn.peer_window:
            self.send(Pong(rid=rid))

    def time_out(self, error: NeoError) -> None:
        """The peer went silent: fail every pending and later request with ``error`` and drop the connection
        without waiting for it (a dead link would never finish a clean close)."""
        self._fail(error)
        if self.transport is None or self._lost:
            return
        self._disconnecting = True
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self._stream.loseConnection()

    def _reply_received(
        self, rid: int, entry: tuple[Deferred[Message], Callable[[Message], bool] | None], message: Message
    ) -> None:
        d, more = entry
        if more is not None:
            try:
                if more(message):
                    return
            except Exception:
                del self._pending[rid]
                d.errback(Failure())
                return
        del self._pending[rid]
        d.callback(message)

    def _error_received(self, message: Error) -> None:
        error = _remote_error(message)
        rid = message.rid
        entry = self._pending.pop(rid, None) if rid else None
        if entry is not None:
            entry[0].errback(error)
            return
        if rid == 0:
            log.warn("Peer reported a connection error: {error}", error=error)
        self._fail(error)
        if rid == 0 and self.transport is not None and not self._disconnecting:
            self._disconnecting = True
            self._stream.loseConnection()

    def _fail(self, error: NeoError) -> None:
        """The peer failed: every pending request and drain waiter errbacks with ``error``, later ones too."""
        if self._failure is not None:
            return
        self._failure = error
        pending = self._pending
        self._pending = {}
        for d, _more in pending.values():
            d.errback(error)
        waiters = self._drain_waiters
        self._drain_waiters = deque()
        for waiter in waiters:
            waiter.errback(error)

    # --- the handler -----------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Hand inbox messages to the handler one at a time, releasing each frame's credit when handled."""
        if self._dispatching:
            return
        self._dispatching = True
        self._batch += 1
        inbox = self._inbox
        try:
            while inbox and not self._busy and not self._closing:
                message, size = inbox.popleft()
                self._inbox_bytes -= size
                try:
                    result = self.handler.message_received(self, message)
                except Exception:
                    self._handler_failed(message, Failure())
                    self._conn.release(size)
                    continue
                if result is None:
                    self._conn.release(size)
                    continue
                self._busy = True
                # May fire at once: _handled then clears _busy and this loop goes on.
                result.addBoth(self._handled, message, size)
        finally:
            self._dispatching = False
            self._batch -= 1
            if not self._batch:
                self._flush()

    def _handled(self, result: object, message: Message, size: int) -> None:
        self._busy = False
        if isinstance(result, Failure):
            self._handler_failed(message, result)
        if self._lost:
            return None
        self._conn.release(size)
        if not self._dispatching:
            if self._inbox:
                self._dispatch()
            elif not self._batch:
                self._flush()
        return None

    def _handler_failed(self, message: Message, failure: Failure) -> None:
        if self._lost:
            return
        if isinstance(failure.value, NeoError):
            self.reply_error(message.rid, failure.value)
            return
        log.failure(
            "Handler failed on {kind} (rid {rid})", failure, kind=type(message).__name__, rid=message.rid
        )
        self.reply_error(message.rid, NeoError(ErrorCode.INTERNAL, "internal error; see the server log"))

    # --- the end ---------------------------------------------------------------------------------------

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Idempotent: conch may call this twice (twisted#3007).
        if self._lost:
            return
        self._lost = True
        self._inbox.clear()
        self._inbox_bytes = 0
        lost = NeoError(ErrorCode.PROTOCOL, "connection lost")
        pending = self._pending
        self._pending = {}
        for d, _more in pending.values():
            d.errback(lost)
        waiters = self._drain_waiters
        self._drain_waiters = deque()
        for waiter in waiters:
            waiter.errback(self._failure or lost)
        try:
            self.handler.connection_lost(self, reason)
        except Exception:
            log.failure("MessageHandler.connection_lost failed")
        closed = self._closed_waiters
        self._closed_waiters = []
        for waiter in closed:
            waiter.callback(None)
