"""Sans-IO framing and credit-based flow control for one Neophytos byte stream.

A frame is a 4-byte big-endian body length followed by the body, one msgpack-encoded :mod:`messages`
struct. :class:`FrameConnection` owns both directions of one session: it parses inbound bytes into
messages, refusing a bad length *before* buffering the body, and it holds outbound frames until the peer
has granted credit for them.

Why our own flow control: conch refills an SSH channel's window before ``dataReceived`` and has no
producer/consumer link to the subsystem protocol, and TLS has none either; without credit a slow
receiver's memory grows without bound. Each side advertises a receive window (``Hello.window`` /
``Welcome.window``). A sender may have at most that many bytes of frames outstanding; the receiver
returns bytes with ``credit`` frames once the application has *finished* with them
(:meth:`FrameConnection.release`), so a slow consumer stops the producer.

Two kinds of frame are exempt from counting, on both sides, because refusing them could deadlock or hide
the reason for a failure, and because the receiver acts on them at once instead of queueing them:

- ``credit`` frames (they are how the window reopens);
- ``error`` frames (a fatal error must reach the peer even when no credit is left).

An exempt frame is at most :data:`MAX_EXEMPT_FRAME` bytes; anything larger that does not fit the window
is refused from its header alone, so the receiver never buffers more than ``window + MAX_EXEMPT_FRAME``
bytes.
"""

from __future__ import annotations

import struct
from collections import deque

import msgspec

from neotwist.wire import limits, messages
from neotwist.wire.errors import ErrorCode, ProtocolViolation
from neotwist.wire.messages import Credit, Error, Hello, Message, Welcome

_HEADER = struct.Struct(">I")

MAX_EXEMPT_FRAME = limits.FRAME_HEADER + 4 * (limits.MAX_TEXT + 64) + 64
"""Upper bound of an ``error`` or ``credit`` frame: code and message at four UTF-8 bytes a character, plus the
envelope. A frame header announcing more than this must fit the receive window."""

_REASON_MAX = 200
"""Characters of a msgspec error quoted back to the peer: enough to say which field, never an echo of the
input."""


def _short_reason(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 3] + "..."


class FrameConnection:
    """Both directions of one session's frame stream, without any I/O.

    Feed received bytes to :meth:`receive`; write what :meth:`data_to_send` returns. Call :meth:`release`
    with a frame's size once the application has finished with its message, so credit flows back to the
    sender.
    """

    def __init__(self, window: int = limits.WINDOW) -> None:
        if not limits.MIN_WINDOW <= window <= limits.MAX_WINDOW:
            raise ValueError(f"window {window} outside [{limits.MIN_WINDOW}, {limits.MAX_WINDOW}]")
        self.window = window
        """Our receive window: what we advertise in hello/welcome and enforce on the peer."""

        # --- receiving ---
        self.max_frame = limits.MAX_FRAME
        """Largest frame body accepted: a server lowers it until the client has logged in (only small requests
        are allowed before, and a partial frame is held in memory)."""
        self._buf = bytearray()  # unparsed bytes: at most one partial frame between calls
        self._recv_outstanding = 0  # counted bytes received and not yet returned by a queued credit
        self._release_pending = 0  # released bytes not yet returned
        self._failed: ProtocolViolation | None = None

        # --- sending ---
        self.peer_window = limits.MIN_WINDOW
        """The peer's receive window: MIN_WINDOW until its hello/welcome says (:meth:`set_peer_window`)."""
        self._send_credit = limits.MIN_WINDOW
        self._urgent: list[bytes] = []  # credit frames: never wait
        self._queue: deque[tuple[bytes, bytes, int]] = deque()  # (header, body, counted size)
        self._queued_bytes = 0

        self.bytes_sent = 0
        """Frame bytes handed out by :meth:`data_to_send`, headers and credit frames included."""
        self.bytes_received = 0
        """Bytes of complete frames received, headers and credit frames included."""

    # --- receiving ------------------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[tuple[Message, int]]:
        """Parse ``data`` (any slice of the stream) into complete messages.

        Returns ``(message, size)`` pairs in stream order, where ``size`` is what the frame counts against our
        window (header included; 0 for an exempt ``error`` frame): pass it to :meth:`release` once the message
        is handled. ``credit`` frames are consumed here and never returned.

        Raises :class:`ProtocolViolation` (``bad_frame``, ``bad_message`` or ``flow_control``); after that the
        connection is dead and further calls raise the same violation.
        """
        if self._failed is not None:
            raise self._failed
        buf = self._buf
        buf += data
        out: list[tuple[Message, int]] = []
        try:
            self._parse(out)
        except ProtocolViolation as violation:
            self._failed = violation
            buf.clear()
            raise
        return out

    def _parse(self, out: list[tuple[Message, int]]) -> None:
        buf = self._buf
        pos = 0
        end = len(buf)
        header_size = limits.FRAME_HEADER
        try:
            while end - pos >= header_size:
                (length,) = _HEADER.unpack_from(buf, pos)
                if length == 0 or length > self.max_frame:
                    raise ProtocolViolation(
                        ErrorCode.BAD_FRAME, f"frame length {length} not in [1, {self.max_frame}]"
                    )
                size = header_size + length
                if size > MAX_EXEMPT_FRAME and self._recv_outstanding + size > self.window:
                    raise self._overrun(size)
                if end - pos < size:
                    break
                with memoryview(buf) as view, view[pos + header_size : pos + size] as body:
                    try:
                        message = messages.decode(body)
                    except (msgspec.DecodeError, msgspec.ValidationError) as error:
                        raise ProtocolViolation(ErrorCode.BAD_MESSAGE, _short_reason(error)) from None
                pos += size
                self.bytes_received += size
                kind = type(message)
                if kind is Credit:
                    self._credit_received(message.amount)  # type: ignore[attr-defined]
                elif kind is Error:
                    out.append((message, 0))
                else:
                    if self._recv_outstanding + size > self.window:
                        raise self._overrun(size)
                    self._recv_outstanding += size
                    out.append((message, size))
        finally:
            # Compact: drop parsed bytes. At most one partial frame remains, so each byte moves at most once
            # more, and CPython's bytearray makes deleting a prefix cheap anyway.
            if pos:
                del buf[:pos]

    def _overrun(self, size: int) -> ProtocolViolation:
        return ProtocolViolation(
            ErrorCode.FLOW_CONTROL,
            f"frame of {size} bytes exceeds the credit granted ({self.window - self._recv_outstanding} left)",
        )

    def _credit_received(self, amount: int) -> None:
        # The peer can only return bytes we sent and it has not yet returned.
        if self._send_credit + amount > self.peer_window:
            raise ProtocolViolation(ErrorCode.FLOW_CONTROL, "credit returned exceeds bytes sent")
        self._send_credit += amount

    def release(self, nbytes: int, *, flush: bool = False) -> None:
        """The application finished with a received frame of ``nbytes`` (the size :meth:`receive` gave).

        Released bytes are returned to the sender in one ``credit`` frame once they reach a quarter of the
        window (few credit frames, yet a blocked sender, which has over half a window outstanding, always gets
        some), or at once with ``flush``.
        """
        if nbytes < 0 or nbytes > self._recv_outstanding - self._release_pending:
            raise ValueError(f"release of {nbytes} bytes exceeds unreleased received bytes")
        self._release_pending += nbytes
        if self._release_pending and (flush or self._release_pending >= self.window // 4):
            self.flush_credit()

    def flush_credit(self) -> None:
        """Queue a ``credit`` frame for every released byte not yet returned."""
        amount = self._release_pending
        if not amount:
            return
        self._release_pending = 0
        self._recv_outstanding -= amount
        body = messages.encode(Credit(rid=0, amount=amount))
        self._urgent.append(_HEADER.pack(len(body)) + body)

    @property
    def buffered_bytes(self) -> int:
        """Bytes of a partial frame held in the receive buffer."""
        return len(self._buf)

    @property
    def unreleased_bytes(self) -> int:
        """Counted bytes received and not yet returned to the peer: what the peer still has outstanding."""
        return self._recv_outstanding

    # --- sending --------------------------------------------------------------------------------------

    def set_peer_window(self, window: int) -> None:
        """The peer advertised its receive window (hello / welcome): adopt it, keeping what is outstanding."""
        if not limits.MIN_WINDOW <= window <= limits.MAX_WINDOW:
            raise ProtocolViolation(ErrorCode.BAD_MESSAGE, f"window {window} out of range")
        self._send_credit += window - self.peer_window
        self.peer_window = window

    def send(self, message: Message) -> None:
        """Encode ``message`` and queue its frame; :meth:`data_to_send` hands it out when credit allows."""
        kind = type(message)
        if (kind is Hello or kind is Welcome) and message.window != self.window:  # type: ignore[attr-defined]
            raise ValueError("hello/welcome must advertise this connection's window")
        body = messages.encode(message)
        length = len(body)
        if length > limits.MAX_FRAME:
            raise ValueError(f"{kind.__name__} encodes to {length} bytes, over MAX_FRAME")
        header = _HEADER.pack(length)
        if kind is Credit:
            self._urgent.append(header + body)
            return
        counted = 0 if kind is Error else length + limits.FRAME_HEADER
        self._queue.append((header, body, counted))
        self._queued_bytes += length + limits.FRAME_HEADER

    def data_to_send(self) -> bytes:
        """Frames to write now: credit frames first, then queued frames in order while each fits whole."""
        out = self._urgent
        self._urgent = []
        queue = self._queue
        if queue:
            credit = self._send_credit
            sent = 0
            while queue:
                header, body, counted = queue[0]
                if counted > credit:
                    break
                queue.popleft()
                credit -= counted
                sent += len(header) + len(body)
                out.append(header)
                out.append(body)
            self._send_credit = credit
            self._queued_bytes -= sent
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        self.bytes_sent += len(data)
        return data

    def discard_queued(self) -> int:
        """Drop frames still waiting for credit (the connection is failing); return how many bytes."""
        dropped = self._queued_bytes
        self._queue.clear()
        self._queued_bytes = 0
        return dropped

    @property
    def queued_bytes(self) -> int:
        """Bytes of frames waiting for credit."""
        return self._queued_bytes

    @property
    def send_credit(self) -> int:
        """Bytes we may still send before the peer grants more."""
        return self._send_credit
