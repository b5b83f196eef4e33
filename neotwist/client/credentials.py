"""Where passwords and passphrases come from, and questions asked on the terminal.

Flags first, then the environment, then a prompt: ``--password`` (the original client's), ``--password-stdin``,
``--password-file``, ``--password-command``, ``NEO_PASSWORD``, ``NEO_PASSWORD_FILE``, ``NEO_PASSWORD_COMMAND``;
the same for the key's passphrase. A file is read at once (a missing one is a usage error before any
connection); a command runs only when the secret is asked for. Prompts end at once on Ctrl-C
(:func:`on_terminal`).
"""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from neotwist.client.remote import UsageError


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


def confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    answer = on_terminal(lambda: input(f"{question} [y/N] "))
    return answer is not None and answer.strip().lower() in ("y", "yes")
