"""Turn on TCP keepalive for a connection, so the kernel notices a peer that vanished without a FIN.

Both ends do this (the server for its SSH and TLS connections, the client for its own): after ``IDLE`` seconds
without traffic the kernel probes every ``INTERVAL`` seconds and drops the connection after ``COUNT`` unanswered
probes, about two minutes in all. That ends the server's side of a blackholed connection (its push is then
aborted and its chunks kept for a retry); the client's read timeout is the application-level ``ping``
(:mod:`neotwist.client.keepalive`), since a middlebox may answer keepalives for a dead server.
"""

from __future__ import annotations

import socket
from typing import Any

IDLE = 60
INTERVAL = 10
COUNT = 6


def enable(transport: Any) -> bool:
    """Set keepalive on the socket under ``transport`` (descending through TLS and other wrappers); False if
    there is none (a pipe, an in-memory transport)."""
    for _ in range(4):
        if transport is None:
            return False
        get_handle = getattr(transport, "getHandle", None)
        handle = get_handle() if get_handle is not None else None
        if isinstance(handle, socket.socket):
            try:
                handle.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                for name, value in (("TCP_KEEPIDLE", IDLE), ("TCP_KEEPINTVL", INTERVAL), ("TCP_KEEPCNT", COUNT)):
                    option = getattr(socket, name, None)
                    if option is not None:
                        handle.setsockopt(socket.IPPROTO_TCP, option, value)
            except OSError:
                return False
            return True
        transport = getattr(transport, "transport", None)
    return False
