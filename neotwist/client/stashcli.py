"""neo-ls, neo-prune and neo-check: the command lines for looking into the stash and looking after it.

Each command connects like neo-push and neo-pull (same REMOTE form, flags, password sources, host key checks and
exit codes: see :mod:`neotwist.client.clibase`), sends its requests through :mod:`neotwist.client.stash` and
prints either a table for people or, with ``--json``, one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import stat
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from neotwist.client import metadata, stash
from neotwist.client.clibase import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    REMOTE_FORM,
    REPOSITORY_ENV,
    Parser,
    access,
    add_connection_options,
    add_key_options,
    add_output_options,
    add_version,
    connect_options,
    default_remote,
    open_session,
    start_logging,
)
from neotwist.client.encryption import EncryptionDowngrade, EncryptionRefused
from neotwist.client.labels import Labelled, keep_tagged, matches, read_labels, tag_filter
from neotwist.client.metadata import exact_link
from neotwist.client.pins import PinFileError
from neotwist.client.remote import Remote, UsageError, parse_remote
from neotwist.client.runner import entry_point, react
from neotwist.client.timespec import AtTime, TimeSpecError, format_time, parse_at, parse_duration
from neotwist.crypto import CryptoError, WrongPassphrase
from neotwist.display import json_name, shown, write_json
from neotwist.sizes import human_size
from neotwist.wire import limits
from neotwist.wire.label import LabelError
from neotwist.wire.messages import UsageInfo

if TYPE_CHECKING:
    from neotwist.client.api import Client
    from neotwist.client.remotetarget import RemoteTarget

_LS_EPILOG = f"""\
REMOTE is {REMOTE_FORM}; /TARGET may be left out to list the account's targets.

examples:
  neo-ls alice@nas                                   the targets, with snapshots, files and stored bytes
  neo-ls alice@nas/docs --snapshots                  every kept snapshot of "docs" (id, time, host, tags, ...)
  neo-ls alice@nas/docs --snapshots --tag db,daily   only those tagged both "db" and "daily"
  neo-ls alice@nas/docs/reports                      the directory "reports" as of the latest snapshot
  neo-ls -R --at '2026-11-01 18:00' alice@nas/docs   the whole target as it was then
  neo-ls alice@nas/docs --versions reports/q3.ods    every stored version of one file
  neo-ls alice@nas/docs --deleted                    files deleted since, that old snapshots still hold
  neo-ls alice@nas --usage                           space used against the account's quota

Restore what you found with neo-pull --snapshot ID (or --at TIME) REMOTE[/PATH] DEST. A TIME covers the
second, minute or day it is written to: a TIME copied from --snapshots picks that very snapshot.

--snapshots shows each snapshot's host, the directory pushed, its tags, and "incomplete (N warnings)" when its
push could not store everything (it exited 23). Encrypted targets keep these sealed; they are shown decrypted.
--tag TAG[,TAG...] (repeatable, as restic): a snapshot is shown if it has every tag of one of the options.
"""

_PRUNE_EPILOG = f"""\
REMOTE is {REMOTE_FORM} (a whole target: no SUBPATH).

Snapshots are kept if any rule keeps them; the newest one is always kept. Buckets (hour, day, ISO week, month,
year) are in UTC, by the server's time; each keeps its newest snapshot. --keep-tag TAG[,TAG...] (repeatable,
as restic) keeps every snapshot that has every tag of one of the options; this client reads the tags (in an
encrypted target only the key can: give its passphrase as for neo-ls) and tells the server which to keep.
DURATION: number-unit pairs with units y (365 days), m (30 days), w, d, h, min, s, e.g. 1y6m or 36h. After
removing snapshots the server reclaims the space of chunks nothing references any more. Needs full access to
the target.

examples:
  neo-prune --dry-run --keep-daily 7 --keep-weekly 4 alice@nas/docs    show what would go
  neo-prune --keep-last 3 --keep-within 30d alice@nas/docs
  neo-prune --keep-daily 7 --keep-monthly 12 --keep-yearly 5 --keep-tag keep alice@nas/docs
"""

_CHECK_EPILOG = f"""\
REMOTE is {REMOTE_FORM}.

Exit status 0: nothing damaged; 1: something is damaged or lost (each such file is printed with the snapshots
that hold it) or the check could not run.

Healing: --repair marks every damaged chunk found, so the server stops counting on it. The next neo-push of
the intact files sends those chunks again (even files its cache calls unchanged), which heals every snapshot
that refers to them. Until then they are listed as "lost"; a file whose intact copy is gone stays lost (prune
the snapshots that hold it to forget it). A chunk that a neo-pull finds damaged is marked by the server at
once. --repair needs the full right on the target.

Encrypted targets: the key's passphrase is asked for, to name damaged files (the server knows only encrypted
paths). The server cannot open sealed chunks, so it checks their records and CRCs; neo-pull authenticates
every chunk, name and metadata blob as it restores them.

examples:
  neo-check alice@nas/docs                  index and chunk store agree, every record is intact
  neo-check --verify-data alice@nas/docs    also decompress and hash every chunk (reads all stored data)
  neo-check --verify-data --repair alice@nas/docs    mark what is damaged (exit 1 until it is healed), then
  neo-push ~/docs alice@nas/docs                      send the marked chunks again: every snapshot is healed
"""


def _parser(prog: str, usage: str, description: str, epilog: str, *, progress: bool = False) -> Parser:
    p = Parser(
        prog=prog,
        usage=usage,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("remote", metavar="REMOTE", nargs="?", help=argparse.SUPPRESS)  # default: NEO_REPOSITORY
    add_version(p)
    add_connection_options(p)
    add_output_options(p, progress=progress)
    return p


def _ls_parser() -> Parser:
    p = _parser(
        "neo-ls",
        "neo-ls [options] REMOTE",
        "List targets, snapshots, files, the versions of a file, or deleted files on a Neophytos server.",
        _LS_EPILOG,
    )
    what = p.add_argument_group("what to list (files at REMOTE's path by default)")
    one = what.add_mutually_exclusive_group()
    one.add_argument("--snapshots", action="store_true", help="the target's snapshots")
    one.add_argument("--versions", metavar="PATH", help="every stored version of PATH (relative to REMOTE)")
    one.add_argument("--deleted", action="store_true", help="files deleted from the current view that earlier "
                     "snapshots still hold (at or below REMOTE's path)")  # fmt: skip
    one.add_argument("--usage", action="store_true", help="the account's space used, against its quota (stored "
                     "bytes of all its targets and history, plus the per-file and per-directory charges)")  # fmt: skip
    when = what.add_mutually_exclusive_group()
    when.add_argument("--snapshot", type=int, metavar="ID", help="list files as of this snapshot")
    when.add_argument("--at", metavar="TIME", help="list files as of the newest snapshot taken at or before TIME "
                      "(2026-11-23T14:30 local time, 2026-11-23, @EPOCH, '3d ago')")  # fmt: skip
    what.add_argument("-R", "--recursive", action="store_true", help="list the whole tree below the path")
    what.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="TAG[,TAG...]",
        help="with --snapshots: only snapshots that have every tag of one --tag (repeatable)",
    )
    add_key_options(p)  # encrypted targets are listed decrypted
    return p


def _prune_parser() -> Parser:
    p = _parser(
        "neo-prune",
        "neo-prune [options] --keep-... REMOTE",
        "Remove old snapshots of a target by a retention policy, then reclaim the space nothing references.",
        _PRUNE_EPILOG,
    )
    keep = p.add_argument_group("retention policy (at least one rule)")
    rules = {
        "last": "keep the N newest snapshots",
        "hourly": "keep the newest snapshot of each of the N most recent hours that have one",
        "daily": "the same for days",
        "weekly": "the same for ISO weeks",
        "monthly": "the same for months",
        "yearly": "the same for years",
    }
    for rule, text in rules.items():
        keep.add_argument(f"--keep-{rule}", type=_count, default=0, metavar="N", help=text)
    keep.add_argument("--keep-within", type=_duration, default=0.0, metavar="DURATION",
                      help="keep every snapshot taken within DURATION before now")  # fmt: skip
    keep.add_argument(
        "--keep-tag",
        action="append",
        default=[],
        metavar="TAG[,TAG...]",
        help="keep every snapshot that has every tag of one --keep-tag (repeatable)",
    )
    p.add_argument("-n", "--dry-run", action="store_true", help="show what would be removed; change nothing")
    add_key_options(p)  # --keep-tag reads an encrypted target's sealed tags
    return p


def _check_parser() -> Parser:
    p = _parser(
        "neo-check",
        "neo-check [options] REMOTE",
        "Check that a target's index and chunk store agree and that every stored record is intact.",
        _CHECK_EPILOG,
        progress=True,
    )
    p.add_argument("--verify-data", action="store_true", help="also check every chunk's content against its id")
    p.add_argument("--repair", action="store_true", help="mark the damaged chunks found, so the next neo-push of "
                   "the intact files sends them again and heals every snapshot (needs the full right)")  # fmt: skip
    add_key_options(p)  # an encrypted target's sub-path and damaged files are named with its key
    return p


def _count(text: str) -> int:
    if not text.isdigit() or int(text) > 1_000_000:
        raise argparse.ArgumentTypeError(f"expected a count from 0 to 1000000, not {text!r}")
    return int(text)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except TimeSpecError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# --- running -----------------------------------------------------------------------------------------------


def _run(
    prog: str, args: argparse.Namespace, remote: Remote, body: Callable[[Client], Awaitable[int]]
) -> int:
    """Connect to ``remote``, run ``body`` with the API's client, say bye; map failures to one line and an
    exit code."""
    start_logging(args.debug)

    async def run(reactor: Any) -> int:
        from neotwist.client.push import describe_error
        from neotwist.wire.errors import ErrorCode, NeoError

        client = await open_session(reactor, prog, remote, connect_options(args))
        if isinstance(client, int):
            return client
        try:
            return await body(client)
        except stash.StashError as e:
            sys.stderr.write(f"{prog}: {e}\n")
            return EXIT_FAILED
        except (WrongPassphrase, EncryptionDowngrade) as e:  # encryption
            sys.stderr.write(f"{prog}: {e}\n")
            return EXIT_AUTH
        except (CryptoError, EncryptionRefused, PinFileError) as e:
            sys.stderr.write(f"{prog}: {e}\n")
            return EXIT_FAILED
        except NeoError as e:
            sys.stderr.write(f"{prog}: {describe_error(e)}\n")
            return EXIT_AUTH if e.code in (ErrorCode.AUTH_FAILED, ErrorCode.AUTH_REQUIRED) else EXIT_FAILED
        finally:
            try:
                await client.close()
            except Exception:  # noqa: S110 - the result is decided; a failing bye changes nothing
                pass

    return react(prog, run, tls=remote.scheme == "tls")


def _print_json(document: Any) -> None:
    write_json(document)


def _parse(parser: Parser, argv: Sequence[str] | None, need_target: bool = True) -> tuple[argparse.Namespace, Remote]:
    args = parser.parse_args(argv)
    text = args.remote or default_remote()
    if text is None:
        parser.error(f"give REMOTE (or set {REPOSITORY_ENV})")
    try:
        remote = parse_remote(text, need_target=need_target)
    except UsageError as e:
        parser.error(str(e))
    return args, remote


# --- neo-ls ------------------------------------------------------------------------------------------------


async def _open_snapshotted(client: Client, args: argparse.Namespace, remote: Remote) -> RemoteTarget:
    """Open REMOTE for reading as neo-ls and neo-check do (key, grant root, pin and --require-encryption from
    the command line); a target without a snapshot yet is an error that says to push first."""
    target = await client.open(remote.target, remote.path, access(args, remote))
    target.require_snapshot()
    return target


def ls_main(argv: Sequence[str] | None = None) -> int:
    parser = _ls_parser()
    args, remote = _parse(parser, argv, need_target=False)
    at: AtTime | None = None
    if args.at is not None:
        try:
            at = parse_at(args.at, time.time())
        except TimeSpecError as e:
            parser.error(str(e))
    if args.usage and (args.at is not None or args.snapshot is not None or args.recursive):
        parser.error("--usage lists the account's usage: no --at, --snapshot or -R with it")
    if not remote.target and (args.snapshots or args.versions or args.deleted or args.at or args.snapshot):
        parser.error("give REMOTE as HOST/TARGET[/PATH] to list inside a target")
    if (args.snapshots or args.versions or args.deleted) and (at is not None or args.snapshot is not None):
        parser.error("--at and --snapshot choose the files listed; --snapshots, --versions and --deleted list all")
    if args.tag and not args.snapshots:
        parser.error("--tag filters --snapshots: give --snapshots with it")
    try:
        tags = tag_filter(args.tag)
    except LabelError as e:
        parser.error(str(e))
    if (args.snapshots or args.versions is not None or args.deleted) and args.recursive:
        # refused rather than ignored: "-R --versions DIR" reads as "every version of everything below DIR"
        which = "--snapshots" if args.snapshots else "--versions" if args.versions is not None else "--deleted"
        parser.error(
            f"-R lists a snapshot's files recursively; {which} takes no -R (--deleted already lists everything "
            "below REMOTE's path, --versions one path)"
        )

    async def body(client: Client) -> int:
        if args.usage:
            return _show_usage(args, await client.usage())
        if not remote.target:
            return _show_targets(args, await client.targets())
        # An encrypted target is opened at its encrypted sub-path and listed decrypted: names and metadata come
        # from the entries' sealed metadata, authenticated on the way; errors name plaintext paths.
        target = await _open_snapshotted(client, args, remote)
        if args.snapshots:
            labelled = read_labels(await target.snapshots(), target.crypt.keys if target.crypt is not None else None)
            for x in labelled:
                if x.unreadable:
                    sys.stderr.write(f"neo-ls: warning: snapshot {x.record.id}'s label: {x.unreadable}\n")
            code = _show_snapshots(args, remote, [x for x in labelled if matches(x.tags, tags)])
        elif args.versions is not None:
            path = args.versions.strip("/")
            code = _show_versions(args, remote, path, await target.versions(path))
        elif args.deleted:
            code = _show_deleted(args, remote, await target.deleted())
        else:
            wanted = args.snapshot
            if at is not None:
                wanted = stash.resolve_snapshot(await target.snapshots(named=False), at, None)
            snapshot, entries = await target.entries(wanted, "", args.recursive)
            code = _show_entries(args, remote, snapshot, entries)
        if target.errors:
            for text in target.errors:
                sys.stderr.write(f"neo-ls: not listed: {text}\n")
            return EXIT_FAILED
        return code

    return _run("neo-ls", args, remote, body)


def _table(rows: list[list[str]], right: Sequence[int] = ()) -> str:
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _show_targets(args: argparse.Namespace, targets: list[Any]) -> int:
    if args.json:
        _print_json({"targets": [msgspec.structs.asdict(t) for t in targets]})
    elif not args.quiet:
        rows = [["TARGET", "SNAPSHOTS", "LATEST", "FILES", "STORED"]] + [
            [
                shown(t.name) + (" (encrypted)" if t.encrypted else "")
                + (f" ({t.right}, of {shown(t.owner)})" if t.owner else ""),
                str(t.snapshots),
                format_time(t.latest_time) if t.latest_time is not None else "- (none yet: push to it, or resume)",
                str(t.files),
                human_size(t.stored_bytes),
            ]
            for t in targets
        ]
        sys.stdout.write(_table(rows, right=(1, 3, 4)) if targets else "no targets yet (neo-push creates one)\n")
    return EXIT_OK


def _show_usage(args: argparse.Namespace, info: UsageInfo) -> int:
    """``neo-ls --usage``: what the account uses against its quota."""
    available = None if info.quota is None else max(0, info.quota - info.used)
    if args.json:
        _print_json(
            {
                "account": info.account, "used": info.used, "quota": info.quota, "available": available,
                "stored_bytes": info.stored_bytes, "file_versions": info.file_versions,
                "dir_versions": info.dir_versions, "per_file": info.per_file, "per_dir": info.per_dir,
                "charges": info.per_file * info.file_versions + info.per_dir * info.dir_versions,
                "charged_to": info.charged_to or None,
                "targets": [msgspec.structs.asdict(t) for t in info.targets],
            }
        )  # fmt: skip
        return EXIT_OK
    if args.quiet:
        return EXIT_OK
    if info.charged_to:
        sys.stdout.write(f"{info.account} owns no targets: what it pushes is charged to {info.charged_to}\n")
        return EXIT_OK
    if info.quota is None:
        limit = "(no quota)"
    else:
        limit = f"of {human_size(info.quota)} ({100 * info.used / max(1, info.quota):.1f} %)"
    lines = [
        f"{info.account}: {human_size(info.used)} used {limit}"
        + ("" if available is None else f", {human_size(available)} left"),
        f"  stored {human_size(info.stored_bytes)} ({info.stored_bytes:,} bytes); {info.file_versions:,} file "
        f"versions x {info.per_file:,} B; {info.dir_versions:,} directory versions x {info.per_dir:,} B",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    rows = [["TARGET", "STORED", "FILE VERSIONS", "DIR VERSIONS"]] + [
        [shown(t.name), human_size(t.stored_bytes), str(t.file_versions), str(t.dir_versions)]
        for t in info.targets
    ]
    if info.targets:
        sys.stdout.write(_table(rows, right=(1, 2, 3)))
    return EXIT_OK


def _snapshot_json(x: Labelled) -> dict[str, Any]:
    r, label = x.record, x.label
    return {
        "id": r.id, "time": r.time, "files": r.files, "dirs": r.dirs, "changed": r.changed,
        "deleted": r.deleted, "new_chunks": r.new_chunks, "bytes_added": r.new_bytes,
        "root": r.root, "delete": r.delete_mode,
        # None: not recorded (a snapshot made before labels, or a sealed label that could not be read)
        "host": label.host if label is not None else None,
        "source": label.source if label is not None else None,
        "tags": x.tags,
        "incomplete": label.incomplete if label is not None else None,
        "warnings": label.warnings if label is not None else None,
    }  # fmt: skip


def _snapshot_row(x: Labelled) -> list[str]:
    r, label = x.record, x.label
    pushed = (shown(r.root) or "/") + (" --delete" if r.delete_mode else "")
    if label is not None and label.incomplete:
        pushed += f"  incomplete ({label.warnings} warnings)"
    # the columns scripts may have split before labels keep their places; SOURCE (it may hold spaces) comes last
    return [
        str(r.id), format_time(r.time), str(r.files), str(r.changed), str(r.deleted), human_size(r.new_bytes),
        shown(label.host or "-") if label is not None else "-",
        shown(",".join(x.tags)) or "-",
        pushed,
        shown(label.source or "-") if label is not None else "-",
    ]  # fmt: skip


def _show_snapshots(args: argparse.Namespace, remote: Remote, records: list[Labelled]) -> int:
    if args.json:
        snapshots = [_snapshot_json(x) for x in records]
        _print_json({"target": remote.target, "path": remote.path, "snapshots": snapshots})
    elif not args.quiet:
        header = ["ID", "TIME", "FILES", "CHANGED", "DELETED", "ADDED", "HOST", "TAGS", "PUSHED", "SOURCE"]
        rows = [header] + [_snapshot_row(x) for x in records]
        sys.stdout.write(_table(rows, right=(0, 2, 3, 4, 5)))
    return EXIT_OK


def _mode_text(kind: str, mode: int) -> str:
    bits = {"f": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK}[kind]
    return stat.filemode(bits | mode)


def _show_entries(args: argparse.Namespace, remote: Remote, snapshot: int, entries: list[Any]) -> int:
    if args.json:
        _print_json(
            {
                "target": remote.target,
                "path": remote.path,
                "snapshot": snapshot,
                "entries": [
                    {
                        **json_name("path", e.path), "kind": e.kind, "mode": e.mode, "size": e.size,
                        "mtime": e.mtime_ns / 1e9, "mtime_ns": e.mtime_ns,
                        **(json_name("link", _link_of(e)) if e.kind == "l" else {"link": None}),
                    }
                    for e in entries
                ],
            }
        )
    elif not args.quiet:
        rows = []
        for e in entries:
            if e.path == "" and e.kind == "d":
                continue  # the listed directory itself
            name = shown(e.path or remote.path.rsplit("/", 1)[-1])
            if e.kind == "d":
                name += "/"
            elif e.kind == "l":
                name += f" -> {shown(_link_of(e))}"
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.mtime_ns / 1e9))
            rows.append([_mode_text(e.kind, e.mode), str(e.size) if e.kind == "f" else "-", stamp, name])
        sys.stdout.write(f"snapshot {snapshot}\n" + _table(rows, right=(1,)))
    return EXIT_OK


def _link_of(e: Any) -> str:
    """A listed symlink's exact target (its bytes are in its metadata record when they are not UTF-8)."""
    try:
        return exact_link(e.link, metadata.decode(e.meta) if e.meta else None)
    except metadata.BadExtra:
        return str(e.link)


def _show_versions(args: argparse.Namespace, remote: Remote, path: str, records: list[Any]) -> int:
    if args.json:
        _print_json(
            {
                "target": remote.target,
                "path": path,
                "versions": [
                    {
                        "snapshot": v.snapshot, "until": v.until, "time": v.time, "kind": v.kind, "size": v.size,
                        "mode": v.mode, "mtime_ns": v.mtime_ns,
                    }
                    for v in records
                ],
            }
        )
    elif not args.quiet:
        rows = [["SNAPSHOT", "TIME", "SIZE", "MODIFIED", "UNTIL"]] + [
            [
                str(v.snapshot),
                format_time(v.time),
                str(v.size) if v.kind == "f" else v.kind,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.mtime_ns / 1e9)),
                "current" if v.until is None else f"snapshot {v.until}",
            ]
            for v in records
        ]
        sys.stdout.write(_table(rows, right=(0, 2)))
    return EXIT_OK


def _show_deleted(args: argparse.Namespace, remote: Remote, records: list[Any]) -> int:
    if args.json:
        _print_json(
            {
                "target": remote.target,
                "path": remote.path,
                "deleted": [
                    {
                        **json_name("path", d.path), "kind": d.kind, "size": d.size, "mtime_ns": d.mtime_ns,
                        "last_snapshot": d.last_snapshot, "deleted_in": d.deleted_in, "deleted_time": d.deleted_time,
                    }
                    for d in records
                ],
            }
        )
    elif not args.quiet:
        rows = [["PATH", "SIZE", "DELETED", "RESTORE FROM"]] + [
            [
                shown(d.path) + ("/" if d.kind == "d" else ""),
                str(d.size) if d.kind == "f" else "-",
                f"{format_time(d.deleted_time)} (snapshot {d.deleted_in})",
                f"--snapshot {d.last_snapshot}",
            ]
            for d in records
        ]
        sys.stdout.write(_table(rows, right=(1,)) if records else "nothing deleted is held by a kept snapshot\n")
    return EXIT_OK


# --- neo-prune ---------------------------------------------------------------------------------------------


def prune_main(argv: Sequence[str] | None = None) -> int:
    parser = _prune_parser()
    args, remote = _parse(parser, argv)
    if remote.path:
        parser.error(f"prune applies to a whole target: give HOST/{remote.target}, not a sub-path")
    policy = {
        "keep_last": args.keep_last,
        "keep_hourly": args.keep_hourly,
        "keep_daily": args.keep_daily,
        "keep_weekly": args.keep_weekly,
        "keep_monthly": args.keep_monthly,
        "keep_within": args.keep_within,
        "keep_yearly": args.keep_yearly,
    }
    if not any(policy.values()) and not args.keep_tag:
        parser.error("give at least one --keep-* rule (prune never removes every snapshot)")
    try:
        keep_tags = tag_filter(args.keep_tag)
    except LabelError as e:
        parser.error(str(e))

    async def body(client: Client) -> int:
        rules: dict[str, Any] = dict(policy)
        if not keep_tags:
            reply = await client.prune(remote.target, rules, args.dry_run)
        else:
            # The tags are read here (sealed in an encrypted target): the server is told which snapshots to keep.
            target = await _open_snapshotted(client, args, remote)
            keys = target.crypt.keys if target.crypt is not None else None
            labelled = read_labels(await target.snapshots(named=False), keys)
            for x in labelled:
                if x.unreadable:
                    sys.stderr.write(f"neo-prune: warning: snapshot {x.record.id} is kept: its tags cannot be read "
                                     f"({x.unreadable})\n")  # fmt: skip
            rules["keep_tagged"], rules["tagged_through"] = keep_tagged(labelled, keep_tags)
            if len(rules["keep_tagged"]) > limits.MAX_PRUNE_LISTED:
                raise stash.StashError(
                    f"--keep-tag matches {len(rules['keep_tagged'])} snapshots; one prune can keep at most "
                    f"{limits.MAX_PRUNE_LISTED} by tag: prune with other rules first"
                )
            reply = await target.prune(rules, args.dry_run)
        reclaimed = max(0, reply.disk_before - reply.disk_after)
        if args.json:
            _print_json(
                {
                    "target": remote.target, "dry_run": reply.dry_run, "kept": reply.kept, "removed": reply.removed,
                    "snapshots": [
                        {"id": d.id, "time": d.time, "keep": d.keep, "reasons": d.reasons} for d in reply.decisions
                    ],
                    "truncated": reply.truncated, "chunks_removed": reply.chunks_removed,
                    "bytes_removed": reply.bytes_removed, "disk_before": reply.disk_before,
                    "disk_after": reply.disk_after, "reclaimed_bytes": reclaimed,
                }
            )
        elif not args.quiet:
            rows = [
                ["keep" if d.keep else "remove", str(d.id), format_time(d.time), ",".join(d.reasons)]
                for d in reply.decisions
            ]
            sys.stdout.write(_table(rows, right=(1,)))
            if reply.dry_run:
                sys.stdout.write(f"dry run: would remove {reply.removed} snapshot(s) and keep {reply.kept}\n")
            else:
                sys.stdout.write(
                    f"removed {reply.removed} snapshot(s), kept {reply.kept}; reclaimed {human_size(reclaimed)} "
                    f"({reply.chunks_removed} chunks no longer referenced)\n"
                )
        return EXIT_OK

    return _run("neo-prune", args, remote, body)


# --- neo-check ---------------------------------------------------------------------------------------------


def check_main(argv: Sequence[str] | None = None) -> int:
    parser = _check_parser()
    args, remote = _parse(parser, argv)

    async def body(client: Client) -> int:
        from neotwist.client.progress import Progress

        show = (not (args.quiet or args.json)) if args.progress is None else args.progress
        bars: list[Progress] = []  # made at the first progress report: after the open (and any passphrase prompt)
        seen = [0]

        def on_progress(done: int, total: int) -> None:
            if not bars:
                bars.append(Progress(show, "checked", count_files=False))
            bars[0].total_bytes(total)
            bars[0].bytes(done - seen[0])
            seen[0] = done

        try:
            # damaged files of an encrypted target are named from the snapshots that hold them, with its key
            report = await client.check(
                remote.target, remote.path, args.verify_data, args.repair, on_progress, access(args, remote)
            )
        finally:
            for bar in bars:
                bar.close()
        if args.json:
            _print_json(
                {
                    "target": remote.target, "path": remote.path, "ok": report.ok,
                    "chunks_checked": report.chunks_checked, "bytes_checked": report.bytes_checked,
                    "damaged_chunks": report.damaged_chunks,
                    "damaged_files": [
                        {"path": f.path, "snapshots": f.snapshots, "chunk": f.chunk, "why": f.why, "marked": f.marked}
                        for f in report.files
                    ],
                    "damaged_snapshots": report.snapshots, "problems": report.problems,
                    "truncated": report.truncated, "verified_data": report.verified_data,
                    "repair": report.repaired, "marked_chunks": report.marked_chunks,
                    "lost_chunks": report.lost_chunks,
                }
            )
        else:
            out = sys.stdout if report.ok else sys.stderr
            for f in report.files:
                if f.marked:
                    out.write(
                        f"lost: {shown(f.path)} in snapshot(s) {_ids(f.snapshots)}: {f.why}; "
                        "push the intact file again to heal it\n"
                    )
                else:
                    out.write(f"damaged: {shown(f.path)} in snapshot(s) {_ids(f.snapshots)}: {f.why}\n")
            for problem in report.problems:
                out.write(f"problem: {problem}\n")
            if report.truncated:
                out.write("(more damage than one report holds; neo-admin check on the server lists it all)\n")
            if not args.quiet or not report.ok:
                what = "and verified " if report.verified_data else ""
                verdict = "no damage found" if report.ok else (
                    f"DAMAGED: {report.damaged_chunks} chunk(s), {len(report.files)} file version(s), "
                    f"snapshot(s) {_ids(report.snapshots)}"
                )
                out.write(
                    f"checked {what}{report.chunks_checked} chunks ({human_size(report.bytes_checked)}): {verdict}\n"
                )
            if report.repaired:
                out.write(
                    f"repair: marked {report.marked_chunks} chunk(s) damaged; {report.lost_chunks} chunk(s) lost until "
                    "a push sends them again\n"
                )
            elif report.lost_chunks:
                out.write(f"{report.lost_chunks} chunk(s) lost until a push sends them again\n")
        return EXIT_OK if report.ok else EXIT_FAILED

    return _run("neo-check", args, remote, body)


def _ids(ids: Sequence[int]) -> str:
    return ", ".join(str(i) for i in ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")


ls = entry_point("neo-ls", lambda: ls_main(None))
prune = entry_point("neo-prune", lambda: prune_main(None))
check = entry_point("neo-check", lambda: check_main(None))

__all__ = ["EXIT_USAGE", "check", "check_main", "ls", "ls_main", "prune", "prune_main"]
