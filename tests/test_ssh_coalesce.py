"""The conch client's channel transport hands the Peer's writes of one reactor turn to the SSH channel as one
write: every channel write is an SSH packet of its own (HMAC, padding, cipher call at each end), and a push
writes a frame per chunk."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from neotwist.client.sshclient import _ChannelTransport


class Channel:
    """Records what reaches the channel (the SSH packets' source) and its close."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.events: list[str] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.events.append("write")

    def loseConnection(self) -> None:
        self.events.append("close")


def _transport() -> tuple[_ChannelTransport, Channel, Clock]:
    channel, clock = Channel(), Clock()
    return _ChannelTransport(channel, clock), channel, clock  # type: ignore[arg-type]


def test_writes_of_one_turn_become_one_channel_write() -> None:
    transport, channel, clock = _transport()
    for frame in (b"put-1", b"put-2", b"put-3"):
        transport.write(frame)
    transport.writeSequence([b"put-", b"4"])
    assert channel.writes == []  # nothing until the turn ends
    clock.advance(0)
    assert channel.writes == [b"put-1put-2put-3put-4"]
    transport.write(b"next")
    clock.advance(0)
    assert channel.writes == [b"put-1put-2put-3put-4", b"next"]
    clock.advance(0)
    assert len(channel.writes) == 2  # no empty writes


def test_close_sends_what_was_written_first() -> None:
    transport, channel, clock = _transport()
    transport.write(b"bye")
    transport.loseConnection()
    assert channel.writes == [b"bye"]
    assert channel.events == ["write", "close"]
    clock.advance(0)
    assert channel.writes == [b"bye"]  # the scheduled flush found nothing left


def test_abort_drops_the_pending_writes() -> None:
    transport, channel, clock = _transport()
    aborted: list[Any] = []

    class TCP:
        def abortConnection(self) -> None:
            aborted.append(True)

    transport._tcp = lambda: TCP()  # type: ignore[method-assign]
    transport.write(b"half")
    transport.abortConnection()
    clock.advance(0)
    assert channel.writes == [] and aborted == [True]
