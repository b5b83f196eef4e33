"""What every neo-* client command line shares: the argument parser class, connection and output options,
exit codes and logging. Where passwords come from is :mod:`~neotwist.client.credentials`; running the command
under the reactor, :mod:`~neotwist.client.runner`.

Exit codes: 0 done; 1 the operation failed (one line on stderr says why and what to do); 2 usage error;
3 authentication, host key or encryption pin refused; 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, NoReturn, cast

from neotwist.client.credentials import confirm, passphrase_source, password_source
from neotwist.wire.limits import SILENCE_TIMEOUT as DEFAULT_TIMEOUT

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AUTH, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_PARTIAL = 23
"""Done, but some items were not stored or restored (each is named on stderr and in --json), like rsync's 23."""

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
    auth.add_argument("--timeout", type=_timeout, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                      help="give up (exit 1) when nothing, not even an answer to a keepalive ping, comes from the "
                      f"server for SECONDS (default {DEFAULT_TIMEOUT}; 0: wait forever). A push run again "
                      "resumes with the chunks the server already holds")  # fmt: skip


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0 or value != value or value > 86400 * 365:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


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
        timeout=getattr(args, "timeout", DEFAULT_TIMEOUT) or None,
    )


async def open_session(reactor: Any, prog: str, remote: Any, options: Any) -> Any:
    """Connect and authenticate (:func:`neotwist.client.api.connect`); on failure print one line and return the
    exit code (int) instead of the :class:`~neotwist.client.api.Client`: EXIT_AUTH for host keys and refused
    credentials, EXIT_FAILED for everything else."""
    from neotwist.client.api import connect
    from neotwist.client.connect import ConnectError
    from neotwist.client.knownhosts import HostKeyError
    from neotwist.client.remote import AccessRefused

    try:
        return await connect(reactor, remote, options)
    except (HostKeyError, AccessRefused) as e:
        sys.stderr.write(f"{prog}: {e}\n")
        return EXIT_AUTH
    except ConnectError as e:
        sys.stderr.write(f"{prog}: {e}\n")
        return EXIT_FAILED


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


def key_source(args: argparse.Namespace) -> Any:
    """The KeySource of ``--key-file`` (default: neo-key's) with the passphrase from :func:`passphrase_source`."""
    from neotwist.client.encryption import KeySource

    return KeySource(getattr(args, "key_file", None), passphrase_source(args))


def access(args: argparse.Namespace, remote: Any) -> Any:
    """The :class:`~neotwist.client.remotetarget.Access` the key options of ``args`` give to ``remote``'s
    target: the key, the target's pin, --require-encryption and --grant-root."""
    from neotwist.client.remotetarget import Access

    return Access(key_source(args), target_pin(remote), args.require_encryption, args.grant_root.strip("/"))


def target_pin(remote: Any) -> Any:
    """The encryption pin of ``remote``'s target in the default pin file (see :mod:`neotwist.client.pins`)."""
    from neotwist.client.pins import TargetPin

    return TargetPin.for_remote(remote)


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
