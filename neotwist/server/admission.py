"""Connections that have not authenticated yet, bounded in total and per client address (SSH and TLS together).

Before login a connection costs the server a file descriptor, a TLS or SSH handshake and, once it asks, a
bcrypt check, and proves nothing about who it is. Without a bound, idle connects from one host exhaust the
process's descriptors and every legitimate login then fails (EMFILE), over both transports. So each listener asks
:meth:`Admission.admit` before it builds a protocol: over either bound the connection is closed at once (the
factory returns no protocol), before any handshake. An admitted connection holds a :class:`Ticket` until it
authenticates (:meth:`Ticket.authenticated`) or ends (:meth:`Ticket.release`); both are idempotent. The login
timeout (``limits.LOGIN_TIMEOUT``, then an abort) bounds how long a ticket is held.

OpenSSH's ``MaxStartups`` / ``PerSourceMaxStartups`` are the same idea; this refuses outright instead of
dropping at random, so the numbers are set higher than OpenSSH's defaults (bench runs 16 clients at once from
one address).
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

log = Logger()

MAX_UNAUTHENTICATED = 256
"""Connections not yet authenticated, over every listener (also at most a quarter of the descriptor limit)."""

MAX_UNAUTHENTICATED_PER_ADDRESS = 32
"""Connections not yet authenticated from one client address."""

_LOG_EVERY = 100
"""A refusal is logged once, then once every this many (an attack must not flood the log)."""


def address_host(address: Any) -> str:
    """The host part of a listener's peer address (IPv4/IPv6), else its repr (a UNIX socket: one bucket)."""
    host = getattr(address, "host", None)
    return str(host) if host is not None else repr(type(address).__name__)


def descriptor_share(limit: int) -> int:
    """``limit``, lowered to a quarter of the process's soft descriptor limit (at least 8): whatever the settings,
    connections that have not logged in never take most of the descriptors the logged-in ones need."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return limit
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return limit
    return min(limit, max(8, soft // 4))


class Ticket:
    """One admitted connection's place among the unauthenticated ones."""

    __slots__ = ("_admission", "_held", "host")

    def __init__(self, admission: Admission, host: str) -> None:
        self._admission = admission
        self.host = host
        self._held = True

    def authenticated(self) -> None:
        """The connection logged in: it no longer counts."""
        self._leave()

    def release(self) -> None:
        """The connection ended."""
        self._leave()

    def _leave(self) -> None:
        if self._held:
            self._held = False
            self._admission._left(self.host)


class Admission:
    """Counts of unauthenticated connections, in total and per address (reactor thread only)."""

    def __init__(self, total: int = MAX_UNAUTHENTICATED, per_address: int = MAX_UNAUTHENTICATED_PER_ADDRESS) -> None:
        if total < 1 or per_address < 1:
            raise ValueError("connection limits must be at least 1")
        self.total = total
        self.per_address = per_address
        self._by_host: dict[str, int] = {}
        self._count = 0
        self.refused = 0

    @property
    def pending(self) -> int:
        """Connections admitted and not yet authenticated or ended."""
        return self._count

    def admit(self, host: str) -> Ticket | None:
        """A ticket for a new connection from ``host``, or None when a bound is reached (close it at once)."""
        held = self._by_host.get(host, 0)
        if self._count >= self.total or held >= self.per_address:
            self.refused += 1
            if self.refused % _LOG_EVERY == 1:
                log.warn(
                    "refusing connections before login: {pending} waiting to log in ({here} from {host}), at most "
                    "{total} ({per_address} per address); {refused} refused so far",
                    pending=self._count, here=held, host=host, total=self.total, per_address=self.per_address,
                    refused=self.refused,
                )  # fmt: skip
            return None
        self._by_host[host] = held + 1
        self._count += 1
        return Ticket(self, host)

    def _left(self, host: str) -> None:
        self._count -= 1
        held = self._by_host.get(host, 0) - 1
        if held > 0:
            self._by_host[host] = held
        else:
            self._by_host.pop(host, None)
