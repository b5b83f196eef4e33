"""Failed-login throttling in the TLS-style ``login`` of the server session, on Twisted's test clock: attempts are
counted before their bcrypt check runs, so a burst of concurrent connections gets no more guesses than the limit;
invalid account names are neither logged as sent nor made throttle keys, and spend no bcrypt."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient

from neotwist.server.session import make_server_peer
from neotwist.server.throttle import BASE_DELAY, LIMIT
from neotwist.testing import PASSWORD, Client, Kit
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, RemoteError
from neotwist.wire.messages import Hello, LoggedIn, Login
from neotwist.wire.peer import Peer


class Queued:
    """A ``run_blocking`` whose jobs wait until :meth:`run_all`: bcrypt checks still running."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

    def __call__(self, f: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.jobs.append((d, f, args))
        return d

    def run_all(self) -> None:
        while self.jobs:
            d, f, args = self.jobs.pop(0)
            maybeDeferred(f, *args).chainDeferred(d)


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    from twisted.logger import formatEvent

    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def login(kit: Kit, account: str, password: str, address: str = "192.0.2.7:5000") -> tuple[list[Any], Any]:
    """Connect TLS-style (no account yet), say hello and send ``login``; the reply list fills when it is answered."""
    client, _server, pump = connectedServerAndClient(
        lambda: make_server_peer(kit.services, None, address), lambda: Peer(Client(), is_client=True)
    )
    client.request(Hello(rid=0, version=limits.PROTOCOL_VERSION, software="t", window=client.window))
    pump.flush()
    out: list[Any] = []
    client.request(Login(rid=0, account=account, password=password)).addBoth(out.append)
    pump.flush()
    return out, pump


def error_of(out: list[Any]) -> RemoteError:
    assert out and isinstance(out[0], Failure) and out[0].check(RemoteError), out
    return out[0].value  # type: ignore[no-any-return]


def test_a_burst_of_concurrent_logins_gets_no_more_guesses_than_the_limit(kit: Kit) -> None:
    queued = Queued()
    kit.services.run_blocking = queued
    attempts = [login(kit, "alice", f"guess {i}", f"192.0.2.{i}:1") for i in range(LIMIT + 3)]
    # LIMIT checks are running; every later connection waits for its turn, without a bcrypt check
    assert len(queued.jobs) == LIMIT
    assert all(not out for out, _pump in attempts[LIMIT:])
    queued.run_all()
    for out, pump in attempts[:LIMIT]:
        pump.flush()
        assert error_of(out).code == ErrorCode.AUTH_FAILED
    # the LIMIT failures block the account: the waiting ones are refused, and never checked
    for out, pump in attempts[LIMIT:]:
        pump.flush()
        refused = error_of(out)
        assert refused.code == ErrorCode.THROTTLED and "too many failed logins" in refused.message
    assert not queued.jobs
    # the right password is refused too until the block ends, then works
    out, _pump = login(kit, "alice", PASSWORD)
    assert error_of(out).code == ErrorCode.THROTTLED and not queued.jobs
    kit.clock.advance(BASE_DELAY)
    out, pump = login(kit, "alice", PASSWORD)
    queued.run_all()
    pump.flush()
    assert isinstance(out[0], LoggedIn)


def test_a_burst_of_good_logins_from_one_address_all_get_in(kit: Kit) -> None:
    """Sixteen clients of one account behind one address (a benchmark, an office behind NAT) log in at once:
    they take turns at the bcrypt checks, and none is refused."""
    queued = Queued()
    kit.services.run_blocking = queued
    attempts = [login(kit, "alice", PASSWORD) for _ in range(16)]
    assert len(queued.jobs) == LIMIT
    while queued.jobs:
        queued.run_all()
        for _out, pump in attempts:
            pump.flush()
    assert all(out and isinstance(out[0], LoggedIn) for out, _pump in attempts), [o for o, _p in attempts]


def test_a_login_waiting_for_its_turn_goes_with_its_connection(kit: Kit) -> None:
    queued = Queued()
    checks: list[tuple[Any, ...]] = []

    def counted(f: Any, *args: Any) -> Deferred[Any]:
        checks.append(args)
        return queued(f, *args)

    kit.services.run_blocking = counted
    running = [login(kit, "alice", PASSWORD) for _ in range(LIMIT)]
    out, pump = login(kit, "alice", "the one that leaves")
    assert len(checks) == LIMIT and not out
    pump.server.transport.loseConnection()  # type: ignore[attr-defined]
    pump.flush()
    queued.run_all()  # the running logins succeed, which would admit a waiting one
    for good, p in running:
        p.flush()
        assert isinstance(good[0], LoggedIn)
    assert len(checks) == LIMIT  # the lost connection's login was withdrawn: no check ran for it
    assert all("the one that leaves" not in args for args in checks)


def test_a_success_is_not_left_counted_against_the_address(kit: Kit) -> None:
    for i in range(LIMIT - 1):
        assert error_of(login(kit, "alice", f"wrong {i}")[0]).code == ErrorCode.AUTH_FAILED
    out, _pump = login(kit, "alice", PASSWORD)  # counted while it ran (the LIMIT-th), taken back when it succeeded
    assert isinstance(out[0], LoggedIn)
    throttle = kit.services.throttle
    assert throttle is not None
    assert throttle.address_wait("192.0.2.7:1") == 0 and throttle.account_wait("alice") == 0


def test_invalid_login_names_are_not_logged_or_kept_and_cost_no_bcrypt(kit: Kit, log_lines: list[str]) -> None:
    queued = Queued()
    kit.services.run_blocking = queued
    forged = "alice address=10.0.0.1 method=password\nlogin: account=root address=10.0.0.1 method=password"
    out, _pump = login(kit, forged, "x")
    assert error_of(out).code == ErrorCode.AUTH_FAILED and not queued.jobs
    throttle = kit.services.throttle
    assert throttle is not None and len(throttle) == 1  # the address only, no key for the junk name
    text = "\n".join(log_lines)
    assert "login failed: account=(invalid name) address=192.0.2.7:5000 method=password" in text
    assert "account=root" not in text and "\n".join(log_lines).count("\n") == len(log_lines) - 1
    # they still count against the address
    for _ in range(LIMIT - 1):
        login(kit, "\x1b[31mx", "x")
    assert error_of(login(kit, "alice", PASSWORD)[0]).code == ErrorCode.THROTTLED
