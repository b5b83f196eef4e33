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

Checks of one key run at most LIMIT at a time, counting the failures already in its window: an attempt is
admitted to its bcrypt check (:meth:`LoginThrottle.begin`) only while ``failures + checks running`` stays below
LIMIT for each key it counts against (one check at a time once a block has ended), and otherwise waits for a
running check to end. So a burst of concurrent
connections guessing passwords gets LIMIT checks, after which the key is blocked and the waiting attempts are
refused without a check; while a burst of concurrent *good* logins (sixteen clients behind one address, all of
one account) only waits its turn, and every one of them gets in. Counting an attempt as failed before its check
(and taking it back on success) would also bound the guesses, but refuses such a burst of good logins.

Account keys are only made for valid account names (the caller checks them, :func:`neotwist.paths.check_name`):
a name with control characters or other junk is counted against the address alone and never logged as is.

Memory is bounded: at most :data:`MAX_KEYS` keys are remembered; expired ones go first, then the oldest.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

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

MAX_WAITING = 1024
"""Attempts waiting for their turn at most (all keys together); more are refused at once."""

MAX_WAITING_PER_KEY = 64
"""Attempts waiting for one account or address at most, so that one address cannot fill MAX_WAITING."""


@dataclass
class _Record:
    failures: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0
    running: int = 0  # admitted attempts whose check has not ended


Key = tuple[str, str]


@dataclass
class Attempt:
    """A login attempt admitted to its check (see :meth:`LoginThrottle.begin`); settle it once."""

    keys: list[Key]
    account: str | None
    settled: bool = False


class Throttled(Exception):
    """A login attempt refused before any check: ``message`` says how long to wait (``wait`` seconds)."""

    def __init__(self, message: str, wait: float) -> None:
        super().__init__(message)
        self.message = message
        self.wait = wait


@dataclass
class _Waiter:
    keys: list[Key]
    account: str | None
    deferred: Deferred[Attempt]


def host_of(address: str) -> str:
    """The throttle key of a client address: the host part of ``host:port`` or ``[v6]:port`` (what
    format_address makes), an IPv6 host as its /64 network (one site or subscriber holds a whole /64, so a
    guesser could otherwise take a fresh address for every few guesses); the text itself otherwise."""
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit():
        return address
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return host


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
        self._records: OrderedDict[Key, _Record] = OrderedDict()
        self._waiting: list[_Waiter] = []

    def _now(self) -> float:
        return float(self.clock.seconds())

    def _wait(self, key: Key, now: float) -> float:
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

    def begin(self, account: str | None, address: str) -> Deferred[Attempt]:
        """Admit a login attempt to its check, counted against ``address`` and, unless None, ``account``. Fires
        with an :class:`Attempt` (to :meth:`settle` when the check ends) once every key has room for one more
        check (see the module docstring), at once if it has; fails with :class:`Throttled` if a key is blocked,
        or becomes blocked while the attempt waits, or if too many attempts wait already. Cancelling the
        Deferred withdraws a waiting attempt (its connection went away)."""
        keys: list[Key] = [("address", host_of(address))]
        if account is not None:
            keys.insert(0, ("account", account))
        outcome = self._try(keys, account, self._now())
        if isinstance(outcome, Throttled):
            return fail(outcome)
        if outcome is not None:
            return succeed(outcome)
        if len(self._waiting) >= MAX_WAITING or any(
            sum(key in w.keys for w in self._waiting) >= MAX_WAITING_PER_KEY for key in keys
        ):
            return fail(Throttled("too many logins at once; try again in a few seconds", 1.0))

        def withdraw(d: Deferred[Attempt]) -> None:
            self._waiting = [w for w in self._waiting if w.deferred is not d]

        waiter = _Waiter(keys, account, Deferred(withdraw))
        self._waiting.append(waiter)
        return waiter.deferred

    def _try(self, keys: list[Key], account: str | None, now: float) -> Attempt | Throttled | None:
        """An attempt on ``keys`` now: refused (a key is blocked), admitted (every key has room), or None (it
        must wait for a running check to end). The one decision for new and waiting attempts alike."""
        wait = max(self._wait(key, now) for key in keys)
        if wait > 0:
            return Throttled(too_many(wait), wait)
        return self._admit(keys, account, now) if self._has_room(keys, now) else None

    def _record(self, key: Key, now: float) -> _Record:
        record = self._records.get(key)
        if record is None:
            self._make_room(now)
            record = self._records[key] = _Record()
        else:
            self._records.move_to_end(key)
        self._expire(record, now)
        return record

    def _expire(self, record: _Record, now: float) -> None:
        """Forget ``record``'s failures older than the window."""
        failures = record.failures
        while failures and failures[0] <= now - self.window:
            failures.popleft()

    def _has_room(self, keys: list[Key], now: float) -> bool:
        for key in keys:
            record = self._records.get(key)
            if record is None:
                continue
            self._expire(record, now)
            failures = record.failures
            if record.running >= max(1, self.limit - len(failures)):  # past a block's end: one at a time
                return False
        return True

    def _admit(self, keys: list[Key], account: str | None, now: float) -> Attempt:
        for key in keys:
            self._record(key, now).running += 1
        return Attempt(keys, account)

    def settle(self, attempt: Attempt, ok: bool | None) -> None:
        """End an attempt from :meth:`begin`: ``False`` it failed (counted now, and its keys blocked once they
        hold LIMIT failures); ``True`` it succeeded (the account's failures are forgotten); ``None`` it was not an
        authentication failure at all (an internal error, a method refused before any check): not counted.
        Attempts waiting for these keys are then admitted, or refused if a key is now blocked."""
        if attempt.settled:
            return
        attempt.settled = True
        now = self._now()
        for key in attempt.keys:
            record = self._records.get(key)
            if record is None:
                continue  # forgotten to make room: nothing to take back
            record.running = max(0, record.running - 1)
            if ok is False:
                record.failures.append(now)
                self._block(record, now)
        if ok and attempt.account is not None:
            self.succeeded(attempt.account, "")
        self._serve_waiting(now)

    def _serve_waiting(self, now: float) -> None:
        """Admit, in order, the waiting attempts that now have room; refuse those whose key is now blocked."""
        ready: list[tuple[Deferred[Attempt], Attempt | Throttled]] = []
        still: list[_Waiter] = []
        for waiter in self._waiting:
            outcome = self._try(waiter.keys, waiter.account, now)
            if outcome is None:
                still.append(waiter)
            else:
                ready.append((waiter.deferred, outcome))
        self._waiting = still
        for d, outcome in ready:  # fired last: a callback may begin or settle other attempts
            if d.called:  # cancelled by an earlier callback after it was admitted: give its turn back
                if isinstance(outcome, Attempt):
                    self.settle(outcome, None)
            elif isinstance(outcome, Throttled):
                d.errback(outcome)
            else:
                d.callback(outcome)

    def _block(self, record: _Record, now: float) -> None:
        """Block ``record``'s key from ``now`` if it holds at least LIMIT failures: BASE_DELAY, doubled for every
        failure after the LIMIT-th, at most MAX_DELAY; a longer block already running is kept."""
        if len(record.failures) >= self.limit:
            delay = min(self.max_delay, self.base_delay * 2 ** (len(record.failures) - self.limit))
            record.blocked_until = max(record.blocked_until, now + delay)

    def succeeded(self, account: str, address: str) -> None:
        """A login succeeded: forget the account's failures and block (the address keeps its count). The record
        stays while checks of the account run, so they stay counted."""
        record = self._records.get(("account", account))
        if record is not None:
            record.failures.clear()
            record.blocked_until = 0.0

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
    """Nothing left to remember: no check running, no failure in the window."""
    return not record.running and (not record.failures or record.failures[-1] <= now - window)
