"""The command runner (runner._Runner) on an in-memory clock: outcomes become exit codes and one line each,
and a signal cancels the running coroutine so that its cleanup runs, with the reactor stopped after a grace
period whatever the coroutine does."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from neotwist.client.clibase import EXIT_FAILED, EXIT_USAGE
from neotwist.client.remote import UsageError
from neotwist.client.runner import INTERRUPT_GRACE_S, _Runner


class FakeReactor(Clock):
    running = True

    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)

    def stop(self) -> None:
        self.running = False


def _runner() -> tuple[_Runner, FakeReactor]:
    reactor = FakeReactor()
    runner = _Runner("neo-test", reactor)
    runner.install = lambda: None  # type: ignore[method-assign]  # no process-wide handlers in a test
    return runner, reactor


def test_outcomes_become_exit_codes_without_tracebacks(capsys: pytest.CaptureFixture[str]) -> None:
    async def boom(reactor: Any) -> int:
        raise RuntimeError("something odd")

    async def usage(reactor: Any) -> int:
        raise UsageError("bad thing")

    async def broken(reactor: Any) -> int:
        raise BrokenPipeError()

    async def fine(reactor: Any) -> int:
        return 0

    for run, code, said in ((boom, EXIT_FAILED, "neo-test: unexpected error: something odd (run again with --debug"),
                            (usage, EXIT_USAGE, "neo-test: error: bad thing"), (broken, EXIT_FAILED, ""),
                            (fine, 0, "")):  # fmt: skip
        runner, reactor = _runner()
        runner.start(run)
        err = capsys.readouterr().err
        assert runner.code == code and runner.state == "done" and not reactor.running, run
        assert err.startswith(said) and "Traceback" not in err, err


def test_a_signal_cancels_the_run_and_its_cleanup_runs() -> None:
    runner, reactor = _runner()
    cleaned: list[str] = []
    never: Deferred[None] = Deferred()

    async def stuck(reactor: Any) -> int:
        try:
            await never
        finally:
            cleaned.append("pool stopped, temporary files removed")
        return 0

    runner.start(stuck)
    assert runner.state == "running"
    runner._signal(signal.SIGINT, None)
    assert runner.state == "interrupted" and cleaned and not reactor.running


def test_a_run_that_ignores_cancellation_is_stopped_after_the_grace_period() -> None:
    runner, reactor = _runner()

    async def stubborn(reactor: Any) -> int:
        while True:
            try:
                await Deferred()
            except CancelledError:  # swallowing the cancellation is the point of this test
                continue

    runner.start(stubborn)
    runner._signal(signal.SIGTERM, None)
    assert reactor.running
    reactor.advance(INTERRUPT_GRACE_S)
    assert not reactor.running and runner.state == "interrupted"
