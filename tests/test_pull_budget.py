"""The pull's byte budget: fetched bytes held at once are bounded, and waiters are served in order."""

from __future__ import annotations

from neotwist.client.pull import _ByteBudget


def test_budget_bounds_and_orders_waiters() -> None:
    budget = _ByteBudget(100)
    assert budget.cap(500) == 100
    first = budget.acquire(60)
    assert first.called and budget.free == 40
    order: list[str] = []
    big = budget.acquire(80)
    small = budget.acquire(10)  # fits now, but waits behind the earlier request
    big.addCallback(lambda _: order.append("big"))
    small.addCallback(lambda _: order.append("small"))
    assert order == []
    budget.release(60)
    assert order == ["big", "small"] and budget.free == 10
    budget.release(80)
    budget.release(10)
    assert budget.free == 100
