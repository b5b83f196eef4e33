"""Tests for the sans-IO frame connection: parsing, bounds, and credit-based flow control."""

from __future__ import annotations

import struct
import time

import msgspec
import pytest

from neotwist.wire import limits, messages
from neotwist.wire.errors import ErrorCode, ProtocolViolation
from neotwist.wire.framing import MAX_EXEMPT_FRAME, FrameConnection
from neotwist.wire.messages import Credit, Error, Hello, Message, Ok, Put, Welcome

CHUNK_ID = bytes(range(32))


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def put(rid: int, size: int) -> Put:
    return Put(rid=rid, handle=1, id=CHUNK_ID, codec=0, size=size, data=b"\x5a" * size)


def transfer(sender: FrameConnection, receiver: FrameConnection) -> list[tuple[Message, int]]:
    return receiver.receive(sender.data_to_send())


def violation(conn: FrameConnection, data: bytes) -> ProtocolViolation:
    with pytest.raises(ProtocolViolation) as info:
        conn.receive(data)
    return info.value


# --- parsing ---------------------------------------------------------------------------------------------


def test_round_trip_preserves_messages_and_sizes() -> None:
    a, b = FrameConnection(), FrameConnection()
    sent: list[Message] = [
        Hello(rid=1, version=1, software="neo-test", window=limits.WINDOW, features=["zstd"]),
        Ok(rid=3),
        put(5, 1000),
        Error(rid=7, code="bad_path", message="no"),
    ]
    for message in sent:
        a.send(message)
    data = a.data_to_send()
    received = b.receive(data)
    assert [m for m, _ in received] == sent
    sizes = [4 + len(messages.encode(m)) for m in sent]
    # error frames are exempt from flow control: their counted size is 0
    assert [s for _, s in received] == [*sizes[:3], 0]
    assert a.bytes_sent == b.bytes_received == len(data) == sum(sizes)
    assert b.unreleased_bytes == sum(sizes[:3])


def test_partial_delivery_byte_by_byte() -> None:
    a, b = FrameConnection(), FrameConnection()
    a.send(put(1, 300))
    a.send(Ok(rid=3))
    data = a.data_to_send()
    got: list[tuple[Message, int]] = []
    for i in range(len(data)):
        got.extend(b.receive(data[i : i + 1]))
        if len(got) < 2:
            assert b.buffered_bytes == (i + 1 if not got else i + 1 - got[0][1])
    assert [type(m) for m, _ in got] == [Put, Ok]
    assert got[0][0] == put(1, 300)
    assert b.buffered_bytes == 0


def test_large_frame_in_small_pieces_is_linear() -> None:
    a, b = FrameConnection(), FrameConnection()
    a.send(put(1, limits.MAX_CHUNK))
    data = a.data_to_send()
    got: list[tuple[Message, int]] = []
    step = 256  # 16 Ki pieces: re-copying the buffer on each would move ~32 GiB (seconds); linear is ~20 ms
    started = time.perf_counter()
    for i in range(0, len(data), step):
        got.extend(b.receive(data[i : i + step]))
    assert time.perf_counter() - started < 1.0
    assert len(got) == 1
    message = got[0][0]
    assert isinstance(message, Put)
    assert len(message.data) == limits.MAX_CHUNK


def test_oversize_length_header_refused_before_body() -> None:
    b = FrameConnection()
    error = violation(b, struct.pack(">I", limits.MAX_FRAME + 1))
    assert error.code is ErrorCode.BAD_FRAME
    assert b.buffered_bytes == 0
    # the connection is dead from then on
    with pytest.raises(ProtocolViolation):
        b.receive(b"\x00")


def test_zero_length_frame_refused() -> None:
    assert violation(FrameConnection(), b"\x00\x00\x00\x00").code is ErrorCode.BAD_FRAME


def test_garbage_body_is_bad_message() -> None:
    error = violation(FrameConnection(), frame(b"\xc1\xc1\xc1"))
    assert error.code is ErrorCode.BAD_MESSAGE
    assert "malformed" in error.message


def test_unknown_message_type_is_bad_message() -> None:
    error = violation(FrameConnection(), frame(msgspec.msgpack.encode(["launch_missiles", 1])))
    assert error.code is ErrorCode.BAD_MESSAGE
    assert "$[0]" in error.message


def test_wrong_field_type_is_bad_message() -> None:
    error = violation(FrameConnection(), frame(msgspec.msgpack.encode(["ok", "one"])))
    assert error.code is ErrorCode.BAD_MESSAGE
    assert "Expected `int`" in error.message


def test_over_long_bytes_is_bad_message() -> None:
    body = msgspec.msgpack.encode(["put", 1, 1, b"x" * 33, 0, 0, b""])
    error = violation(FrameConnection(), frame(body))
    assert error.code is ErrorCode.BAD_MESSAGE
    assert "length <= 32" in error.message


def test_frames_before_a_bad_one_do_not_hide_it() -> None:
    a, b = FrameConnection(), FrameConnection()
    a.send(Ok(rid=1))
    error = violation(b, a.data_to_send() + frame(b"\xc1"))
    assert error.code is ErrorCode.BAD_MESSAGE


def test_send_refuses_oversize_and_wrong_window() -> None:
    a = FrameConnection()
    with pytest.raises(ValueError, match="window"):
        a.send(Hello(rid=1, version=1, software="x", window=limits.MAX_WINDOW))
    big = messages.PushEntries(
        rid=1,
        handle=1,
        entries=[
            messages.Entry(path="f", kind="f", mode=0o644, mtime_ns=0, size=0, chunks=b"\x01" * 2048)
            for _ in range(limits.MAX_ENTRIES)
        ],
    )
    with pytest.raises(ValueError, match="MAX_FRAME"):
        a.send(big)
    assert a.queued_bytes == 0


# --- flow control ----------------------------------------------------------------------------------------


def test_sender_assumes_min_window_until_told() -> None:
    a = FrameConnection()
    assert a.peer_window == a.send_credit == limits.MIN_WINDOW
    a.set_peer_window(limits.WINDOW)
    assert a.send_credit == limits.WINDOW


def test_sender_stops_at_window_and_resumes_on_credit() -> None:
    window = limits.MIN_WINDOW
    a, b = FrameConnection(window), FrameConnection(window)
    chunk = 1024 * 1024
    frame_size = 4 + len(messages.encode(put(1, chunk)))
    count = 20
    for rid in range(count):
        a.send(put(2 * rid + 1, chunk))
    fits = window // frame_size
    received = transfer(a, b)
    assert len(received) == fits
    assert a.queued_bytes == (count - fits) * frame_size
    assert a.send_credit == window - fits * frame_size
    assert a.data_to_send() == b""  # nothing more without credit

    # The receiver has handled one frame: not enough to return credit yet (less than a quarter window).
    b.release(received[0][1])
    assert b.data_to_send() == b""
    for _, size in received[1:3]:
        b.release(size)
    credit = b.data_to_send()
    assert a.receive(credit) == []  # credit frames are consumed, not returned
    assert a.send_credit == window - fits * frame_size + 3 * frame_size
    more = transfer(a, b)
    assert len(more) == 3
    assert [m.rid for m, _ in received + more] == [2 * i + 1 for i in range(fits + 3)]
    # credit frames count in the byte counters but never against the window
    assert b.bytes_sent == len(credit)
    assert a.bytes_received == len(credit)


def test_frame_is_never_split_by_credit() -> None:
    a, b = FrameConnection(), FrameConnection()
    a.send(put(1, limits.MAX_CHUNK))
    a.send(put(3, limits.MAX_CHUNK))
    first = a.data_to_send()
    assert len(first) == limits.MIN_WINDOW - a.send_credit
    left = a.send_credit
    # a frame exactly one byte bigger than the credit left
    overhead = 4 + len(messages.encode(put(5, left))) - left
    a.send(put(5, left + 1 - overhead))
    assert a.queued_bytes == left + 1
    assert a.data_to_send() == b""
    # one byte of credit more and the whole frame goes
    received = b.receive(first)
    b.release(1, flush=True)
    a.receive(b.data_to_send())
    data = a.data_to_send()
    assert len(data) == left + 1
    assert a.send_credit == 0
    assert a.queued_bytes == 0
    assert [m.rid for m, _ in received + b.receive(data)] == [1, 3, 5]


def test_peer_exceeding_credit_is_flow_control_violation() -> None:
    window = limits.MIN_WINDOW
    b = FrameConnection(window)
    a = FrameConnection(window)
    a.set_peer_window(limits.MAX_WINDOW)  # a liar: sends as if b had a huge window
    for rid in range(3):
        a.send(put(2 * rid + 1, limits.MAX_CHUNK))
    data = a.data_to_send()
    error = violation(b, data)
    assert error.code is ErrorCode.FLOW_CONTROL
    # refused from the third header: the third body was never buffered
    assert b.buffered_bytes == 0


def test_small_frame_over_credit_is_refused_after_decoding() -> None:
    window = limits.MIN_WINDOW
    a, b = FrameConnection(window), FrameConnection(window)
    a.set_peer_window(limits.MAX_WINDOW)  # a liar
    big = 4 + len(messages.encode(put(1, limits.MAX_CHUNK)))
    while window - b.unreleased_bytes >= big:
        a.send(put(1, limits.MAX_CHUNK))
        b.receive(a.data_to_send())
    # fill b's window to 2 bytes short
    room = window - b.unreleased_bytes
    overhead = 4 + len(messages.encode(put(3, room))) - room
    a.send(put(3, room - 2 - overhead))
    b.receive(a.data_to_send())
    assert window - b.unreleased_bytes == 2
    # a small frame passes the header check (it could be an exempt error), then is refused once decoded
    a.send(Ok(rid=5))
    assert violation(b, a.data_to_send()).code is ErrorCode.FLOW_CONTROL


def test_error_frames_are_exempt_from_credit() -> None:
    a, b = FrameConnection(), FrameConnection()
    for rid in (1, 3, 5):  # the third does not fit
        a.send(put(rid, limits.MAX_CHUNK))
    a.send(Ok(rid=7))
    assert len(b.receive(a.data_to_send())) == 2
    assert a.queued_bytes > a.send_credit
    # Ok waits for credit, but a fatal error must still get out: it is exempt on both sides
    a.discard_queued()
    a.send(Error(rid=0, code="internal", message="x" * limits.MAX_TEXT))
    got = transfer(a, b)
    assert [(type(m), s) for m, s in got] == [(Error, 0)]
    assert 4 + len(messages.encode(got[0][0])) <= MAX_EXEMPT_FRAME


def test_credit_beyond_bytes_sent_is_refused() -> None:
    a, b = FrameConnection(), FrameConnection()
    b.send(Credit(rid=0, amount=1))
    assert violation(a, b.data_to_send()).code is ErrorCode.FLOW_CONTROL


def test_release_returns_credit_at_a_quarter_window_or_on_flush() -> None:
    window = limits.MIN_WINDOW
    a, b = FrameConnection(), FrameConnection(window)
    a.set_peer_window(window)
    a.send(Ok(rid=1))
    ((_, size),) = transfer(a, b)
    b.release(size)
    assert b.data_to_send() == b""  # far below a quarter window: held back
    b.flush_credit()
    data = b.data_to_send()
    assert messages.decode(data[4:]) == Credit(rid=0, amount=size)
    assert b.unreleased_bytes == 0
    before = a.send_credit
    assert a.receive(data) == []
    assert a.send_credit == before + size == window
    with pytest.raises(ValueError):
        b.release(1)  # nothing left to release


def test_release_flushes_by_itself_at_a_quarter_window() -> None:
    window = limits.MIN_WINDOW
    a, b = FrameConnection(), FrameConnection(window)
    a.set_peer_window(window)
    chunk = 256 * 1024
    credits: list[int] = []
    for rid in range(1, 40, 2):
        a.send(put(rid, chunk))
        for _, size in transfer(a, b):
            b.release(size)
            data = b.data_to_send()
            if data:
                credits.append(messages.decode(data[4:]).amount)  # type: ignore[attr-defined]
                a.receive(data)
    assert credits, "no credit was ever returned"
    assert all(amount >= window // 4 for amount in credits)
    assert sum(credits) + b.unreleased_bytes == a.bytes_sent


def test_window_update_keeps_outstanding_bytes() -> None:
    a, b = FrameConnection(), FrameConnection()
    a.send(Hello(rid=1, version=1, software="c", window=limits.WINDOW))
    hello_size = len(a.data_to_send())
    assert a.send_credit == limits.MIN_WINDOW - hello_size
    b.send(Welcome(rid=1, version=1, software="s", window=limits.WINDOW, login_required=False, account="u"))
    (welcome, _), = a.receive(b.data_to_send())
    assert isinstance(welcome, Welcome)
    a.set_peer_window(welcome.window)
    assert a.send_credit == limits.WINDOW - hello_size


def test_window_bounds() -> None:
    with pytest.raises(ValueError):
        FrameConnection(limits.MIN_WINDOW - 1)
    with pytest.raises(ValueError):
        FrameConnection(limits.MAX_WINDOW + 1)
    with pytest.raises(ProtocolViolation):
        FrameConnection().set_peer_window(1)
