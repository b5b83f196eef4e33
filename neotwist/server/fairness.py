"""Worker threads shared fairly between accounts: jobs wait in one queue per account, served in turn.

Every blocking job of every connection (a password check, a put batch, a read group) runs in the reactor's
thread pool, which serves jobs in arrival order. One account with many jobs queued (a flood of puts whose
content must be decompressed to be verified, several connections pulling at once) then delays everyone's next
job by the whole queue: measured, 2 MB of puts of compressed zeros made an unrelated login, open and list take
40 s instead of 0.85 s. Here jobs are handed to the pool only as fast as it has threads, and the next one comes
from the next account in turn (round robin over the accounts that have jobs waiting), so an account's job
waits for at most one job of each other account, however many those have queued. Jobs of no account (a login
being checked) have a queue of their own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

Submit = Callable[..., "Deferred[Any]"]
"""Runs ``f(*args)`` in a worker thread: ``submit(f, *args) -> Deferred``."""

RunBlocking = Submit
"""What the transports and sessions are given to run a blocking call off the reactor thread: ``run(f, *args) ->
Deferred`` (a :func:`thread_runner`, or a :class:`FairRunner`'s ``__call__``)."""


def thread_runner(reactor: Any) -> RunBlocking:
    """Run blocking calls in the reactor's thread pool, first come first served (what a FairRunner submits to)."""

    def run(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

    return run


class FairRunner:
    """Hands jobs to ``submit`` (at most ``limit`` at once), taking turns between keys (reactor thread only)."""

    def __init__(self, submit: Submit, limit: int) -> None:
        if limit < 1:
            raise ValueError("a runner needs at least one worker")
        self._submit = submit
        self.limit = limit
        self.running = 0
        self._queues: dict[object, deque[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]]] = {}
        self._turns: deque[object] = deque()  # keys with jobs waiting, in the order they are served

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def run(self, key: object, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run ``f(*args)`` in a worker on behalf of ``key`` (an account id, or None)."""
        d: Deferred[Any] = Deferred()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._turns.append(key)
        queue.append((f, args, d))
        self._start()
        return d

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """A ``RunBlocking``: a job of no account."""
        return self.run(None, f, *args)

    def _start(self) -> None:
        while self.running < self.limit and self._turns:
            key = self._turns.popleft()
            queue = self._queues[key]
            f, args, d = queue.popleft()
            if queue:
                self._turns.append(key)  # its next job waits for every other key's turn
            else:
                del self._queues[key]
            self.running += 1
            self._submit(f, *args).addBoth(self._done, d)

    def _done(self, result: object, d: Deferred[Any]) -> None:
        self.running -= 1
        self._start()
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)
