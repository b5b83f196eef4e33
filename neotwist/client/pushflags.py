"""neo-push's options that change what a push reads or whether it sends: ``--dry-run``, ``--one-file-system``,
``--exclude-caches``, ``--exclude-if-present``, ``--stdin`` / ``--stdin-filename``.

Kept apart from :mod:`neotwist.client.cli` (which parses and dispatches) so that each option's text and its
translation into the pipelines' options sit in one place.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from neotwist import paths
from neotwist.client.dirrules import DirRules
from neotwist.client.remote import UsageError
from neotwist.wire.errors import NeoError

EXAMPLES = """\
  neo-push --dry-run ~/work alice@nas/work
      say what a push would send (files new, modified, unmodified; bytes) without sending or changing anything
  neo-push -x --exclude-caches --exclude-if-present .nobackup / alice@nas/root
      stay on the root file system (mount points are kept as empty directories), leave out cache
      directories (CACHEDIR.TAG) and directories holding a .nobackup file (the tag itself is kept)
  pg_dump mydb | neo-push --stdin --stdin-filename mydb.sql alice@nas/dumps
      store what is piped in as the file mydb.sql of a new snapshot of "dumps" (the next dump sends only what
      changed); an empty input is refused, and 'set -o pipefail' lets the shell report a failed pg_dump
"""
"""Lines for neo-push's --help examples."""


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """neo-push's arguments for these options, in its ``push`` group."""
    group.add_argument("-n", "--dry-run", action="store_true",
                       help="say what would be sent (files new, modified, unmodified, only on the server; chunks "
                       "and bytes the server lacks, asked with 'have' and compressed as a push would) and change "
                       "nothing: no snapshot, no new target, the files cache untouched")
    group.add_argument("-x", "--one-file-system", action="store_true",
                       help="do not cross into other file systems: a mount point is kept as an empty directory "
                       "(as rsync -x)")
    group.add_argument("--exclude-caches", action="store_true",
                       help="leave out the contents of directories holding a valid CACHEDIR.TAG "
                       "(bford.info/cachedir); the directory and its tag file are kept, as GNU tar does")
    group.add_argument("--exclude-if-present", action="append", default=[], metavar="NAME",
                       help="leave out the contents of directories that contain NAME (repeatable); the directory "
                       "and NAME are kept")
    group.add_argument("--stdin", action="store_true",
                       help="store standard input (e.g. a database dump) as one file of a new snapshot, read and "
                       "chunked as it streams in; give only REMOTE")
    group.add_argument("--stdin-filename", metavar="NAME", default=None,
                       help="the path of that file in the snapshot (default: stdin)")


def dir_rules(args: argparse.Namespace) -> DirRules | None:
    """The directory-level rules the command line asks for (None: none)."""
    if not hasattr(args, "exclude_if_present"):  # neo-pull --push: the pull's parser, without these options
        return None
    for name in args.exclude_if_present:
        if not name or "/" in name or name in (".", ".."):
            raise UsageError(f"--exclude-if-present takes a file name, not {name!r}")
    rules = DirRules(args.one_file_system, args.exclude_caches, tuple(args.exclude_if_present))
    return None if rules.empty else rules


def check_stdin(args: argparse.Namespace) -> str:
    """The snapshot path of a --stdin push, after refusing what cannot work with it (a UsageError)."""
    if args.stdin_filename is not None and not args.stdin:
        raise UsageError("--stdin-filename goes with --stdin")
    name = args.stdin_filename if args.stdin_filename is not None else "stdin"
    try:
        paths.check_path(name)
    except NeoError as e:
        raise UsageError(f"--stdin-filename {name!r}: {e.message}") from None
    if not name:
        raise UsageError("--stdin-filename needs a name")
    if args.delete:
        raise UsageError(
            "--delete with --stdin would record everything else in the target as deleted; push each dump under "
            "its own name, or to a target of its own"
        )
    for flag, given in (("--one-file-system", args.one_file_system), ("--exclude-caches", args.exclude_caches),
                        ("--exclude-if-present", args.exclude_if_present), ("--exclude", args.exclude),
                        ("--filter-file", args.filter_file)):  # fmt: skip
        if given:
            raise UsageError(f"{flag} chooses files of a directory; --stdin reads no directory")
    for flag, given in (("--password-stdin", getattr(args, "password_stdin", False)),
                        ("--passphrase-stdin", getattr(args, "passphrase_stdin", False))):  # fmt: skip
        if given:
            raise UsageError(
                f"{flag} and --stdin both read standard input: give the secret with a file, a command or the "
                "environment instead (see --help)"
            )
    if sys.stdin is None or os.isatty(0):
        raise UsageError("--stdin reads a pipe or a file, and standard input is a terminal (pipe the data in)")
    return name


def stdin_remote(args: argparse.Namespace, positional: list[str], default: str | None) -> str:
    """REMOTE of a --stdin push: the one positional argument, or the default remote."""
    if len(positional) == 1:
        return positional[0]
    if not positional and default is not None:
        return default
    raise UsageError("with --stdin give only REMOTE (the data comes from standard input)")


def pipeline(args: argparse.Namespace) -> Callable[..., Awaitable[Any]] | None:
    """The coroutine function for what the command line asks beyond a push, called as
    :func:`neotwist.client.push.push`: the dry run, or the push of standard input (dry or not); None for a
    plain push."""
    if getattr(args, "stdin", False):
        from neotwist.client.stdinpush import push_stdin

        return functools.partial(push_stdin, name=args.stdin_name, dry_run=args.dry_run)
    if getattr(args, "dry_run", False):
        from neotwist.client.dryrun import dry_run

        return dry_run
    return None


def describe(summary: Any) -> str:
    """The human summary of a dry run."""
    from neotwist.sizes import human_size

    lines = [
        f"dry run, nothing was sent or changed: {summary.files_scanned} items scanned, {summary.files_skipped} "
        "skipped",
    ]
    if summary.stdin is not None:
        lines.append(f"standard input ({human_size(summary.bytes_read)}) would be stored as {summary.stdin}"
                     + ("" if summary.target_exists else f" in target {summary.target}, new with the push"))
    elif not summary.listed:
        lines.append("the latest snapshot could not be listed: new, modified and unmodified are not told apart")
    elif summary.target_exists:
        lines.append(
            f"files: {summary.files_new} new, {summary.files_modified} modified, {summary.files_unmodified} "
            f"unmodified; directories: {summary.dirs_new} new, {summary.dirs_modified} modified, "
            f"{summary.dirs_unmodified} unmodified"
        )
        if summary.removed:
            lines.append(
                f"{summary.removed} item(s) only on the server: --delete would record them as deleted; without it "
                "the remote view keeps them"
            )
    else:
        lines.append(f"target {summary.target} does not exist yet: the push would create it; everything is new")
    lines.append(
        f"would read {summary.files_changed} files ({human_size(summary.bytes_read)}) and send "
        f"{summary.chunks_to_send} chunks the server lacks: {human_size(summary.chunk_bytes_to_send)}, "
        f"{human_size(summary.bytes_to_send)} once compressed" + (" and sealed" if summary.encrypted else "")
    )
    return "\n".join(lines)
