"""A byte budget on the reactor: waiters get their bytes in arrival order once enough are free.

A :class:`~twisted.internet.defer.DeferredSemaphore` counts requests; what a connection may hold in memory or ask
the workers to decompress is a number of *bytes*, and requests differ in size by orders of magnitude (a put of
145 bytes may declare 4 MiB of content). ``ByteBudget`` is that semaphore by weight. A request larger than the
whole budget is granted alone (when nothing else is held), so it can never wait for ever. First come, first
served: a large request at the head is not overtaken by small ones (that could starve it).
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred, succeed


class ByteBudget:
    """At most ``limit`` bytes held at once (reactor thread only)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a byte budget must be at least 1")
        self.limit = limit
        self.held = 0
        self._waiting: deque[tuple[int, Deferred[None]]] = deque()

    def acquire(self, size: int) -> Deferred[None]:
        """Fire once ``size`` bytes (clipped to the limit) are held for the caller; give them back with
        :meth:`release` (the same ``size``)."""
        size = min(max(size, 0), self.limit)
        if not self._waiting and self.held + size <= self.limit:
            self.held += size
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._cancel(d))
        self._waiting.append((size, d))
        return d

    def release(self, size: int) -> None:
        self.held -= min(max(size, 0), self.limit)
        waiting = self._waiting
        while waiting and self.held + waiting[0][0] <= self.limit:
            size, d = waiting.popleft()
            self.held += size
            d.callback(None)

    def _cancel(self, d: Deferred[None]) -> None:
        self._waiting = deque(w for w in self._waiting if w[1] is not d)
        self.release(0)  # the head may have changed
