"""What every neo-* client command line shares: the argument parser class, connection and output options,
where the password comes from, exit codes, logging, and running one coroutine under the reactor.

Exit codes: 0 done; 1 the operation failed (one line on stderr says why and what to do); 2 usage error;
3 authentication, host key or encryption pin refused; 130 interrupted.
"""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, cast

from neotwist.client.remote import UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AUTH, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

REMOTE_FORM = "[ssh://|tls://][USER@]HOST[:PORT]/TARGET[/SUBPATH] (ssh port 4322, tls port 4323)"

REPOSITORY_ENV = "NEO_REPOSITORY"
"""The remote a command uses when none is given (as restic's RESTIC_REPOSITORY)."""


def default_remote() -> str | None:
    """The remote of ``NEO_REPOSITORY``, or None when it is unset or empty."""
    return os.environ.get(REPOSITORY_ENV) or None


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors exit with EXIT_USAGE (argparse's own 2, made explicit)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def add_version(p: argparse.ArgumentParser) -> None:
    """``--version``: the program and the Neophytos version."""
    from neotwist import __version__

    p.add_argument("--version", action="version", version=f"%(prog)s (Neophytos) {__version__}")


def add_connection_options(p: argparse.ArgumentParser) -> None:
    auth = p.add_argument_group("connection and authentication")
    auth.add_argument("-i", "--identity", action="append", default=[], metavar="FILE",
                      help="SSH private key to offer (repeatable; default: the agent and ~/.ssh/id_*)")
    auth.add_argument("--password-stdin", action="store_true",
                      help="read the password from the first line of standard input")
    auth.add_argument("--password-file", type=Path, metavar="FILE",
                      help="read the password from the first line of FILE (also NEO_PASSWORD_FILE)")
    auth.add_argument("--password-command", metavar="CMD",
                      help="run CMD (no shell) when the server asks for a password; its first output line is the "
                      "password, e.g. 'pass show backup/nas' (also NEO_PASSWORD_COMMAND)")  # fmt: skip
    auth.add_argument("--known-hosts", type=Path, metavar="FILE", help="SSH known-hosts file")
    auth.add_argument("--accept-new-host-key", action="store_true",
                      help="trust and record a host key seen for the first time (never a changed one)")
    auth.add_argument("--tls-ca", type=Path, metavar="FILE",
                      help="CA certificate(s) that sign the server's TLS certificate (tls:// only)")
    auth.add_argument("--ssh-command", metavar="CMD",
                      help="run OpenSSH instead of the built-in client, e.g. 'ssh -J jumphost'")
    auth.add_argument("--no-agent", action="store_true", help="do not use the SSH agent")  # fmt: skip


def add_output_options(p: argparse.ArgumentParser, *, progress: bool = True, json_progress: bool = False) -> None:
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    if json_progress:
        out.add_argument("--json-progress", action="store_true",
                         help="print JSON lines on stdout: {\"message_type\": \"status\", ...} about once a second "
                         "while working (done and total files and bytes, percent_done, seconds_remaining), then the "
                         "--json summary with \"message_type\": \"summary\" (as restic --json does)")  # fmt: skip
    out.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    if progress:
        out.add_argument("--progress", dest="progress", action="store_true", default=None,
                         help="show progress bars on stderr (default: when stderr is a terminal)")
        out.add_argument("--no-progress", dest="progress", action="store_false",
                         help="never show progress bars")  # fmt: skip
    out.add_argument("--debug", action="store_true", help="log protocol and transport details to stderr")


def connect_options(args: argparse.Namespace) -> Any:
    """The ConnectOptions the connection flags of ``args`` ask for."""
    from neotwist.client.connect import ConnectOptions

    return ConnectOptions(
        identity_files=list(args.identity),
        get_password=password_source(args),
        known_hosts=args.known_hosts,
        accept_new_host_key=args.accept_new_host_key,
        confirm=confirm if sys.stdin.isatty() else None,  # None: refuse with advice, not a silent "no"
        tls_ca=args.tls_ca,
        ssh_command=args.ssh_command,
        use_agent=not args.no_agent,
    )


async def open_session(reactor: Any, prog: str, remote: Any, options: Any) -> Any:
    """Connect and authenticate; on failure print one line and return the exit code (int) instead of a session:
    EXIT_AUTH for host keys and refused credentials, EXIT_FAILED for everything else."""
    from neotwist.client.connect import ConnectError, connect
    from neotwist.client.knownhosts import HostKeyError
    from neotwist.client.remote import AccessRefused

    try:
        return await connect(reactor, remote, options)
    except (HostKeyError, AccessRefused) as e:
        sys.stderr.write(f"{prog}: {e}\n")
        return EXIT_AUTH
    except ConnectError as e:
        text = str(e)
        sys.stderr.write(f"{prog}: {text}\n")
        auth = ("authentication failed", "requires a password", "too many failed logins")
        return EXIT_AUTH if any(why in text for why in auth) else EXIT_FAILED


def _first_line(text: str) -> str:
    return text.split("\n", 1)[0].rstrip("\r")


def _secret_file(path: Path, option: str) -> str:
    """The first line of ``path`` (read now: a missing file is a usage error, before any connection)."""
    try:
        return _first_line(path.expanduser().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise SecretUnavailable(f"cannot read the {option} file {path}: {why}") from None


def _secret_command(command: str, option: str) -> Callable[[], str | None]:
    """A getter that runs ``command`` (split like a shell would, run without one) when first called and returns
    the first line of its output; on failure it says why on stderr and returns None (the caller then reports
    the missing secret)."""
    import shlex

    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise SecretUnavailable(f"bad {option} {command!r}: {e}") from None
    if not argv:
        raise SecretUnavailable(f"{option} is empty")

    def run() -> str | None:
        import subprocess

        try:
            # its stderr is ours: what it says (or asks, on the terminal) reaches the user
            done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            sys.stderr.write(f"{option} {argv[0]!r} could not run: {e}\n")
            return None
        if done.returncode != 0:
            sys.stderr.write(f"{option} {argv[0]!r} failed with status {done.returncode}\n")
            return None
        return _first_line(done.stdout)

    return run


class SecretUnavailable(UsageError):
    """A password or passphrase source that was asked for cannot be used (unreadable file, bad command)."""


def _once(get: Callable[[], str | None]) -> Callable[[], str | None]:
    got: list[str | None] = []

    def once() -> str | None:
        if not got:
            got.append(get())
        return got[0]

    return once


def configured_secret(args: argparse.Namespace | None, what: str, env: str) -> Callable[[], str | None] | None:
    """The getter of ``--WHAT-file`` / ``--WHAT-command`` (of ``args``; None: no flags) / ``ENV`` /
    ``ENV_FILE`` / ``ENV_COMMAND``, in that order (flags before the environment), or None if none is set."""
    path = getattr(args, f"{what}_file", None)
    if path is not None:
        line = _secret_file(path, f"--{what}-file")
        return lambda: line
    command = getattr(args, f"{what}_command", None)
    if command is not None:
        return _once(_secret_command(command, f"--{what}-command"))
    value = os.environ.get(env)
    if value is not None:
        return lambda: value
    if os.environ.get(f"{env}_FILE"):
        line = _secret_file(Path(os.environ[f"{env}_FILE"]), f"{env}_FILE")
        return lambda: line
    if os.environ.get(f"{env}_COMMAND"):
        return _once(_secret_command(os.environ[f"{env}_COMMAND"], f"{env}_COMMAND"))
    return None


def password_source(args: argparse.Namespace) -> Callable[[], str | None]:
    """The password getter ConnectOptions calls at most once, only when the server asks: ``--password``,
    ``--password-stdin``, ``--password-file``, ``--password-command``, ``NEO_PASSWORD``,
    ``NEO_PASSWORD_FILE``, ``NEO_PASSWORD_COMMAND``, else a prompt on a terminal. Raises
    :class:`SecretUnavailable` for a file that cannot be read or a command that cannot be split."""
    given: str | None = getattr(args, "password", None)
    if given is not None:
        return lambda: given
    if args.password_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        return lambda: line
    configured = configured_secret(args, "password", "NEO_PASSWORD")
    if configured is not None:
        return configured

    def prompt() -> str | None:
        if not sys.stdin.isatty():
            return None
        return on_terminal(lambda: getpass.getpass("Password: "))

    return prompt


def on_terminal(ask: Callable[[], Any]) -> Any:
    """Run a blocking question on the terminal (a prompt, a getpass) so that Ctrl-C ends it at once: the
    runner's handler would only note the signal while the read goes on, and a second Ctrl-C would then leave
    the terminal without echo. Ctrl-C returns None and is passed on to the handler it interrupted (the run
    then ends as interrupted); so does the end of input."""
    previous = signal.getsignal(signal.SIGINT)
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return ask()
    except EOFError:
        return None
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signal.SIGINT, None)
        return None
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)


# --- encryption (issue 6) ---


def add_key_options(p: argparse.ArgumentParser, *, encrypt: bool = False) -> None:
    """--key-file and --passphrase-stdin (and neo-push's --encrypt): the key of encrypted targets."""
    crypt = p.add_argument_group("encryption (see neo-key)")
    if encrypt:
        crypt.add_argument("--encrypt", action="store_true",
                           help="create the target encrypted on its first push (ignored for an encrypted target; "
                           "refused for an existing plaintext one)")  # fmt: skip
    crypt.add_argument("--key-file", type=Path, metavar="FILE",
                       help="key of encrypted targets (default: the one 'neo-key init' made)")
    crypt.add_argument("--passphrase-stdin", action="store_true",
                       help="read the key's passphrase from standard input (the line after the password when "
                       "--password-stdin is given too); NEO_PASSPHRASE works as well")  # fmt: skip
    crypt.add_argument("--passphrase-file", type=Path, metavar="FILE",
                       help="read the key's passphrase from the first line of FILE (also NEO_PASSPHRASE_FILE)")
    crypt.add_argument("--passphrase-command", metavar="CMD",
                       help="run CMD (no shell) when the key's passphrase is needed; its first output line is the "
                       "passphrase (also NEO_PASSPHRASE_COMMAND)")  # fmt: skip
    crypt.add_argument("--require-encryption", action="store_true",
                       help="refuse a target the server says is not encrypted (exit 3). A target this client has "
                       "seen encrypted is pinned and always checked so; this covers a first contact" + (
                           "; a missing target is refused unless --encrypt creates it" if encrypt else ""))  # fmt: skip
    crypt.add_argument("--grant-root", default="", metavar="PATH",
                       help="a grant on a sub-path of an encrypted target: that sub-path as its owner names it "
                       "(in plaintext; names below it are encrypted from the target's root)")  # fmt: skip


def passphrase_source(args: argparse.Namespace) -> Callable[[str], str | None]:
    """The key's passphrase getter, called at most once, only when an encrypted target is met:
    ``--passphrase-stdin``, ``--passphrase-file``, ``--passphrase-command``, ``NEO_PASSPHRASE``,
    ``NEO_PASSPHRASE_FILE``, ``NEO_PASSPHRASE_COMMAND``, else a prompt on a terminal. Call it after
    :func:`password_source`: with both ``-stdin`` flags the password is line 1 and the passphrase line 2."""
    if getattr(args, "passphrase_stdin", False):
        line = sys.stdin.readline().rstrip("\r\n")
        return lambda _path: line
    configured = configured_secret(args, "passphrase", "NEO_PASSPHRASE")
    if configured is not None:
        return lambda _path: configured()

    def prompt(path: str) -> str | None:
        if not sys.stdin.isatty():
            return None
        return on_terminal(lambda: getpass.getpass(f"Passphrase for {path}: "))

    return prompt


def key_source(args: argparse.Namespace) -> Any:
    """The KeySource of ``--key-file`` (default: neo-key's) with the passphrase from :func:`passphrase_source`."""
    from neotwist.client.encryption import KeySource

    return KeySource(getattr(args, "key_file", None), passphrase_source(args))


def target_pin(remote: Any) -> Any:
    """The encryption pin of ``remote``'s target in the default pin file (see :mod:`neotwist.client.pins`)."""
    from neotwist.client.pins import TargetPin

    return TargetPin.for_remote(remote)


def confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    answer = on_terminal(lambda: input(f"{question} [y/N] "))
    return answer is not None and answer.strip().lower() in ("y", "yes")


def start_logging(debug: bool) -> None:
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    level = LogLevel.debug if debug else LogLevel.error
    observer: Any = FilteringLogObserver(
        cast(Any, textFileLogObserver(sys.stderr)),
        [cast(Any, LogLevelFilterPredicate(defaultLogLevel=level))],
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False, discardBuffer=True)


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


def react(prog: str, run: Callable[[Any], Awaitable[int]]) -> int:
    """Run ``run(reactor)`` under the reactor and return its exit code (EXIT_INTERRUPTED on Ctrl-C or SIGTERM,
    see :class:`_Runner`). A reader that closes standard output early ends the output quietly."""
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

