"""What both ends' conch channels share: the window and packet sizes, and a linear-time write backlog.

conch's ``SSHChannel.write`` keeps data that does not fit the peer's window in ``self.buf`` and appends with
``self.buf += data`` on ``bytes``: every write while the window is closed copies the whole backlog, which is
quadratic, and the profile of a first push showed it as the client's largest single cost (21% of samples).
:class:`LinearBacklog` keeps the backlog in a ``bytearray`` (amortized O(1) appends) and leaves the rest of
conch's logic as it is. The backlog stays bounded anyway: the protocol's own credit limits what is written.
"""

from __future__ import annotations

from typing import Any

CHANNEL_WINDOW = 8 * 1024 * 1024
"""Receive window of a channel, above the protocol's default credit window (16 MiB) so conch itself never has to
buffer: conch's 128 KiB default caps loopback throughput near 210 MB/s; 8 MiB gave about 550 MB/s. Memory stays
bounded anyway: the protocol's credit limits what a peer may send ahead."""

CHANNEL_MAX_PACKET = 128 * 1024
"""Largest channel data packet we accept (conch's default is 32 KiB). Each packet costs conch a new HMAC
object and random padding, so larger packets cut that per-packet cost; 128 KiB stays well inside OpenSSH's
256 KiB packet limit."""


class LinearBacklog:
    """Mix into an ``SSHChannel`` subclass (before it) to make writes beyond the window linear-time."""

    buf: Any

    def write(self, data: bytes) -> None:
        if self.buf:
            if type(self.buf) is not bytearray:
                self.buf = bytearray(self.buf)
            self.buf += data
            return
        super().write(data)  # type: ignore[misc]
