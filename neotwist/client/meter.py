"""What one push or pull cost on its connection: bytes each way and wall time, for its summary.

Several runs may share one session (the API keeps a connection open), so a run reads the peer's byte
counters when it starts and reports the difference, not the counters themselves."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from neotwist.wire.peer import Peer


class Metered(Protocol):
    """A run's summary: the three figures a :class:`Meter` fills in."""

    bytes_sent: int
    bytes_received: int
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class Meter:
    """The peer's counters and the clock when a run started."""

    peer: Peer
    started: float
    sent: int
    received: int

    @classmethod
    def start(cls, peer: Peer) -> Meter:
        return cls(peer, time.monotonic(), peer.bytes_sent, peer.bytes_received)

    def fill(self, summary: Metered) -> None:
        """Set ``summary``'s bytes each way and elapsed time to what the run has cost so far."""
        summary.bytes_sent = self.peer.bytes_sent - self.sent
        summary.bytes_received = self.peer.bytes_received - self.received
        summary.elapsed_s = time.monotonic() - self.started
