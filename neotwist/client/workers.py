"""The worker threads of push and pull: a Twisted ThreadPool whose threads never hold the process open.

Python waits for every non-daemon thread before it exits. The pipelines stop their pool on every path they can
unwind through, but an interrupted run may be abandoned (a second Ctrl-C, or a worker stuck in a read on a dead
network mount): its idle or blocked workers must not keep the process alive after the reactor has stopped.
"""

from __future__ import annotations

from threading import Thread
from typing import Any

from twisted.python.threadpool import ThreadPool


def _daemon_thread(*args: Any, **kwargs: Any) -> Thread:
    return Thread(*args, daemon=True, **kwargs)


class WorkerPool(ThreadPool):
    """A ThreadPool of daemon threads (see the module docstring)."""

    threadFactory = staticmethod(_daemon_thread)  # type: ignore[assignment]
