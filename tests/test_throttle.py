"""LoginThrottle on a test clock: the window, the doubling delay and its cap, resets, the memory bound, and how
checks running at once are admitted. Each failure is made as the session and the SSH server make one: admitted
(begin), then settled as failed."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from neotwist.server.throttle import (
    BASE_DELAY,
    LIMIT,
    MAX_DELAY,
    MAX_WAITING_PER_KEY,
    WINDOW,
    Attempt,
    LoginThrottle,
    Throttled,
    host_of,
    too_many,
)


def outcome(d: Deferred[Attempt]) -> list[Any]:
    """What ``d`` fired with so far: [] while it waits, [Attempt] or [Failure]."""
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def admitted(t: LoginThrottle, account: str | None, address: str) -> Attempt:
    got = outcome(t.begin(account, address))
    assert got and isinstance(got[0], Attempt), got
    return got[0]  # type: ignore[no-any-return]


def fail(t: LoginThrottle, account: str | None, address: str) -> None:
    """One wrong password: admitted to its check (begin), then answered as a failure (settle)."""
    t.settle(admitted(t, account, address), False)


def test_blocks_after_limit_with_doubling_delay_capped() -> None:
    clock = Clock()
    t = LoginThrottle(clock)
    for _ in range(LIMIT - 1):
        fail(t, "alice", "10.0.0.1:5000")
        assert t.password_wait("alice", "10.0.0.1:5001") == 0
    fail(t, "alice", "10.0.0.1:5000")
    assert t.password_wait("alice", "10.9.9.9:1") == BASE_DELAY  # the account is blocked from anywhere
    assert t.address_wait("10.0.0.1:6000") == BASE_DELAY  # and the address for any account
    assert t.password_wait("bob", "10.0.0.2:1") == 0
    clock.advance(BASE_DELAY)
    assert t.password_wait("alice", "10.0.0.1:1") == 0
    fail(t, "alice", "10.0.0.1:5000")  # the 6th failure within the window: twice as long
    assert t.account_wait("alice") == 2 * BASE_DELAY
    assert outcome(t.begin("alice", "10.0.0.1:5000"))[0].check(Throttled)  # refused while blocked: no check
    # the cap: failures after each block ends (a window long enough to hold them all)
    t = LoginThrottle(clock, window=100 * WINDOW)
    for _ in range(LIMIT + 10):
        clock.advance(t.account_wait("alice"))
        fail(t, "alice", "10.0.0.1:5000")
    assert t.account_wait("alice") == MAX_DELAY
    assert too_many(t.account_wait("alice")) == "too many failed logins; try again in 900 s"


def test_failures_leave_the_window() -> None:
    clock = Clock()
    t = LoginThrottle(clock)
    for _ in range(LIMIT - 1):
        fail(t, "alice", "10.0.0.1:1")
        clock.advance(1)
    clock.advance(WINDOW)
    fail(t, "alice", "10.0.0.1:1")  # the earlier ones are older than the window: one failure counted
    assert t.password_wait("alice", "10.0.0.1:1") == 0


def test_success_resets_the_account_not_the_address() -> None:
    clock = Clock()
    t = LoginThrottle(clock)
    for _ in range(LIMIT - 1):
        fail(t, "alice", "10.0.0.1:1")
    t.succeeded("alice", "10.0.0.1:1")
    fail(t, "alice", "10.0.0.1:1")
    assert t.account_wait("alice") == 0  # counting started again
    assert t.address_wait("10.0.0.1:2") == BASE_DELAY  # the address has its LIMIT failures


def test_memory_is_bounded() -> None:
    clock = Clock()
    t = LoginThrottle(clock, max_keys=100)
    for i in range(1000):
        fail(t, f"guess{i}", f"10.0.{i // 250}.{i % 250}:1")
    assert len(t) <= 100
    clock.advance(WINDOW + 1)
    fail(t, "new", "10.1.1.1:1")
    assert len(t) <= 100


def test_host_of() -> None:
    assert host_of("10.0.0.1:4322") == "10.0.0.1"
    assert host_of("[::1]:4322") == "::/64"
    assert host_of("[2001:db8:1:2:aaaa::7]:4322") == host_of("[2001:db8:1:2:bbbb::9]:1") == "2001:db8:1:2::/64"
    assert host_of("[2001:db8:1:3::7]:4322") == "2001:db8:1:3::/64"  # another /64, another key
    assert host_of("[::ffff:10.0.0.1]:4322") == "::ffff:10.0.0.1"  # an IPv4 client on a dual-stack socket
    assert host_of("unix-socket") == "unix-socket"


def test_a_burst_of_checks_waits_its_turn_and_good_logins_all_get_in() -> None:
    """Sixteen clients of one account behind one address log in at once: LIMIT checks run, the rest wait (no
    refusal), and as each succeeds the next is admitted, until all are in."""
    t = LoginThrottle(Clock())
    turns = [outcome(t.begin("alice", "10.0.0.1:1")) for _ in range(16)]
    assert [bool(x) for x in turns] == [True] * LIMIT + [False] * (16 - LIMIT)
    done = 0
    while done < 16:
        attempt = turns[done][0]
        assert isinstance(attempt, Attempt)
        t.settle(attempt, True)
        done += 1
    assert all(isinstance(x[0], Attempt) for x in turns)
    assert t.password_wait("alice", "10.0.0.1:1") == 0


def test_a_burst_of_guesses_gets_limit_checks_then_the_waiting_ones_are_refused() -> None:
    t = LoginThrottle(Clock())
    turns = [outcome(t.begin("alice", f"10.0.0.{i}:1")) for i in range(LIMIT + 3)]
    running = [x[0] for x in turns if x]
    assert len(running) == LIMIT  # the account allows LIMIT checks at once
    for attempt in running:
        t.settle(attempt, False)
    for x in turns[LIMIT:]:
        assert isinstance(x[0], Failure) and x[0].check(Throttled)
        assert x[0].value.message == too_many(BASE_DELAY)
    assert t.account_wait("alice") == BASE_DELAY


def test_failures_in_the_window_leave_less_room() -> None:
    """With LIMIT - 1 failures already, one check at a time: a second waits, and is admitted after a success."""
    t = LoginThrottle(Clock())
    for _ in range(LIMIT - 1):
        fail(t, "alice", "10.0.0.1:1")
    first, second = outcome(t.begin("alice", "10.0.0.2:1")), outcome(t.begin("alice", "10.0.0.3:1"))
    assert first and not second
    t.settle(first[0], True)  # the account's failures are forgotten
    assert second and isinstance(second[0], Attempt)


def test_a_waiting_attempt_can_be_withdrawn_and_waiting_is_bounded() -> None:
    t = LoginThrottle(Clock())
    running = [outcome(t.begin("alice", "10.0.0.1:1"))[0] for _ in range(LIMIT)]
    waiting = t.begin("alice", "10.0.0.1:1")
    gone = outcome(waiting)
    waiting.cancel()  # its connection went away
    assert isinstance(gone[0], Failure)
    t.settle(running[0], None)  # not counted: no failure, and nobody left waiting to admit
    assert t.password_wait("alice", "10.0.0.1:1") == 0
    extra = [outcome(t.begin("bob", "10.0.0.2:1")) for _ in range(LIMIT + MAX_WAITING_PER_KEY + 1)]
    refused = extra[-1]
    assert isinstance(refused[0], Failure) and "too many logins at once" in refused[0].value.message
    assert all(not x for x in extra[LIMIT:-1])  # the others wait
    assert outcome(t.begin("carol", "10.0.0.3:1"))[0].__class__ is Attempt  # other keys are not held up
