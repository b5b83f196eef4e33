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

An attempt is counted as failed when it *starts* (:meth:`LoginThrottle.begin`), before its bcrypt check, and
taken back when it turns out to be a success (:meth:`LoginThrottle.settle`). Counting only after the check would
let a burst of concurrent connections all pass the "blocked?" test while their checks run, and so get many more
guesses than :data:`LIMIT` before the first failure is recorded.

Account keys are only made for valid account names (the caller checks them, :func:`neotwist.paths.check_name`):
a name with control characters or other junk is counted against the address alone and never logged as is.

Memory is bounded: at most :data:`MAX_KEYS` keys are remembered; expired ones go first, then the oldest.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from neotwist.paths import check_name
from neotwist.wire.errors import NeoError

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


@dataclass
class Attempt:
    """A login attempt counted as failed in advance (see :meth:`LoginThrottle.begin`); settle it once."""

    time: float
    keys: list[tuple[tuple[str, str], float]]  # each key counted, with its blocked_until before this attempt
    account: str | None
    settled: bool = False


def host_of(address: str) -> str:
    """The host part of ``host:port`` or ``[v6]:port`` (what format_address makes); the text itself otherwise."""
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit():
        return address
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def valid_login_name(name: str) -> str | None:
    """``name`` if it is a valid account name (what may be logged and counted per account), else None."""
    try:
        return check_name(name, "account name")
    except NeoError:
        return None


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

    def password_wait(self, account: str | None, address: str) -> float:
        """Seconds until a password attempt for ``account`` (None: an invalid name) from ``address`` is allowed
        (0: now)."""
        return max(0.0 if account is None else self.account_wait(account), self.address_wait(address))

    def begin(self, account: str | None, address: str) -> Attempt:
        """Count an attempt that is about to be checked as a failure *now*, so attempts running at the same time
        see it; :meth:`settle` takes it back if it succeeds. ``account`` None: an invalid name (address only)."""
        now = self._now()
        keys = [("address", host_of(address))]
        if account is not None:
            keys.insert(0, ("account", account))
        counted = []
        for key in keys:
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
            counted.append((key, record.blocked_until))
            self._block(record, now)
        return Attempt(now, counted, account)

    def settle(self, attempt: Attempt, ok: bool | None) -> None:
        """End an attempt from :meth:`begin`: ``False`` it failed (it stays counted); ``True`` it succeeded (the
        account's failures are forgotten, and the address's count loses this attempt); ``None`` it was not an
        authentication failure at all (an internal error, a method refused before any check): taken back."""
        if attempt.settled:
            return
        attempt.settled = True
        if ok is False:  # the block runs from the failure's answer, as if it had been counted only now
            now = self._now()
            for key, _before in attempt.keys:
                record = self._records.get(key)
                if record is not None:
                    self._block(record, now)
            return
        for key, before in attempt.keys:
            record = self._records.get(key)
            if record is None:
                continue
            try:
                record.failures.remove(attempt.time)
            except ValueError:
                continue  # already out of the window
            if len(record.failures) < self.limit:
                record.blocked_until = min(record.blocked_until, before)  # the block this attempt caused, if any
        if ok and attempt.account is not None:
            self.succeeded(attempt.account, "")

    def _block(self, record: _Record, now: float) -> None:
        """Block ``record``'s key from ``now`` if it holds at least LIMIT failures: BASE_DELAY, doubled for every
        failure after the LIMIT-th, at most MAX_DELAY; a longer block already running is kept. The one formula
        for both places that set a block: counting an attempt (:meth:`begin`) and answering it as a failure
        (:meth:`settle`), so the two cannot drift apart."""
        if len(record.failures) >= self.limit:
            delay = min(self.max_delay, self.base_delay * 2 ** (len(record.failures) - self.limit))
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
