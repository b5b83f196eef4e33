"""What every ``neo-admin`` command shares: its exit codes, its one kind of failure, and how it reads a password or
a key file and prints JSON."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

from neotwist.display import write_json
from neotwist.server.accounts import Account, AccountStore

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

STDIN_HELP = "read the password from the first line of stdin (no prompt)"


class Failed(Exception):
    """The operation could not be done; the message is printed as is."""


def read_password(from_stdin: bool) -> str:
    """The new password: the first line of stdin, or typed twice at a prompt."""
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
        if not password:
            raise Failed("no password on stdin: pipe it in as the first line (printf '%s\\n' \"$PW\" | ...)")
        return password
    if not sys.stdin.isatty():
        raise Failed("no terminal to ask for a password: use --password-stdin (or --no-password)")
    first = getpass.getpass("New password: ")
    if getpass.getpass("Again: ") != first:
        raise Failed("the passwords differ; nothing was changed: run the command again")
    return first


def key_lines(path: Path) -> list[bytes]:
    try:
        text = path.expanduser().read_bytes()
    except OSError as e:
        raise Failed(f"cannot read {path}: {e.strerror}") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith(b"#")]
    if not lines:
        raise Failed(f"{path} holds no public key: give an OpenSSH .pub file (ssh-keygen makes one)")
    return lines


def print_json(value: object) -> None:
    write_json(value)


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError  # pragma: no cover


def require_account(store: AccountStore, name: str) -> Account:
    account = store.get(name)
    if account is None:
        raise Failed(f"no such account: {name!r} (see: neo-admin account list)")
    return account


def confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise Failed("refusing to delete without confirmation: add --yes")
    if input(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise Failed("nothing was removed")
