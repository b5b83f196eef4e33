"""File descriptors: the process's limit, and running out of them told as what it is.

Every open target, connection and account-store lookup takes descriptors. When the process has none left, the
call that needed one fails: ``os.open`` with EMFILE (or ENFILE: the whole system is out), SQLite with "unable to
open database file", which names no cause. Either way the request did not fail for anything the client did or
the data: it is answered with ``unavailable`` ("try again later"), never with a wrong-password or internal error,
and the log says so in one line (at most once a minute, with how many more followed).
"""

from __future__ import annotations

import errno
import os
import resource
import sqlite3
import threading
import time

from twisted.logger import Logger

from neotwist.wire.errors import ErrorCode, NeoError

log = Logger()

OUT_OF_FDS = "the server is out of file descriptors; try again later"
"""What the client is told (``unavailable``; over SSH during login, the disconnect reason)."""

_EXHAUSTED = (errno.EMFILE, errno.ENFILE)

LOG_INTERVAL = 60.0
"""Seconds between log lines about running out (the first is logged at once)."""


def raise_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard limit (as far as the process may); return (soft, hard)
    as they are now. A server started from a shell inherits its soft limit, often 1,024: the hard limit is
    what the operator allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # an unlimited hard limit the kernel caps lower: keep the soft one
            pass
    return soft, hard


SLACK = 16
"""Free descriptors under which the process counts as out of them. A failed open has often closed what it had
opened before anyone can look (SQLite opens a database, fails on its WAL file, and closes the database), so
"none left" is "hardly any left" by the time the failure is examined."""


def exhausted_now() -> bool:
    """True if this process has fewer than SLACK descriptors left under its soft limit, or cannot open a file
    right now for want of descriptors (the process's or the system's)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        names = os.listdir("/proc/self/fd")
    except OSError as e:
        if e.errno in _EXHAUSTED:
            return True
        names = []  # no /proc: the probe below decides
    # The limit bounds descriptor numbers (a new one takes the lowest free number): count those below it.
    if soft != resource.RLIM_INFINITY and sum(1 for n in names if n.isdigit() and int(n) < soft) >= soft - SLACK:
        return True
    try:
        fd = os.open(os.devnull, os.O_RDONLY)
    except OSError as e:
        return e.errno in _EXHAUSTED
    os.close(fd)
    return False


def out_of_fds(error: BaseException) -> bool:
    """True if ``error`` is a failure to get a file descriptor: EMFILE or ENFILE, or SQLite's "unable to open"
    (SQLITE_CANTOPEN) while the process has none left."""
    if isinstance(error, OSError):
        return error.errno in _EXHAUSTED
    if isinstance(error, sqlite3.OperationalError):
        cant_open = getattr(error, "sqlite_errorname", "") == "SQLITE_CANTOPEN" or "unable to open" in str(error)
        return cant_open and exhausted_now()
    return False


class _Reporter:
    """Logs running out of descriptors: the first time at once, then at most once per LOG_INTERVAL."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: float | None = None
        self._since = 0

    def report(self, what: str) -> None:
        now = time.monotonic()
        with self._lock:
            if self._last is not None and now - self._last < LOG_INTERVAL:
                self._since += 1
                return
            more, self._since, self._last = self._since, 0, now
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        log.warn(
            "out of file descriptors ({what}; limit {limit}{more}): requests are answered 'unavailable' until "
            "some are free; raise the limit (LimitNOFILE=) or lower --max-open-targets",
            what=what,
            limit=soft,
            more=f"; {more} more since the last report" if more else "",
        )


_reporter = _Reporter()


def unavailable(what: str) -> NeoError:
    """Log running out of descriptors while doing ``what`` (rate-limited) and return the error for the client."""
    _reporter.report(what)
    return NeoError(ErrorCode.UNAVAILABLE, OUT_OF_FDS)
