"""Failed-login throttling, per account name and per client address, on the reactor's clock.

bcrypt makes each guess cost a quarter of a second of server CPU, but a patient attacker (or several
connections at once) can still guess for ever. So failures are counted per account name and per address over a
sliding window of :data:`WINDOW` seconds. From the :data:`LIMIT`-th failure on, that key is refused for a delay
that doubles with every further failure (:data:`BASE_DELAY`, 2x, 4x... capped at :data:`MAX_DELAY`). A refused
attempt runs no bcrypt and says how long to wait. A successful login resets its account's count (not the
address's: logging in to one's own account must not clear an address that guessed at others).

Which attempts a key blocks is the caller's choice: the session and the SSH server refuse password attempts
when the account *or* the address is blocked, and signed public-key attempts only when the address is (a key
cannot be guessed, so a password-guessing attacker must not lock out its owner's keys).

Memory is bounded: at most :data:`MAX_KEYS` keys are remembered; expired ones go first, then the oldest.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

LIMIT = 5
"""Failures within WINDOW after which a key is blocked."""

WINDOW = 600.0
"""Seconds over which failures are counted (10 minutes)."""

BASE_DELAY = 30.0
"""Block after the LIMIT-th failure, in seconds; it doubles with every failure after it."""

MAX_DELAY = 900.0
"""Longest block (15 minutes)."""

MAX_KEYS = 100_000
"""Keys (account names and addresses) remembered at most; an attacker's random names cannot grow memory."""


@dataclass
class _Record:
    failures: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0


def host_of(address: str) -> str:
    """The host part of ``host:port`` or ``[v6]:port`` (what format_address makes); the text itself otherwise."""
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit():
        return address
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def too_many(wait: float) -> str:
    """The refusal text, with the wait rounded up to whole seconds."""
    return f"too many failed logins; try again in {max(1, math.ceil(wait))} s"


class LoginThrottle:
    """Counts failed logins by account name and by address; ``clock`` is the reactor (or a test Clock)."""

    def __init__(
        self,
        clock: Any,
        *,
        limit: int = LIMIT,
        window: float = WINDOW,
        base_delay: float = BASE_DELAY,
        max_delay: float = MAX_DELAY,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_keys = max_keys
        self._records: OrderedDict[tuple[str, str], _Record] = OrderedDict()

    def _now(self) -> float:
        return float(self.clock.seconds())

    def _wait(self, key: tuple[str, str], now: float) -> float:
        record = self._records.get(key)
        return 0.0 if record is None else max(0.0, record.blocked_until - now)

    def account_wait(self, account: str) -> float:
        """Seconds until ``account`` may try a password again (0: now)."""
        return self._wait(("account", account), self._now())

    def address_wait(self, address: str) -> float:
        """Seconds until ``address`` (host, or host:port) may try anything again (0: now)."""
        return self._wait(("address", host_of(address)), self._now())

    def password_wait(self, account: str, address: str) -> float:
        """Seconds until a password attempt for ``account`` from ``address`` is allowed (0: now)."""
        return max(self.account_wait(account), self.address_wait(address))

    def failed(self, account: str, address: str) -> None:
        """Count one failed attempt against the account name and the address."""
        now = self._now()
        for key in (("account", account), ("address", host_of(address))):
            record = self._records.get(key)
            if record is None:
                self._make_room(now)
                record = self._records[key] = _Record()
            else:
                self._records.move_to_end(key)
            failures = record.failures
            while failures and failures[0] <= now - self.window:
                failures.popleft()
            failures.append(now)
            if len(failures) >= self.limit:
                delay = min(self.max_delay, self.base_delay * 2 ** (len(failures) - self.limit))
                record.blocked_until = max(record.blocked_until, now + delay)

    def succeeded(self, account: str, address: str) -> None:
        """A login succeeded: forget the account's failures (the address keeps its count)."""
        self._records.pop(("account", account), None)

    def _make_room(self, now: float) -> None:
        if len(self._records) < self.max_keys:
            return
        for key in [k for k, r in self._records.items() if r.blocked_until <= now and _stale(r, now, self.window)]:
            del self._records[key]
        while len(self._records) >= self.max_keys:
            self._records.popitem(last=False)

    def __len__(self) -> int:
        return len(self._records)


def _stale(record: _Record, now: float, window: float) -> bool:
    return not record.failures or record.failures[-1] <= now - window
