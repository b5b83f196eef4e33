"""neo-cat (and ``neo-pull --stdout``): one file of a snapshot, its bytes written to standard output.

The file is fetched a segment at a time (the next while this one is written), every chunk checked against its
id (and its seal, for an encrypted target) before a byte of it is written; memory stays at two segments
whatever the file's size. A damaged chunk stops the output there with one line saying so, and exit 1: what
was written up to then is the file's true beginning.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

from twisted.internet.threads import deferToThread

from neotwist import paths
from neotwist.client.browsecli import parser as browse_parser
from neotwist.client.browsecli import run, split_remote
from neotwist.client.clibase import EXIT_OK, Parser
from neotwist.client.history import SPEC_HELP, BrowseError, History, SnapSpec, kind_of, parse_spec
from neotwist.client.remote import Remote, UsageError
from neotwist.client.runner import entry_point
from neotwist.client.timespec import TimeSpecError, parse_at
from neotwist.display import raw_stdout, shown, write_json
from neotwist.wire.errors import RemoteError

_EPILOG = f"""\
PATH is relative to REMOTE (which may name a sub-path); REMOTE/PATH alone works too when NEO_REPOSITORY is not
set.
SNAPSHOT is an {SPEC_HELP}.
TIME: 2026-11-23T14:30 (local time), 2026-11-23, @EPOCH or '3d ago'.

Every chunk is verified before its bytes are written; memory stays bounded whatever the file's size. A chunk
found damaged stops the output there (exit 1; the bytes written are the file's true beginning).

examples:
  neo-cat alice@nas/docs reports/q3.csv | less          the latest version
  neo-cat --snapshot 12 alice@nas/docs reports/q3.csv > q3-then.csv
  neo-cat --at '3d ago' alice@nas/etc hosts | diff - /etc/hosts
  neo-cat --snapshot latest~1 alice@nas/db dump.sql.zst | zstd -d | psql
  neo-cat -o q3.csv --json alice@nas/docs reports/q3.csv    write a file, print a summary
  neo-pull --stdout --snapshot 12 alice@nas/docs/reports/q3.csv   the same through neo-pull
"""

WRITE_BYTES = 1 << 20
"""Bytes handed to one write: a pipe takes them as the reader drains it."""


def _parser() -> Parser:
    p = browse_parser(
        "neo-cat",
        "neo-cat [options] [--snapshot SNAPSHOT | --at TIME] REMOTE PATH",
        "Write one file of a snapshot (the latest by default) to standard output, verified.",
        _EPILOG,
    )
    what = p.add_argument_group("what to write")
    when = what.add_mutually_exclusive_group()
    when.add_argument("--snapshot", metavar="SNAPSHOT", help="the file as of this snapshot (default: latest)")
    when.add_argument("--at", metavar="TIME", help="as of the newest snapshot taken at or before TIME")
    what.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    return p


def cat_main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    remote, rest = split_remote(p, args, ["PATH"], optional=1)
    try:
        spec = _when(args.snapshot, args.at)
        path = _join(remote, rest[0] if rest else "")
    except UsageError as e:
        p.error(str(e))
    if args.json and args.output is None:
        p.error("--json prints a summary: give -o FILE (without it, standard output carries the file's bytes)")
    return _cat("neo-cat", args, remote, path, spec, args.output)


def _when(snapshot: str | None, at: str | None) -> SnapSpec:
    """The snapshot --snapshot SNAPSHOT or --at TIME names (the latest without either)."""
    if at is None:
        return parse_spec(snapshot or "latest")
    try:
        return SnapSpec(at, at=parse_at(at, time.time()))
    except TimeSpecError as e:
        raise UsageError(str(e)) from None


def _join(remote: Remote, path: str) -> str:
    """REMOTE's sub-path with PATH below it: the file to write."""
    whole = paths.join(remote.path, path.strip("/")) if path.strip("/") else remote.path
    if not whole:
        raise UsageError("give the PATH of a file (REMOTE names a whole target)")
    return whole


def pull_to_stdout(parser: Any, args: argparse.Namespace, remote_text: str) -> int:
    """``neo-pull --stdout REMOTE/PATH``: what neo-cat does, with neo-pull's ``--snapshot ID`` / ``--at``."""
    from neotwist.client.remote import parse_remote

    try:
        remote = parse_remote(remote_text)
        if not remote.path:
            raise UsageError("--stdout writes one file: give REMOTE/PATH of a file")
        spec = _when(None if args.snapshot is None else str(args.snapshot), args.at)
    except UsageError as e:
        parser.error(str(e))
    if args.json or args.json_progress:
        parser.error("--stdout writes the file's bytes to standard output: no --json with it (neo-cat -o FILE --json)")
    return _cat("neo-pull", args, remote, remote.path, spec, None)


def _cat(prog: str, args: argparse.Namespace, remote: Remote, path: str, spec: SnapSpec, output: str | None) -> int:
    # the handle is opened at the file itself: only its own path and chunks are asked for
    file_remote = dataclasses.replace(remote, path=path)

    async def body(history: History) -> int:
        started = time.monotonic()
        record = await history.resolve(spec)
        tree = await history.tree(record.id)
        if tree.errors:
            raise BrowseError(f"{path}: {tree.errors[0]}")
        entry = tree.entries.get("")
        if entry is None:
            raise BrowseError(f"{path}: not in snapshot {record.id}")
        kind = kind_of(entry)
        if kind == "d":
            raise BrowseError(f"{path} is a directory in snapshot {record.id}: neo-cat writes one file (use neo-pull)")
        if kind == "l":
            raise BrowseError(f"{path} is a symlink to {entry.link} in snapshot {record.id}: give the file it names")
        if kind != "f":
            raise BrowseError(f"{path} is a special file (FIFO or device) in snapshot {record.id}: it holds no bytes")
        out, close = _open_output(output)
        written = 0
        try:
            try:
                async for raws in history.stream(tree, entry, path):
                    written += await deferToThread(_write, out, raws)
                await deferToThread(out.flush)
            except BrowseError as e:
                raise BrowseError(f"{e}; the output stopped after {written} bytes (incomplete)") from None
            except RemoteError as e:  # the server found the data damaged, or the connection broke
                from neotwist.client.push import describe_error

                why = f"{describe_error(e)}; the output stopped after {written} bytes (incomplete)"
                raise BrowseError(f"{path}: {why}") from None
        finally:
            if close:
                out.close()
        if args.json:
            write_json(
                {
                    "path": path, "snapshot": record.id, "time": record.time, "size": entry.size,
                    "bytes_written": written, "output": output, "encrypted": history.encrypted,
                    "elapsed_s": round(time.monotonic() - started, 3),
                }
            )  # fmt: skip
        elif output is not None and not args.quiet:
            sys.stderr.write(f"{prog}: wrote {shown(path)} of snapshot {record.id} ({written} bytes) to {output}\n")
        return EXIT_OK

    return run(prog, args, file_remote, body)


def _open_output(output: str | None) -> tuple[IO[bytes], bool]:
    if output is None:
        return raw_stdout().buffer, False
    try:
        return open(output, "wb"), True  # closed by the caller
    except OSError as e:
        raise BrowseError(f"cannot write {output}: {e.strerror}") from None


def _write(out: IO[bytes], raws: list[bytes]) -> int:
    """Write ``raws`` in pieces of about WRITE_BYTES (a worker thread: a slow reader never blocks the reactor)."""
    n = 0
    batch: list[bytes] = []
    size = 0
    for raw in raws:
        batch.append(raw)
        size += len(raw)
        if size >= WRITE_BYTES:
            out.write(b"".join(batch))
            n += size
            batch, size = [], 0
    if batch:
        out.write(b"".join(batch))
        n += size
    return n


cat = entry_point("neo-cat", lambda: cat_main(None))

__all__ = ["cat", "cat_main", "pull_to_stdout"]
