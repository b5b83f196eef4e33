"""neo-push and neo-pull: the command lines around the push and pull pipelines.

Exit codes: 0 done; 1 the operation failed (one line on stderr says why and what to do); 2 usage error;
3 authentication or host key refused; 130 interrupted.

The original client's flags still work (``--lpath``, ``--rpath TARGET[/SUBPATH]``, ``--host``, ``--port``,
``--password`` / ``--authcode``, ``--push``, ``--pull``), so ``neo-push --lpath=/x --rpath=peach --host=h
--password=p`` does what it did. ``--push`` / ``--pull`` choose the direction whichever program is run; the
positional arguments keep the order of the program's own name (neo-push LOCAL_DIR REMOTE, neo-pull REMOTE
LOCAL_DIR).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import msgspec

from neotwist.client.filters import Filter, FilterError, write_sample
from neotwist.client.progress import Progress
from neotwist.client.remote import UsageError, parse_remote
from neotwist.runtime import tune_threads

Direction = Literal["push", "pull"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AUTH, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


_PUSH_EPILOG = """\
REMOTE is [ssh://|tls://][USER@]HOST[:PORT]/TARGET[/SUBPATH] (ssh port 4322, tls port 4323).

examples:
  neo-push ~/photos alice@backup.example.org/photos
      push ~/photos as a new snapshot of target "photos" (created on first push)
  neo-push -i ~/.ssh/backup_ed25519 --exclude '*.tmp' ~/work alice@nas/work/2024
      push into the sub-path "2024" of target "work", skipping *.tmp files
  NEO_PASSWORD=... neo-push --json ~/src tls://alice@nas/src
      push over TLS with a password from the environment, print a JSON summary
  neo-push --ssh-command 'ssh -J jump' ~/src alice@nas/src
      go through OpenSSH (ssh_config, ProxyJump, agent)
  neo-push --lpath=/mnt/data --rpath=peach --host=myserver --password=secret
      the original client's form (USER defaults to your login name)
  neo-key init && neo-push --encrypt ~/papers alice@nas/papers
      create a key, then a target that holds only ciphertext (later pushes and pulls find out by themselves
      that it is encrypted and ask for the key's passphrase: a prompt, --passphrase-stdin or NEO_PASSPHRASE)

Unchanged files are found with a files cache (size, mtime, inode, ctime) and not read again; only chunks the
server lacks are sent. Filter files mix gitignore patterns and the original '<file|dir|path> <accept|reject>
<regex>' rules: see --make-sample-filter-file.
"""

_PULL_EPILOG = """\
REMOTE is [ssh://|tls://][USER@]HOST[:PORT]/TARGET[/SUBPATH] (ssh port 4322, tls port 4323).

examples:
  neo-pull alice@backup.example.org/photos ~/restore/photos
      restore the latest snapshot of "photos" into ~/restore/photos
  neo-pull alice@nas/work/2024/report ./report
      restore only the sub-path "2024/report"
  neo-pull --checksum tls://alice@nas/src ~/src
      compare content, not size and mtime, before deciding a file is current
  neo-pull --pull --lpath=/mnt/restore --rpath=peach --host=myserver --password=secret
      the original client's form
  NEO_PASSPHRASE=... neo-pull --key-file ./team.key alice@nas/papers/2024 ./2024
      pull a sub-path of an encrypted target (decrypted here; every chunk and name is authenticated)

Files already present with the same size and mtime are left alone; for the others only the chunks not found
in the local copy (or in files already restored) are fetched. Nothing is written outside LOCAL_DIR and no
symlink is ever followed while writing.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def build_parser(direction: Direction) -> argparse.ArgumentParser:
    prog = f"neo-{direction}"
    if direction == "push":
        usage = f"{prog} [options] LOCAL_DIR REMOTE"
        description = "Push a local directory to a Neophytos server as one new snapshot."
        epilog = _PUSH_EPILOG
    else:
        usage = f"{prog} [options] REMOTE LOCAL_DIR"
        description = "Pull a snapshot (the latest by default) from a Neophytos server into a directory."
        epilog = _PULL_EPILOG
    p = _Parser(
        prog=prog,
        usage=usage,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("args", nargs="*", metavar="ARG", help=argparse.SUPPRESS)
    auth = p.add_argument_group("connection and authentication")
    auth.add_argument("-i", "--identity", action="append", default=[], metavar="FILE",
                      help="SSH private key to offer (repeatable; default: the agent and ~/.ssh/id_*)")
    auth.add_argument("--password-stdin", action="store_true",
                      help="read the password from the first line of standard input")
    auth.add_argument("--known-hosts", type=Path, metavar="FILE", help="SSH known-hosts file")
    auth.add_argument("--accept-new-host-key", action="store_true",
                      help="trust and record a host key seen for the first time (never a changed one)")
    auth.add_argument("--tls-ca", type=Path, metavar="FILE",
                      help="CA certificate(s) that sign the server's TLS certificate (tls:// only)")
    auth.add_argument("--ssh-command", metavar="CMD",
                      help="run OpenSSH instead of the built-in client, e.g. 'ssh -J jumphost'")
    auth.add_argument("--no-agent", action="store_true", help="do not use the SSH agent")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON object with the summary on stdout")
    out.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    out.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="show progress bars on stderr (default: when stderr is a terminal)")
    out.add_argument("--no-progress", dest="progress", action="store_false", help="never show progress bars")
    out.add_argument("--debug", action="store_true", help="log protocol and transport details to stderr")
    work = p.add_argument_group(direction)
    if direction == "push":
        work.add_argument("--filter-file", metavar="FILE", help="filter rules (--make-sample-filter-file)")
        work.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                          help="gitignore-style pattern to leave out (repeatable)")
        work.add_argument("--no-cache", action="store_true", help="read every file (ignore the files cache)")
        work.add_argument("--delete", "--sync-rdel", dest="delete", action="store_true",
                          help="record files deleted locally as deleted in the new snapshot (earlier snapshots "
                          "keep them); without it the remote view keeps them")
        work.add_argument("--compress-level", type=int, default=1, choices=range(1, 20), metavar="N",
                          help="zstd level for sent chunks (default 1)")
    else:
        work.add_argument("--checksum", action="store_true",
                          help="compare content instead of trusting size and mtime")
        work.add_argument("--fsync", dest="fsync", action="store_true", default=False,
                          help="fsync each restored file before renaming it into place (safe against power loss "
                          "during the restore; slower: rsync, borg and restic do not)")
        work.add_argument("--no-fsync", dest="fsync", action="store_false", help=argparse.SUPPRESS)
        work.add_argument("--snapshot", type=int, metavar="ID", help="pull this snapshot, not the latest")
        # Accepted so one filter invocation works both ways; a pull takes what the snapshot holds.
        work.add_argument("--filter-file", metavar="FILE", help=argparse.SUPPRESS)
        work.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help=argparse.SUPPRESS)
    work.add_argument("--make-sample-filter-file", action="store_true",
                      help="write filter.example (both rule forms) in the current directory and exit")
    work.add_argument("--workers", type=int, default=3, metavar="N", help="worker threads (default 3)")
    # --- encryption (issue 6) ---
    crypt = p.add_argument_group("encryption (see neo-key)")
    if direction == "push":
        crypt.add_argument("--encrypt", action="store_true",
                           help="create the target encrypted on its first push (ignored for an encrypted target; "
                           "refused for an existing plaintext one)")
    crypt.add_argument("--key-file", type=Path, metavar="FILE",
                       help="key of encrypted targets (default: the one 'neo-key init' made)")
    crypt.add_argument("--passphrase-stdin", action="store_true",
                       help="read the key's passphrase from standard input (the line after the password when "
                       "--password-stdin is given too); NEO_PASSPHRASE works as well")
    legacy = p.add_argument_group("original client's options")
    legacy.add_argument("--lpath", metavar="DIR", help="local directory (instead of LOCAL_DIR)")
    legacy.add_argument("--rpath", metavar="TARGET[/SUBPATH]", help="target, with --host (instead of REMOTE)")
    legacy.add_argument("--host", help="server host, with --rpath")
    legacy.add_argument("--port", type=int, help="server port, with --host")
    legacy.add_argument("--password", "--authcode", dest="password", metavar="SECRET",
                        help="password (others can see it: prefer --password-stdin, NEO_PASSWORD)")
    legacy.add_argument("--push", dest="direction", action="store_const", const="push",
                        help="push (the default of neo-push)")
    legacy.add_argument("--pull", dest="direction", action="store_const", const="pull",
                        help="pull (the default of neo-pull)")
    return p


def _split_args(args: argparse.Namespace, program: Direction) -> tuple[str, str]:
    """(local dir, remote text) from positionals and the original flags."""
    positional: list[str] = list(args.args)
    local: str | None = args.lpath
    remote: str | None = None
    if args.host or args.rpath:
        if not (args.host and args.rpath):
            raise UsageError("--rpath and --host go together (or give REMOTE as USER@HOST/TARGET)")
        port = f":{args.port}" if args.port else ""
        host = f"[{args.host}]" if ":" in args.host and not args.host.startswith("[") else args.host
        remote = f"{host}{port}/{args.rpath.strip('/')}"
    elif args.port:
        raise UsageError("--port goes with --host; in REMOTE write HOST:PORT")
    if local is None and remote is None:
        if len(positional) != 2:
            raise UsageError(
                "expected LOCAL_DIR REMOTE" if program == "push" else "expected REMOTE LOCAL_DIR"
            )
        remote, local = (positional[1], positional[0]) if program == "push" else positional
    elif local is None or remote is None:
        if len(positional) != 1:
            raise UsageError("give LOCAL_DIR (or --lpath) and REMOTE (or --host and --rpath)")
        if local is None:
            local = positional[0]
        else:
            remote = positional[0]
    elif positional:
        raise UsageError(f"unexpected argument {positional[0]!r} (--lpath/--rpath already say where)")
    assert local is not None and remote is not None
    return local, remote


def _password_source(args: argparse.Namespace) -> Callable[[], str | None]:
    """The password getter ConnectOptions calls at most once, only when the server asks."""
    if args.password is not None:
        given: str = args.password
        return lambda: given
    if args.password_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        return lambda: line
    env = os.environ.get("NEO_PASSWORD")
    if env is not None:
        return lambda: env

    def prompt() -> str | None:
        if not sys.stdin.isatty():
            return None
        try:
            return getpass.getpass("Password: ")
        except (EOFError, KeyboardInterrupt):
            return None

    return prompt


def _passphrase_source(args: argparse.Namespace) -> Callable[[str], str | None]:
    """The key's passphrase getter, called at most once, only when an encrypted target is met. Call it after
    :func:`_password_source`: with both ``--password-stdin`` and ``--passphrase-stdin`` the password is the
    first line of standard input and the passphrase the second."""
    if args.passphrase_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        return lambda _path: line
    env = os.environ.get("NEO_PASSPHRASE")
    if env is not None:
        return lambda _path: env

    def prompt(path: str) -> str | None:
        if not sys.stdin.isatty():
            return None
        try:
            return getpass.getpass(f"Passphrase for {path}: ")
        except (EOFError, KeyboardInterrupt):
            return None

    return prompt


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _start_logging(debug: bool) -> None:
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


def _human(direction: Direction, summary: Any) -> str:
    def size(n: int) -> str:
        value = float(n)
        for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
            if value < 1024 or unit == "TiB":
                return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
            value /= 1024
        return f"{n} B"

    if direction == "push":
        lines = [
            f"snapshot {summary.snapshot}: {summary.files_scanned} items scanned, "
            f"{summary.files_changed} files "
            f"read ({size(summary.bytes_read)}), {summary.files_skipped} skipped",
            f"new chunks {summary.new_chunks} ({size(summary.new_bytes)}); sent {size(summary.bytes_sent)}, "
            f"received {size(summary.bytes_received)} in {summary.elapsed_s:.2f} s",
        ]
    else:
        lines = [
            f"snapshot {summary.snapshot}: {summary.files_scanned} items listed, "
            f"{summary.files_changed} files "
            f"written ({size(summary.bytes_written)}, {size(summary.bytes_reused)} reused locally), "
            f"{summary.files_unchanged} unchanged",
            f"sent {size(summary.bytes_sent)}, received {size(summary.bytes_received)} in "
            f"{summary.elapsed_s:.2f} s",
        ]
    return "\n".join(lines)


async def _run(
    reactor: Any, direction: Direction, args: argparse.Namespace, local: str, remote_text: str
) -> int:
    from neotwist.client.connect import ConnectOptions, connect
    from neotwist.client.encryption import EncryptionRefused, KeySource
    from neotwist.client.filescache import FilesCache, cache_key
    from neotwist.client.knownhosts import HostKeyError
    from neotwist.client.pull import PullError, PullIncomplete, PullOptions, pull
    from neotwist.client.push import PushError, PushOptions, describe_error, push
    from neotwist.client.remote import ConnectError
    from neotwist.crypto import CryptoError, WrongPassphrase
    from neotwist.wire.errors import ErrorCode, NeoError

    remote = parse_remote(remote_text)
    quiet = args.quiet or args.json
    show_progress = (not quiet) if args.progress is None else args.progress

    def warn(text: str) -> None:
        if not quiet or args.debug:
            sys.stderr.write(f"warning: {text}\n")

    filt: Filter | None = None
    if direction == "push":
        try:
            filt = Filter.from_file(args.filter_file) if args.filter_file else Filter()
            if args.exclude:
                filt.add_patterns(args.exclude)
        except FilterError as e:
            raise UsageError(str(e)) from None
    options = ConnectOptions(
        identity_files=list(args.identity),
        get_password=_password_source(args),
        known_hosts=args.known_hosts,
        accept_new_host_key=args.accept_new_host_key,
        confirm=_confirm if sys.stdin.isatty() else None,  # None: refuse with advice, not a silent "no"
        tls_ca=args.tls_ca,
        ssh_command=args.ssh_command,
        use_agent=not args.no_agent,
    )
    keys = KeySource(args.key_file, _passphrase_source(args))
    if direction == "push" and not os.path.isdir(local):
        sys.stderr.write(f"neo-push: {local} is not a directory; give the directory to push as LOCAL_DIR\n")
        return EXIT_FAILED
    started = time.monotonic()  # elapsed_s covers the whole run: connecting and authenticating too
    try:
        session = await connect(reactor, remote, options)
    except HostKeyError as e:
        sys.stderr.write(f"neo-{direction}: {e}\n")
        return EXIT_AUTH
    except ConnectError as e:
        text = str(e)
        sys.stderr.write(f"neo-{direction}: {text}\n")
        auth = "authentication failed" in text or "requires a password" in text
        return EXIT_AUTH if auth else EXIT_FAILED
    progress = Progress(show_progress, "pushed" if direction == "push" else "pulled")
    code = EXIT_OK
    summary: Any = None
    try:
        if direction == "push":
            cache = None
            if not args.no_cache:
                cache = FilesCache(cache_key(remote.address, remote.user, remote.target, remote.path, local))
            summary = await push(
                reactor,
                session.peer,
                local,
                remote.target,
                remote.path,
                PushOptions(
                    filter=filt,
                    cache=cache,
                    workers=max(1, args.workers),
                    compress_level=args.compress_level,
                    delete=args.delete,
                    progress=progress,
                    warn=warn,
                    keys=keys,
                    encrypt=args.encrypt,
                ),
            )
        else:
            summary = await pull(
                reactor,
                session.peer,
                remote.target,
                remote.path,
                local,
                PullOptions(
                    checksum=args.checksum,
                    fsync=args.fsync,
                    workers=max(1, args.workers),
                    snapshot=args.snapshot,
                    progress=progress,
                    warn=warn,
                    keys=keys,
                ),
            )
    except PullIncomplete as e:
        summary = e.summary
        sys.stderr.write(
            f"neo-pull: {len(e.errors)} item(s) could not be restored, e.g. {e.errors[0]}; everything else was "
            "(what is in the way: move it and pull again; what failed its check: pull an older snapshot)\n"
        )
        code = EXIT_FAILED
    except (PushError, PullError) as e:
        sys.stderr.write(f"neo-{direction}: {e}\n")
        code = EXIT_FAILED
    except WrongPassphrase as e:
        sys.stderr.write(f"neo-{direction}: {e}; nothing was written\n")
        code = EXIT_AUTH
    except (CryptoError, EncryptionRefused) as e:
        sys.stderr.write(f"neo-{direction}: {e}; nothing was written\n")
        code = EXIT_FAILED
    except NeoError as e:
        sys.stderr.write(f"neo-{direction}: {describe_error(e)}\n")
        code = EXIT_AUTH if e.code in (ErrorCode.AUTH_FAILED, ErrorCode.AUTH_REQUIRED) else EXIT_FAILED
    except OSError as e:
        sys.stderr.write(f"neo-{direction}: {e}\n")
        code = EXIT_FAILED
    finally:
        progress.close()
        try:
            await session.close()
        except Exception:  # noqa: S110 - the result is decided; a failing bye changes nothing
            pass
    if summary is not None:
        summary.elapsed_s = time.monotonic() - started
        if args.json:
            sys.stdout.write(msgspec.json.encode(summary.as_json()).decode() + "\n")
        elif not args.quiet:
            (sys.stderr if code else sys.stdout).write(_human(direction, summary) + "\n")
    return code


def main(program: Direction, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` for neo-push / neo-pull, run it, and return the exit code."""
    parser = build_parser(program)
    args = parser.parse_args(argv)
    if args.make_sample_filter_file:
        try:
            path = write_sample(Path.cwd())
        except (FilterError, OSError) as e:
            sys.stderr.write(f"{parser.prog}: {e}\n")
            return EXIT_FAILED
        sys.stdout.write(f"wrote {path}\n")
        return EXIT_OK
    direction: Direction = args.direction or program
    try:
        local, remote_text = _split_args(args, program)
        parse_remote(remote_text)  # usage errors before any connection
    except UsageError as e:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"{parser.prog}: error: {e}\n")
        return EXIT_USAGE
    _start_logging(args.debug)
    tune_threads()

    from twisted.internet import task

    state = {"finished": False}

    async def run(reactor: Any) -> None:
        def interrupted() -> None:
            if not state["finished"]:
                state["interrupted"] = True

        reactor.addSystemEventTrigger("before", "shutdown", interrupted)
        try:
            code = await _run(reactor, direction, args, local, remote_text)
        except UsageError as e:
            sys.stderr.write(f"{parser.prog}: error: {e}\n")
            code = EXIT_USAGE
        state["finished"] = True
        if code:
            raise SystemExit(code)

    try:
        task.react(run)
    except SystemExit as e:
        if state.get("interrupted"):
            sys.stderr.write(f"{parser.prog}: interrupted\n")
            return EXIT_INTERRUPTED
        return int(e.code or 0)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK


def push_main() -> None:
    """Entry point of neo-push."""
    sys.exit(main("push"))


def pull_main() -> None:
    """Entry point of neo-pull."""
    sys.exit(main("pull"))


__all__ = ["build_parser", "main", "pull_main", "push_main"]
