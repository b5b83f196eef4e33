"""Running one command's coroutine under the reactor: exit codes, Ctrl-C and SIGTERM, a closed stdout.

Exit codes are :mod:`neotwist.client.clibase`'s. Every console script goes through :func:`entry_point`, and
every networked command through :func:`react`.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from neotwist.client.clibase import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from neotwist.client.remote import UsageError
from neotwist.runtime import tls_left_out

INTERRUPT_GRACE_S = 3.0
"""Seconds an interrupted run has to unwind (stop its workers, remove what it half-made, say bye) before the
reactor is stopped under it. A second SIGINT or SIGTERM ends the process at once."""


class _Runner:
    """One command's coroutine under the reactor, and what Ctrl-C (SIGINT) and SIGTERM do to it.

    States: ``starting`` (the reactor is not running yet), ``running``, ``interrupted`` (the coroutine was
    cancelled and is unwinding), ``done``. The first signal cancels the coroutine, so its ``finally`` blocks
    run (worker pools stop, temporary files go, the server hears bye); the reactor is stopped after
    :data:`INTERRUPT_GRACE_S` whatever happens. A second signal exits at once with 130. The handlers stay
    installed after the reactor stops, so a signal is never lost to the default handler (a KeyboardInterrupt
    traceback) or to Twisted's (which only stops a reactor that has already stopped).
    """

    def __init__(self, prog: str, reactor: Any) -> None:
        self.prog = prog
        self.reactor = reactor
        self.state = "starting"
        self.code = EXIT_OK
        self.deferred: Any = None

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._signal)

    def _signal(self, signum: int, frame: object) -> None:
        if self.state in ("starting", "running"):
            self.state = "interrupted"
            self.reactor.callFromThread(self._cancel)
            return
        os.write(2, f"{self.prog}: interrupted\n".encode())
        os._exit(EXIT_INTERRUPTED)

    def _cancel(self) -> None:
        if self.deferred is not None:
            self.deferred.cancel()
        self.reactor.callLater(INTERRUPT_GRACE_S, self._stop)

    def _stop(self) -> None:
        if self.reactor.running:
            self.reactor.stop()

    def start(self, run: Callable[[Any], Awaitable[int]]) -> None:
        from twisted.internet.defer import ensureDeferred

        self.install()  # again: the reactor installed its own while starting
        if self.state == "starting":
            self.state = "running"
        self.deferred = ensureDeferred(run(self.reactor))  # type: ignore[arg-type]
        if self.state == "interrupted":
            self.deferred.cancel()
        self.deferred.addCallbacks(self._finished, self._failed)
        self.deferred.addBoth(lambda _: self._stop())

    def _finished(self, code: int) -> None:
        self.code = code
        if self.state != "interrupted":
            self.state = "done"

    def _failed(self, failure: Any) -> None:
        from twisted.internet.defer import CancelledError

        if self.state == "interrupted" or failure.check(CancelledError, KeyboardInterrupt):
            self.state = "interrupted"
        elif failure.check(UsageError):
            sys.stderr.write(f"{self.prog}: error: {failure.value}\n")
            self.code = EXIT_USAGE
        elif failure.check(BrokenPipeError):
            silence_broken_stdout()  # the reader went away (| head): nothing to say, nobody to say it to
            self.code = EXIT_FAILED
        elif failure.check(SystemExit):
            self.code = int(failure.value.code or 0)
        else:
            from twisted.logger import Logger, LogLevel

            Logger().failure("unexpected error", failure, level=LogLevel.debug)  # the traceback: with --debug
            sys.stderr.write(f"{self.prog}: unexpected error: {failure.getErrorMessage() or failure.type.__name__}"
                             " (run again with --debug for details)\n")  # fmt: skip
            self.code = EXIT_FAILED
        self.state = "done" if self.state != "interrupted" else self.state


def react(prog: str, run: Callable[[Any], Awaitable[int]], tls: bool = True) -> int:
    """Run ``run(reactor)`` under the reactor and return its exit code (EXIT_INTERRUPTED on Ctrl-C or SIGTERM,
    see :class:`_Runner`). A reader that closes standard output early ends the output quietly. ``tls=False``:
    the command uses no TLS, and the reactor is loaded without it (:func:`neotwist.runtime.tls_left_out`)."""
    if tls:
        from twisted.internet import reactor as installed
    else:
        with tls_left_out():
            from twisted.internet import reactor as installed

    reactor: Any = installed
    runner = _Runner(prog, reactor)
    runner.install()
    reactor.callWhenRunning(runner.start, run)
    reactor.run()
    if runner.state == "interrupted":
        sys.stderr.write(f"{prog}: interrupted\n")
        return EXIT_INTERRUPTED
    return runner.code


def silence_broken_stdout() -> None:
    """After the reader of standard output went away, point it at /dev/null so that the interpreter's final
    flush does not print an error of its own."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def entry_point(prog: str, main: Callable[[], int]) -> Callable[[], None]:
    """Wrap a command's ``main`` as a console-script entry point that exits with its code. Ctrl-C before the
    reactor runs (while modules load) exits 130 with one line; a closed standard output exits 1 quietly (what
    was printed up to then stays printed); neither shows a traceback."""

    def entry() -> None:
        try:
            code = main()
            sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stderr.write(f"{prog}: interrupted\n")
            code = EXIT_INTERRUPTED
        except BrokenPipeError:
            silence_broken_stdout()
            code = EXIT_FAILED
        sys.exit(code)

    entry.__doc__ = f"Entry point of {prog}."
    return entry
