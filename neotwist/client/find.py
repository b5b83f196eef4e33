"""neo-find: which snapshots hold paths matching a pattern, and in which versions.

Each snapshot searched is listed once (one ``list`` request, decrypted for an encrypted target: the server
cannot match names it cannot read) and only its matches are kept, so memory follows the matches, not the
history. The versions of a path are told apart by content (chunk ids), size, mtime, mode and kind; each is
shown with the snapshots that hold it. ``--from``, ``--to`` and ``--last`` search fewer snapshots.

Patterns are shell globs (``*``, ``?``, ``[abc]``). One without a '/' is matched against each entry's name,
at any depth (``*.ods``); one with a '/' against the whole path below REMOTE, where ``**`` spans any number
of directories (``reports/**/q?.ods``, ``/etc/hosts``). A trailing '/' matches directories only.
"""

from __future__ import annotations

import functools
import stat
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from neotwist.client.browsecli import parser as browse_parser
from neotwist.client.browsecli import run, split_remote
from neotwist.client.clibase import EXIT_OK, Parser, default_remote
from neotwist.client.history import SPEC_HELP, BrowseError, History, SnapSpec, kind_of, parse_spec
from neotwist.client.labels import tag_filter
from neotwist.client.remote import UsageError
from neotwist.client.runner import entry_point
from neotwist.client.timespec import format_time
from neotwist.display import raw_stderr, shown, write_json
from neotwist.sizes import human_size
from neotwist.wire.label import LabelError
from neotwist.wire.messages import Entry, SnapshotRecord

_EPILOG = f"""\
PATTERN is a shell glob: without a '/' it matches names at any depth ('*.ods', 'q[34]*'); with a '/' it
matches the whole path below REMOTE ('reports/*.ods', '/etc/hosts'), '**' spanning directories
('src/**/test_*.py'). A trailing '/' matches directories only. Quote it, so the shell does not expand it.
With NEO_REPOSITORY set, every argument is a PATTERN.
SNAPSHOT is an {SPEC_HELP}.

Each match is printed with its versions (size, mtime) and the snapshots that hold each; restore one with
neo-pull --snapshot ID REMOTE/PATH DEST or neo-cat --snapshot ID REMOTE PATH. Every snapshot searched is
listed once: --from, --to and --last search fewer. --json prints "snapshots_searched" and "matches": [{{path,
versions: [{{kind, size, mtime_ns, mode, link, snapshots: [ids], first_time, last_time}}]}}].

examples:
  neo-find alice@nas/docs '*.ods'                     every .ods file, in every kept snapshot
  neo-find -I alice@nas/docs 'q3*'                    ignoring case
  neo-find alice@nas/docs 'reports/**/q?.ods'         a path pattern
  neo-find --last 10 alice@nas/home '.bashrc'         only the 10 newest snapshots
  neo-find --from '2026-11-01' --to latest~1 alice@nas/docs budget.ods
  neo-find --tag db alice@nas/backups '*.sql.zst'     only snapshots tagged "db"
  neo-find --json alice@nas/docs '*.pdf' | jq -r '.matches[].path'
"""


def _parser() -> Parser:
    p = browse_parser(
        "neo-find",
        "neo-find [options] REMOTE PATTERN [PATTERN ...]",
        "Find files and directories matching a pattern in every snapshot of a target, with their versions.",
        _EPILOG,
    )
    g = p.add_argument_group("what to search")
    g.add_argument("-I", "--ignore-case", action="store_true", help="match without regard to case")
    g.add_argument("--type", choices=["f", "d", "l"], help="only files (f), directories (d) or symlinks (l)")
    g.add_argument("--from", dest="first", metavar="SNAPSHOT", help="search no snapshot older than this one")
    g.add_argument("--to", dest="last_spec", metavar="SNAPSHOT", help="search no snapshot newer than this one")
    g.add_argument("--last", type=int, metavar="N", help="search only the N newest snapshots (of the range)")
    g.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="TAG[,TAG]",
        help="search only snapshots that have every tag of one --tag (repeatable, as neo-ls --tag)",
    )
    return p


# --- matching -----------------------------------------------------------------------------------------------


def compile_pattern(pattern: str, ignore_case: bool = False) -> Callable[[str, bool], bool]:
    """A test ``match(path, is_dir)`` for one PATTERN (see the module docstring); UsageError if it is empty."""
    text = pattern.strip()
    dirs_only = text.endswith("/") and text.strip("/") != ""
    body = text.strip("/")
    if not body:
        raise UsageError(f"empty pattern {pattern!r}")
    fold: Callable[[str], str] = str.casefold if ignore_case else (lambda s: s)
    body = fold(body)
    if "/" not in body and not text.startswith("/"):

        def by_name(path: str, is_dir: bool) -> bool:
            return (is_dir or not dirs_only) and fnmatchcase(fold(path.rpartition("/")[2]), body)

        return by_name
    parts = tuple(body.split("/"))

    def by_path(path: str, is_dir: bool) -> bool:
        return (is_dir or not dirs_only) and _match_parts(parts, tuple(fold(path).split("/")))

    return by_path


def _match_parts(pattern: tuple[str, ...], names: tuple[str, ...]) -> bool:
    """Whether path components ``names`` match glob components ``pattern``, where '**' matches any number of
    components (none included)."""

    @functools.cache
    def at(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(names)
        if pattern[i] == "**":
            return at(i + 1, j) or (j < len(names) and at(i, j + 1))
        return j < len(names) and fnmatchcase(names[j], pattern[i]) and at(i + 1, j + 1)

    return at(0, 0)


# --- searching ----------------------------------------------------------------------------------------------


@dataclass
class Version:
    """One version of a matching path and the snapshots (searched) that hold it."""

    kind: str
    size: int
    mtime_ns: int
    mode: int
    link: str
    snapshots: list[int] = field(default_factory=list)


@dataclass
class Match:
    path: str
    versions: dict[tuple[Any, ...], Version] = field(default_factory=dict)


def scan(tree_entries: dict[str, Entry], snapshot: int, tests: list[Callable[[str, bool], bool]],
         only: str | None, found: dict[str, Match]) -> None:  # fmt: skip
    """Add the matches of one snapshot's entries to ``found``."""
    for path, e in tree_entries.items():
        if not path:
            continue  # the root REMOTE names: not below it
        if only is not None and e.kind != only:
            continue
        is_dir = e.kind == "d"
        if not any(t(path, is_dir) for t in tests):
            continue
        kind = kind_of(e)
        key = (kind, e.size, e.mtime_ns, e.mode, e.chunks, e.link)
        m = found.get(path)
        if m is None:
            m = found[path] = Match(path)
        v = m.versions.get(key)
        if v is None:
            v = m.versions[key] = Version(kind, e.size, e.mtime_ns, e.mode, e.link)
        v.snapshots.append(snapshot)


def select(records: list[SnapshotRecord], first: SnapSpec | None, last: SnapSpec | None,
           count: int | None) -> list[SnapshotRecord]:  # fmt: skip
    """The snapshots to search: from ``first`` to ``last`` (both included), the ``count`` newest of them."""
    from neotwist.client.history import resolve

    lo = resolve(records, first).id if first is not None else None
    hi = resolve(records, last).id if last is not None else None
    chosen = [r for r in records if (lo is None or r.id >= lo) and (hi is None or r.id <= hi)]
    if not chosen:
        raise BrowseError(f"no snapshot is in the range --from {first.text if first else '(oldest)'} --to "
                          f"{last.text if last else '(latest)'}")  # fmt: skip
    return chosen[-count:] if count else chosen


def find_main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    given = list(args.args)
    # with NEO_REPOSITORY set every argument is a PATTERN ('reports/*.ods' could read as HOST/TARGET)
    least = 1 if default_remote() is not None else 2
    if len(given) < least:
        p.error("expected REMOTE PATTERN [PATTERN ...] (REMOTE is left out when NEO_REPOSITORY is set)")
    remote, _ = split_remote(p, _with(args, given[:least]), ["PATTERN"])
    patterns = given[least - 1 :]
    if args.last is not None and args.last < 1:
        p.error("--last takes a count of 1 or more")
    try:
        tests = [compile_pattern(t, args.ignore_case) for t in patterns]
        now = time.time()
        first = parse_spec(args.first, now) if args.first is not None else None
        last = parse_spec(args.last_spec, now) if args.last_spec is not None else None
        groups = tag_filter(args.tag)
    except (UsageError, LabelError) as e:
        p.error(str(e))

    async def body(history: History) -> int:
        records = await history.snapshots()
        chosen = select(records, first, last, None)
        if groups:
            chosen = history.tagged(chosen, groups)
            if not chosen:
                raise BrowseError(f"no snapshot in the range searched has the tags {' or '.join(args.tag)}")
        chosen = chosen[-args.last :] if args.last else chosen
        found: dict[str, Match] = {}
        errors: list[str] = []
        show = sys.stderr.isatty() and not (args.quiet or args.json)
        for n, record in enumerate(chosen, 1):
            if show:
                raw_stderr().write(
                    f"\rsearching snapshot {record.id} ({n}/{len(chosen)}), {len(found)} match(es)\x1b[K"
                )
                raw_stderr().flush()
            tree = await history.tree(record.id)
            errors.extend(f"snapshot {record.id}: {text}" for text in tree.errors)
            scan(tree.entries, record.id, tests, args.type, found)
            del tree
        if show:
            raw_stderr().write("\r\x1b[K")
        _show(args, remote, patterns, chosen, found)
        for text in errors:
            sys.stderr.write(f"neo-find: not searched: {text}\n")
        return EXIT_OK if not errors else 1

    return run("neo-find", args, remote, body)


def _with(args: Any, positional: list[str]) -> Any:
    import argparse

    return argparse.Namespace(**{**vars(args), "args": positional})


def _show(args: Any, remote: Any, patterns: list[str], chosen: list[SnapshotRecord], found: dict[str, Match]) -> None:
    times = {r.id: r.time for r in chosen}
    latest = chosen[-1].id
    matches = [found[p] for p in sorted(found)]
    if args.json:
        write_json(
            {
                "target": remote.target, "path": remote.path, "patterns": patterns,
                "snapshots_searched": [r.id for r in chosen],
                "matches": [
                    {
                        "path": m.path,
                        "versions": [
                            {
                                "kind": v.kind, "size": v.size, "mtime_ns": v.mtime_ns, "mtime": v.mtime_ns / 1e9,
                                "mode": v.mode, "link": v.link if v.kind == "l" else None,
                                "snapshots": v.snapshots, "first_time": times[v.snapshots[0]],
                                "last_time": times[v.snapshots[-1]],
                            }
                            for v in m.versions.values()
                        ],
                    }
                    for m in matches
                ],
            }
        )  # fmt: skip
        return
    if args.quiet:
        return
    out: list[str] = []
    for m in matches:
        first = next(iter(m.versions.values()))
        out.append(shown(m.path) + ("/" if first.kind == "d" else ""))
        for v in m.versions.values():
            size = human_size(v.size) if v.kind == "f" else "-" if v.kind != "l" else f"-> {shown(v.link)}"
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(v.mtime_ns / 1e9))
            held = _ranges(v.snapshots, [r.id for r in chosen])
            now = " (latest)" if v.snapshots[-1] == latest else ""
            mode = stat.filemode(_IFMT.get(v.kind, stat.S_IFREG) | v.mode)
            out.append(f"  {mode}  {size:>10}  {stamp}  snapshot{'s' if len(v.snapshots) > 1 else ''} {held}{now}")
    span = f"{chosen[0].id}..{chosen[-1].id}" if len(chosen) > 1 else str(chosen[0].id)
    out.append(
        f"{len(matches)} path(s) in {len(chosen)} snapshot(s) searched ({span}, "
        f"{format_time(chosen[0].time)} to {format_time(chosen[-1].time)})"
    )
    sys.stdout.write("\n".join(out) + "\n")


_IFMT = {"f": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK, "p": stat.S_IFIFO, "c": stat.S_IFCHR,
         "b": stat.S_IFBLK}  # fmt: skip


def _ranges(ids: list[int], order: list[int]) -> str:
    """'3-7, 9': runs of consecutive snapshots among those searched (``order``), not of consecutive numbers
    (pruned snapshots leave gaps in the numbering)."""
    pos = {sid: k for k, sid in enumerate(order)}
    runs: list[list[int]] = []
    for sid in ids:
        if runs and pos[sid] == pos[runs[-1][-1]] + 1:
            runs[-1].append(sid)
        else:
            runs.append([sid])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


find = entry_point("neo-find", lambda: find_main(None))

__all__ = ["compile_pattern", "find", "find_main", "scan", "select"]
