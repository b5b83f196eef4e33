"""LoginThrottle on a test clock: the window, the doubling delay and its cap, resets, and the memory bound.
Each failure is made as the session and the SSH server make one: counted when it begins, settled as failed."""

from __future__ import annotations

from twisted.internet.task import Clock

from neotwist.server.throttle import BASE_DELAY, LIMIT, MAX_DELAY, WINDOW, LoginThrottle, host_of, too_many


def fail(t: LoginThrottle, account: str | None, address: str) -> None:
    """One wrong password: counted before its check (begin), then answered as a failure (settle)."""
    t.settle(t.begin(account, address), False)


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
    for _ in range(10):
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
    assert host_of("[::1]:4322") == "::1"
    assert host_of("unix-socket") == "unix-socket"
