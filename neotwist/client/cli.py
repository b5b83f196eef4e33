"""neo-push and neo-pull: the command lines around the push and pull pipelines.

Exit codes: 0 done; 1 the operation failed (one line on stderr says why and what to do); 2 usage error;
3 authentication, host key or encryption pin refused; 23 (neo-push) done, but some items were not stored (each
named on stderr and in --json ``warnings_detail``; neo-pull exits 1 when it could not restore something, after
restoring the rest); 130 interrupted.

The original client's flags still work (``--lpath``, ``--rpath TARGET[/SUBPATH]``, ``--host``, ``--port``,
``--password`` / ``--authcode``, ``--push``, ``--pull``), so ``neo-push --lpath=/x --rpath=peach --host=h
--password=p`` does what it did. ``--push`` / ``--pull`` choose the direction whichever program is run; the
positional arguments keep the order of the program's own name (neo-push LOCAL_DIR REMOTE, neo-pull REMOTE
LOCAL_DIR).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from twisted.internet.task import LoopingCall

from neotwist.client import pushflags
from neotwist.client.argvsecret import hide_secrets
from neotwist.client.clibase import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    REPOSITORY_ENV,
    Parser,
    add_connection_options,
    add_key_options,
    add_output_options,
    add_version,
    connect_options,
    default_remote,
    key_source,
    open_session,
    start_logging,
    target_pin,
)
from neotwist.client.filters import Filter, FilterError, write_sample
from neotwist.client.progress import STATUS_INTERVAL, Progress
from neotwist.client.remote import Remote, UsageError, parse_remote
from neotwist.client.runner import entry_point, react, silence_broken_stdout
from neotwist.client.timespec import TimeSpecError, parse_at
from neotwist.codec import DEFAULT_LEVEL
from neotwist.display import raw_stdout, write_json
from neotwist.runtime import tune_malloc, tune_threads
from neotwist.sizes import human_size

Direction = Literal["push", "pull"]



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
  export NEO_REPOSITORY=tls://alice@nas/src NEO_PASSWORD_COMMAND='pass show backup/nas'
  neo-push --json-progress ~/src
      the remote and the password from the environment; JSON status lines, then the summary
  neo-push --lpath=/mnt/data --rpath=peach --host=myserver --password=secret
      the original client's form (USER defaults to your login name)
  neo-key init && neo-push --encrypt ~/papers alice@nas/papers
      create a key, then a target that holds only ciphertext (later pushes and pulls find out by themselves
      that it is encrypted and ask for the key's passphrase: a prompt, --passphrase-stdin or NEO_PASSPHRASE)
  neo-push --tag daily --tag db,pre-upgrade ~/src alice@nas/src
      tag the snapshot "daily", "db" and "pre-upgrade" (neo-ls --snapshots --tag db, neo-prune --keep-tag)
{pushflags}
Each snapshot records this machine's name (--hostname), the directory pushed, its tags, and whether it is
incomplete (the push exited 23): neo-ls --snapshots shows them (sealed in an encrypted target).

Unchanged files are found with a files cache (size, mtime, inode, ctime) and not read again; only chunks the
server lacks are sent. Filter files mix gitignore patterns and the original '<file|dir|path> <accept|reject>
<regex>' rules: see --make-sample-filter-file.

exit codes: 0 done; 1 failed (with --stdin: also when standard input was empty); 2 usage error;
3 authentication, host key or encryption pin refused; 23 done (or, with --dry-run, would be done), but some
items were not stored: sockets, unreadable files or directories, names or paths that cannot be stored,
files that kept changing while they were read (each is named on stderr with its reason, and in --json
"warnings"); 130 interrupted.
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
  NEO_REPOSITORY=alice@nas/photos neo-pull --password-file ~/.neo-pw ~/restore/photos
      the remote from the environment, the password from the first line of a file
  neo-pull --pull --lpath=/mnt/restore --rpath=peach --host=myserver --password=secret
      the original client's form
  neo-pull --stdout --snapshot 12 alice@nas/docs/reports/q3.csv > q3.csv
      one file's bytes to standard output (as neo-cat)
  NEO_PASSPHRASE=... neo-pull --key-file ./team.key alice@nas/papers/2024 ./2024
      pull a sub-path of an encrypted target (decrypted here; every chunk and name is authenticated)

Files already present with the same size and mtime are left alone; for the others only the chunks not found
in the local copy (or in files already restored) are fetched. Nothing is written outside LOCAL_DIR and no
symlink is ever followed while writing.

exit codes: 0 done; 1 failed, or some items were not restored: damaged on the server, or in the way of a
safe write (each is named on stderr with its reason, and in --json "warnings_detail"; the rest is restored);
2 usage error; 3 authentication, host key or encryption pin refused; 130 interrupted.
"""


def build_parser(direction: Direction) -> argparse.ArgumentParser:
    prog = f"neo-{direction}"
    if direction == "push":
        usage = f"{prog} [options] LOCAL_DIR REMOTE\n       {prog} [options] --stdin [--stdin-filename NAME] REMOTE"
        description = "Push a local directory to a Neophytos server as one new snapshot."
        epilog = _PUSH_EPILOG.format(pushflags=pushflags.EXAMPLES)
    else:
        usage = f"{prog} [options] REMOTE LOCAL_DIR"
        description = "Pull a snapshot (the latest by default) from a Neophytos server into a directory."
        epilog = _PULL_EPILOG
    p = Parser(
        prog=prog,
        usage=usage,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("args", nargs="*", metavar="ARG", help=argparse.SUPPRESS)
    add_version(p)
    add_connection_options(p)
    add_output_options(p, json_progress=True)
    work = p.add_argument_group(direction)
    if direction == "push":
        work.add_argument("--filter-file", metavar="FILE", help="filter rules (--make-sample-filter-file)")
        work.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                          help="gitignore-style pattern to leave out (repeatable)")
        work.add_argument("--no-cache", action="store_true", help="read every file (ignore the files cache)")
        work.add_argument("--delete", "--sync-rdel", dest="delete", action="store_true",
                          help="record files deleted locally as deleted in the new snapshot (earlier snapshots "
                          "keep them); without it the remote view keeps them")
        work.add_argument("--no-history", "--no-sformat", dest="keep_history", action="store_false", default=None,
                          help="make the target keep only its latest snapshot (older ones are pruned after each "
                          "push and their space reclaimed; needs full access)")
        work.add_argument("--history", dest="keep_history", action="store_true",
                          help="make a --no-history target keep every snapshot again")
        work.add_argument("--compress-level", type=int, default=DEFAULT_LEVEL, choices=range(1, 20), metavar="N",
                          help=f"zstd level for sent chunks (default {DEFAULT_LEVEL})")
        work.add_argument("--tag", action="append", default=[], metavar="TAG[,TAG...]",
                          help="tag the new snapshot (repeatable, as restic: --tag a,b --tag c gives three tags; "
                          "at most 64, each up to 128 characters, no commas or control characters)")  # fmt: skip
        work.add_argument("--hostname", metavar="NAME",
                          help="the host name the snapshot records (default: this machine's)")
        pushflags.add_arguments(work)
    else:
        work.add_argument("--checksum", action="store_true",
                          help="compare content instead of trusting size and mtime")
        work.add_argument("--delete", action="store_true",
                          help="remove local files and directories the snapshot does not have (rsync's --delete; "
                          "skipped when the pull is incomplete; refused in / and your home without --force)")
        work.add_argument("--force", action="store_true", help="allow --delete in / or your home directory")
        work.add_argument("--numeric-ids", action="store_true",
                          help="give restored items their stored owner and group numbers, not the numbers their user "
                          "and group names have here (as rsync and tar; owners are applied only when run as root)")
        work.add_argument("--fsync", dest="fsync", action="store_true", default=False,
                          help="fsync each restored file before renaming it into place (safe against power loss "
                          "during the restore; slower: rsync, borg and restic do not)")
        work.add_argument("--no-fsync", dest="fsync", action="store_false", help=argparse.SUPPRESS)
        work.add_argument("--preserve-special-bits", action="store_true",
                          help="restore setuid and setgid bits as stored (root always does; otherwise they are "
                          "dropped, as tar does without -p). The mode of a LOCAL directory that already existed is "
                          "never changed")  # fmt: skip
        work.add_argument("--reuse-any", action="store_true",
                          help="reuse chunks of any existing LOCAL file at the same path, not only of a version the "
                          "target holds (faster over changed files; tells the server which chunks they hold, as "
                          "rsync's delta tells its sender)")  # fmt: skip
        work.add_argument("--stdout", action="store_true",
                          help="write one file's bytes to standard output instead (neo-pull --stdout REMOTE/PATH; "
                          "verified, in bounded memory: see neo-cat)")  # fmt: skip
        when = work.add_mutually_exclusive_group()
        when.add_argument("--snapshot", type=int, metavar="ID", help="pull this snapshot, not the latest (neo-ls "
                          "REMOTE --snapshots lists them)")
        when.add_argument("--at", metavar="TIME", help="pull the newest snapshot taken at or before TIME: "
                          "2026-11-23T14:30 (local time; the whole minute counts), 2026-11-23, @EPOCH or '3d ago' "
                          "(a TIME copied from neo-ls --snapshots picks that snapshot)")
        # Accepted so one filter invocation works both ways; a pull takes what the snapshot holds.
        work.add_argument("--filter-file", metavar="FILE", help=argparse.SUPPRESS)
        work.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help=argparse.SUPPRESS)
    # filters are push's: neo-pull accepts the flag (one invocation works both ways) but does not list it
    work.add_argument("--make-sample-filter-file", action="store_true",
                      help="write filter.example (both rule forms) in the current directory and exit"
                      if direction == "push" else argparse.SUPPRESS)  # fmt: skip
    work.add_argument("--workers", type=int, default=3, metavar="N", help="worker threads (default 3)")
    add_key_options(p, encrypt=direction == "push")  # encryption
    legacy = p.add_argument_group("original client's options")
    legacy.add_argument("--lpath", metavar="DIR", help="local directory (instead of LOCAL_DIR)")
    legacy.add_argument("--rpath", metavar="TARGET[/SUBPATH]", help="target, with --host (instead of REMOTE)")
    legacy.add_argument("--host", help="server host, with --rpath")
    legacy.add_argument("--port", type=int, help="server port, with --host")
    legacy.add_argument("--password", "--authcode", dest="password", metavar="SECRET",
                        help="password (other users can see it in the process list until it is parsed, then it "
                        "shows as ***: prefer --password-stdin, NEO_PASSWORD)")
    # each program lists only its own direction; the other is accepted, as the original client's was
    legacy.add_argument("--push", dest="direction", action="store_const", const="push",
                        help="push (the default)" if direction == "push" else argparse.SUPPRESS)
    legacy.add_argument("--pull", dest="direction", action="store_const", const="pull",
                        help="pull (the default)" if direction == "pull" else argparse.SUPPRESS)
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
        env = default_remote()
        if len(positional) == 1 and env is not None:
            local, remote = positional[0], env  # LOCAL_DIR alone: the remote of NEO_REPOSITORY
        elif len(positional) != 2:
            form = "LOCAL_DIR REMOTE" if program == "push" else "REMOTE LOCAL_DIR"
            raise UsageError(f"expected {form} (or LOCAL_DIR alone, with {REPOSITORY_ENV} set to the remote)")
        else:
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


def _human(direction: Direction, summary: Any, delete: bool = False) -> str:
    """The plain-text summary; ``delete``: the push ran with --delete, so say how many paths it recorded as
    deleted (0 included: the user asked for it and should see that it happened)."""
    size = human_size
    if getattr(summary, "dry_run", False):
        return pushflags.describe(summary)
    if direction == "push":
        deleted = f", {summary.deleted} recorded as deleted" if delete else ""
        lines = [
            f"snapshot {summary.snapshot}: {summary.files_scanned} items scanned, "
            f"{summary.files_changed} files "
            f"read ({size(summary.bytes_read)}), {summary.files_skipped} skipped{deleted}",
            f"new chunks {summary.new_chunks} ({size(summary.new_bytes)}); sent {size(summary.bytes_sent)}, "
            f"received {size(summary.bytes_received)} in {summary.elapsed_s:.2f} s",
        ]
        if summary.files_reread:
            lines.append(
                f"{summary.files_reread} file(s) the files cache called unchanged were read again: the server lacked "
                "chunks of theirs (found damaged, or gone) and they were sent"
            )
    else:
        lines = [
            f"snapshot {summary.snapshot}: {summary.files_scanned} items listed, "
            f"{summary.files_changed} files "
            f"written ({size(summary.bytes_written)}, {size(summary.bytes_reused)} reused locally), "
            f"{summary.files_unchanged} unchanged" + (f", {summary.deleted} deleted" if delete else ""),
            f"sent {size(summary.bytes_sent)}, received {size(summary.bytes_received)} in "
            f"{summary.elapsed_s:.2f} s",
        ]
    return "\n".join(lines)


def _warn(text: str) -> None:
    """Always, --quiet and --json too: each names something not stored or restored (rsync prints those too)."""
    sys.stderr.write(f"warning: {text}\n")


def _filter(args: argparse.Namespace) -> Filter:
    """The push's filter from --filter-file and --exclude (UsageError for a bad rule)."""
    try:
        filt = Filter.from_file(args.filter_file) if args.filter_file else Filter()
        if args.exclude:
            filt.add_patterns(args.exclude)
    except FilterError as e:
        raise UsageError(str(e)) from None
    filt.dirs = pushflags.dir_rules(args)
    return filt


def _label(args: argparse.Namespace, local: str) -> Any:
    """The snapshot's label from --tag and --hostname (UsageError for a bad one)."""
    from neotwist.client.labels import push_label, split_tags
    from neotwist.wire.label import LabelError

    try:
        return push_label(local, split_tags(args.tag), args.hostname)
    except LabelError as e:
        raise UsageError(str(e)) from None


def _push_options(args: argparse.Namespace, remote: Remote, local: str, filt: Filter, keys: Any,
                  progress: Progress, label: Any) -> Any:  # fmt: skip
    """The PushOptions neo-push's flags ask for."""
    from neotwist.client.filescache import FilesCache, cache_key
    from neotwist.client.push import PushOptions

    cache = None
    if not args.no_cache:
        cache = FilesCache(cache_key(remote.address, remote.user, remote.target, remote.path, local))
    return PushOptions(
        filter=filt,
        cache=cache,
        workers=max(1, args.workers),
        compress_level=args.compress_level,
        delete=args.delete,
        keep_history=args.keep_history,
        progress=progress,
        warn=_warn,
        keys=keys,
        encrypt=args.encrypt,
        grant_root=args.grant_root,
        pin=target_pin(remote),
        require_encryption=args.require_encryption,
        label=label,
    )


def _pull_options(args: argparse.Namespace, remote: Remote, keys: Any, progress: Progress) -> Any:
    """The PullOptions neo-pull's flags ask for."""
    from neotwist.client.pull import PullOptions

    return PullOptions(
        checksum=args.checksum,
        numeric_ids=args.numeric_ids,
        delete=args.delete,
        force=args.force,
        fsync=args.fsync,
        workers=max(1, args.workers),
        snapshot=args.snapshot,
        at=args.at_time,
        progress=progress,
        warn=_warn,
        keys=keys,
        grant_root=args.grant_root,
        pin=target_pin(remote),
        require_encryption=args.require_encryption,
        preserve_special_bits=args.preserve_special_bits,
        reuse_any=args.reuse_any,
    )


def _failed(direction: Direction, error: Exception) -> int | None:
    """Say why a push or pull failed, in one line on stderr, and return its exit code (None: not one of the
    failures a run reports; it goes on up)."""
    from neotwist.client.encryption import EncryptionDowngrade, EncryptionRefused
    from neotwist.client.pins import PinFileError
    from neotwist.client.pull import PullError, PullIncomplete
    from neotwist.client.push import PushError, describe_error
    from neotwist.crypto import CryptoError, WrongPassphrase
    from neotwist.wire.errors import ErrorCode, NeoError

    prog = f"neo-{direction}"
    if isinstance(error, PullIncomplete):
        for text in error.damaged:
            sys.stderr.write(f"neo-pull: damaged, not restored: {text}\n")
        if error.damaged:
            sys.stderr.write(
                f"neo-pull: {len(error.damaged)} file(s) failed their checks (damaged or modified on the server) "
                "and were not restored; everything else was (neo-check REMOTE lists the damage the server can see; "
                "an older snapshot may hold good copies)\n"
            )
        if error.errors:
            sys.stderr.write(
                f"neo-pull: {len(error.errors)} item(s) could not be written safely, e.g. {error.errors[0]}; "
                "move what is in the way and pull again\n"
            )
        return EXIT_FAILED  # a pull that left something out has always exited 1 (the exit codes are kept)
    if isinstance(error, (PushError, PullError)):
        sys.stderr.write(f"{prog}: {error}\n")
        return EXIT_FAILED
    if isinstance(error, WrongPassphrase):
        sys.stderr.write(f"{prog}: {error}; nothing was written\n")
        return EXIT_AUTH
    if isinstance(error, EncryptionDowngrade):  # the message says nothing was sent or written
        sys.stderr.write(f"{prog}: {error}\n")
        return EXIT_AUTH
    if isinstance(error, (CryptoError, EncryptionRefused, PinFileError)):
        sys.stderr.write(f"{prog}: {error}; nothing was written\n")
        return EXIT_FAILED
    if isinstance(error, NeoError):
        sys.stderr.write(f"{prog}: {describe_error(error)}\n")
        return EXIT_AUTH if error.code in (ErrorCode.AUTH_FAILED, ErrorCode.AUTH_REQUIRED) else EXIT_FAILED
    if isinstance(error, OSError):
        sys.stderr.write(f"{prog}: {error}\n")
        return EXIT_FAILED
    return None


def _print_summary(direction: Direction, args: argparse.Namespace, summary: Any, progress: Progress,
                   code: int) -> None:  # fmt: skip
    """The summary: --json, --json-progress's last lines, or the human one (on stderr after a failure)."""
    out = sys.stderr if code and not (args.json or args.json_progress) else sys.stdout
    try:
        if args.json_progress:
            progress.emit()  # the last status: everything done
            write_json({"message_type": "summary", **summary.as_json()})
        elif args.json:
            write_json(summary.as_json())
        elif not args.quiet:
            out.write(_human(direction, summary, getattr(args, "delete", False)) + "\n")
        out.flush()
    except BrokenPipeError:  # the reader went away (| true): the work is done all the same, say so
        silence_broken_stdout()
        done = "committed" if direction == "push" else "pulled"
        sys.stderr.write(f"neo-{direction}: snapshot {summary.snapshot} {done}; the summary could not be "
                         "written (standard output was closed)\n")  # fmt: skip


async def _run(
    reactor: Any, direction: Direction, args: argparse.Namespace, local: str, remote_text: str
) -> int:
    """Connect, push or pull through the API's client, say bye, print the summary; the exit code."""
    remote = parse_remote(remote_text)
    quiet = args.quiet or args.json or args.json_progress
    show_progress = (not quiet) if args.progress is None else args.progress
    filt = _filter(args) if direction == "push" else None
    label = _label(args, local) if direction == "push" else None
    options = connect_options(args)
    keys = key_source(args)  # after connect_options: with both -stdin flags, the password is line 1
    if direction == "push" and not getattr(args, "stdin", False) and not os.path.isdir(local):
        sys.stderr.write(f"neo-push: {local} is not a directory; give the directory to push as LOCAL_DIR\n")
        return EXIT_FAILED
    started = time.monotonic()  # elapsed_s covers the whole run: connecting and authenticating too
    client = await open_session(reactor, f"neo-{direction}", remote, options)
    if isinstance(client, int):
        return client
    progress = Progress(show_progress, "pushed" if direction == "push" else "pulled", action=direction,
                        json_stream=raw_stdout() if args.json_progress else None)  # fmt: skip
    ticker = LoopingCall(progress.emit)
    if args.json_progress:
        ticker.clock = reactor
        ticker.start(STATUS_INTERVAL, now=True)
    code = EXIT_OK
    summary: Any = None
    try:
        if direction == "push":
            assert filt is not None
            push_options = _push_options(args, remote, local, filt, keys, progress, label)
            special = pushflags.pipeline(args)  # the dry run, or the push of standard input
            if special is not None:
                summary = await special(reactor, client.peer, local, remote.target, remote.path, push_options)
            else:
                summary = await client.push(local, remote.target, remote.path, push_options)
        else:
            summary = await client.pull(remote.target, local, remote.path, _pull_options(args, remote, keys, progress))
    except Exception as e:
        failed = _failed(direction, e)
        if failed is None:
            raise
        code = failed
        summary = getattr(e, "summary", None)  # an incomplete pull's: what it did restore
    finally:
        if ticker.running:
            ticker.stop()
        progress.close()
        try:
            await client.close()
        except Exception:  # noqa: S110 - the result is decided; a failing bye changes nothing
            pass
    if code == EXIT_OK and direction == "push" and summary is not None and summary.warnings_count:
        dry = getattr(args, "dry_run", False)
        what = "the push would be incomplete" if dry else f"snapshot {summary.snapshot} is incomplete"
        sys.stderr.write(
            f"neo-push: {what}: {summary.warnings_count} item(s) were not stored (named above with the reason)\n"
        )
        code = EXIT_PARTIAL
    if summary is not None:
        summary.elapsed_s = time.monotonic() - started
        _print_summary(direction, args, summary, progress, code)
    return code


def main(program: Direction, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` for neo-push / neo-pull, run it, and return the exit code."""
    parser = build_parser(program)
    args = parser.parse_args(argv)
    if args.password is not None and argv is None:
        hide_secrets(parser.prog)
    if args.make_sample_filter_file:
        try:
            path = write_sample(Path.cwd())
        except (FilterError, OSError) as e:
            sys.stderr.write(f"{parser.prog}: {e}\n")
            return EXIT_FAILED
        sys.stdout.write(f"wrote {path}\n")
        return EXIT_OK
    direction: Direction = args.direction or program
    if getattr(args, "stdout", False):
        from neotwist.client.cat import pull_to_stdout

        if len(args.args) != 1 or args.lpath:
            parser.error("--stdout takes REMOTE/PATH alone: the file's bytes go to standard output")
        return pull_to_stdout(parser, args, args.args[0])
    try:
        if direction == "push" and getattr(args, "stdin", False):  # no LOCAL_DIR: the data comes from stdin
            local, remote_text = "", pushflags.stdin_remote(args, list(args.args), default_remote())
            args.stdin_name = pushflags.check_stdin(args)
        else:
            local, remote_text = _split_args(args, program)
        over_tls = parse_remote(remote_text).scheme == "tls"  # usage errors before any connection
        args.at_time = None
        if getattr(args, "at", None) is not None:
            args.at_time = parse_at(args.at, time.time())
    except (UsageError, TimeSpecError) as e:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"{parser.prog}: error: {e}\n")
        return EXIT_USAGE
    start_logging(args.debug)
    tune_threads()
    tune_malloc()  # before anything big is allocated: SSH packets and file data reuse heap memory
    return react(parser.prog, lambda reactor: _run(reactor, direction, args, local, remote_text), tls=over_tls)


push_main = entry_point("neo-push", lambda: main("push"))
pull_main = entry_point("neo-pull", lambda: main("pull"))


__all__ = ["build_parser", "main", "pull_main", "push_main"]
