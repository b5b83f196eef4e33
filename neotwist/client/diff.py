"""neo-diff: what changed between two snapshots of a target (or of a sub-path of it).

Both snapshots are listed (with their chunk ids: equal ids are equal content, in an encrypted target too,
whose ids are keyed) and compared path by path. Each path is one of:

- ``+`` added (only in the second), ``-`` removed (only in the first);
- ``M`` changed content (other chunks, or another link target);
- ``T`` changed type (a file became a directory, a link, ...);
- ``U`` metadata only: mode, owner, mtime, xattrs (and ACLs). A directory's mtime follows what is added to or
  removed from it, which is listed already, so it alone does not make a directory ``U``.

Nothing is fetched but the two listings: the sizes shown are the files' sizes.
"""

from __future__ import annotations

import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from neotwist.client.browsecli import parser as browse_parser
from neotwist.client.browsecli import run, split_remote
from neotwist.client.clibase import EXIT_OK, Parser
from neotwist.client.history import SPEC_HELP, History, SnapSpec, Tree, extra_of, kind_of, parse_spec
from neotwist.client.metadata import EMPTY, Extra
from neotwist.client.remote import UsageError
from neotwist.client.runner import entry_point
from neotwist.client.timespec import format_time
from neotwist.display import shown, write_json
from neotwist.sizes import human_size
from neotwist.wire.messages import Entry, SnapshotRecord

_EPILOG = f"""\
SNAP_A and SNAP_B are each an {SPEC_HELP}
(2026-11-23T14:30, '3d ago', @EPOCH). A REMOTE with a sub-path compares only what is below it.

Each changed path is printed once: "+" added, "-" removed, "M" content changed, "T" type changed, "U" only
metadata changed (mode, owner, mtime, xattrs and ACLs; what changed is named). Sizes are the files' sizes;
the last line sums them up. Only the two listings are read, never file contents. --json prints "from" and
"to" ({{id, time}}), "added" and "removed" ({{path, kind, size}}), "changed" and "metadata" ({{path, kind,
size_before, size_after, changes: {{what: [before, after]}}}}), "summary" and "not_compared".

examples:
  neo-diff alice@nas/docs 12 15                  what changed from snapshot 12 to snapshot 15
  neo-diff alice@nas/docs latest~1 latest        what the last push changed
  neo-diff alice@nas/docs/reports '7d ago' latest      below reports/, over the last week
  neo-diff --no-metadata alice@nas/docs 3 4      content changes only
  neo-diff --json alice@nas/docs 3 4 | jq '.changed[].path'
"""


def _parser() -> Parser:
    p = browse_parser(
        "neo-diff",
        "neo-diff [options] REMOTE SNAP_A SNAP_B",
        "Show what was added, removed or changed (content or metadata) between two snapshots of a target.",
        _EPILOG,
    )
    p.add_argument_group("what to show").add_argument(
        "--no-metadata", action="store_true", help="leave out paths whose metadata alone changed (U)"
    )
    return p


# --- comparing ----------------------------------------------------------------------------------------------


@dataclass
class Change:
    """One path that differs: ``status`` is '+', '-', 'M', 'T' or 'U'."""

    status: str
    path: str
    kind: str  # of the newer version ('f', 'd', 'l', 'p', 'c', 'b'); of the removed one for '-'
    size_before: int | None
    size_after: int | None
    old_kind: str | None = None  # 'T' only
    changes: dict[str, list[Any]] = field(default_factory=dict)  # 'U' (and 'M'): what changed, [before, after]


def _meta_of(e: Entry, x: Extra) -> dict[str, Any]:
    return {
        "mode": e.mode, "uid": x.uid, "gid": x.gid, "user": x.user or None, "group": x.group or None,
        "mtime_ns": e.mtime_ns, "xattrs": sorted(name for name, _ in x.xattrs),
    }  # fmt: skip


def _meta_changes(a: Entry, b: Entry, xa: Extra, xb: Extra, kind: str) -> dict[str, list[Any]]:
    ma, mb = _meta_of(a, xa), _meta_of(b, xb)
    out = {k: [ma[k], mb[k]] for k in ma if ma[k] != mb[k]}
    if "xattrs" not in out and dict(xa.xattrs) != dict(xb.xattrs):
        out["xattrs"] = [ma["xattrs"], mb["xattrs"]]  # same names, other values
    if kind == "d":
        out.pop("mtime_ns", None)  # follows what was added and removed, which is listed
    if (xa.special or xb.special) and xa.rdev != xb.rdev:
        out["rdev"] = [xa.rdev, xb.rdev]
    return out


def compare(before: Tree, after: Tree, metadata: bool = True) -> list[Change]:
    """Every path that differs between ``before`` and ``after``, in path order."""
    out: list[Change] = []
    a, b = before.entries, after.entries
    for path in sorted(a.keys() | b.keys()):
        ea, eb = a.get(path), b.get(path)
        if ea is None and eb is not None:
            out.append(Change("+", path, kind_of(eb), None, _size(eb)))
            continue
        if eb is None and ea is not None:
            out.append(Change("-", path, kind_of(ea), _size(ea), None))
            continue
        assert ea is not None and eb is not None
        xa, xb = extra_of(ea) or EMPTY, extra_of(eb) or EMPTY
        ka, kb = kind_of(ea, xa), kind_of(eb, xb)
        if ka != kb:
            out.append(Change("T", path, kb, _size(ea), _size(eb), old_kind=ka))
            continue
        meta = _meta_changes(ea, eb, xa, xb, kb)
        if (kb == "f" and (ea.chunks != eb.chunks or ea.size != eb.size)) or (kb == "l" and ea.link != eb.link):
            if kb == "l":
                meta["link"] = [ea.link, eb.link]
            out.append(Change("M", path, kb, _size(ea), _size(eb), changes=meta))
        elif meta and metadata:
            out.append(Change("U", path, kb, _size(ea), _size(eb), changes=meta))
    return out


def _size(e: Entry) -> int | None:
    return e.size if e.kind == "f" else None


@dataclass
class Totals:
    added: int = 0
    removed: int = 0
    changed: int = 0
    type_changed: int = 0
    metadata: int = 0
    bytes_added: int = 0  # sizes of added files, and growth of changed ones
    bytes_removed: int = 0  # sizes of removed files, and shrinkage of changed ones


def totals(changes: list[Change]) -> Totals:
    t = Totals()
    for c in changes:
        before, after = c.size_before or 0, c.size_after or 0
        if c.status == "+":
            t.added += 1
        elif c.status == "-":
            t.removed += 1
        elif c.status == "M":
            t.changed += 1
        elif c.status == "T":
            t.type_changed += 1
        else:
            t.metadata += 1
        if after > before:
            t.bytes_added += after - before
        else:
            t.bytes_removed += before - after
    return t


# --- the command ------------------------------------------------------------------------------------------------


def diff_main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    remote, rest = split_remote(p, args, ["SNAP_A", "SNAP_B"])
    try:
        now = time.time()
        specs = (parse_spec(rest[0], now), parse_spec(rest[1], now))
    except UsageError as e:
        p.error(str(e))

    async def body(history: History) -> int:
        return _show(args, remote, *await _compare(history, specs, not args.no_metadata))

    return run("neo-diff", args, remote, body)


async def _compare(
    history: History, specs: tuple[SnapSpec, SnapSpec], metadata: bool
) -> tuple[SnapshotRecord, SnapshotRecord, list[Change], list[str]]:
    first, second = await history.resolve(specs[0]), await history.resolve(specs[1])
    before = await history.tree(first.id)
    after = before if second.id == first.id else await history.tree(second.id)
    errors = before.errors + (after.errors if after is not before else [])
    return first, second, compare(before, after, metadata), errors


_KIND_WORD = {"f": "file", "d": "directory", "l": "symlink", "p": "FIFO", "c": "character device", "b": "block device"}


def _show(
    args: Any, remote: Any, first: SnapshotRecord, second: SnapshotRecord, changes: list[Change], errors: list[str]
) -> int:
    t = totals(changes)
    if args.json:
        groups: dict[str, list[dict[str, Any]]] = {"added": [], "removed": [], "changed": [], "metadata": []}
        for c in changes:
            item: dict[str, Any] = {"path": c.path, "kind": c.kind}
            if c.status == "+":
                item["size"] = c.size_after
                groups["added"].append(item)
            elif c.status == "-":
                item["size"] = c.size_before
                groups["removed"].append(item)
            else:
                item.update(size_before=c.size_before, size_after=c.size_after, changes=c.changes)
                if c.status == "T":
                    item["old_kind"] = c.old_kind
                groups["changed" if c.status in "MT" else "metadata"].append(item)
        write_json(
            {
                "target": remote.target, "path": remote.path,
                "from": {"id": first.id, "time": first.time}, "to": {"id": second.id, "time": second.time},
                **groups, "summary": t.__dict__, "not_compared": errors,
            }
        )  # fmt: skip
    elif not args.quiet:
        out = [
            f"comparing snapshot {first.id} ({format_time(first.time)}) with {second.id} ({format_time(second.time)})"
        ]
        for c in changes:
            out.append(_line(c))
        out.append(
            f"{t.added} added, {t.removed} removed, {t.changed + t.type_changed} changed, {t.metadata} metadata only; "
            f"+{human_size(t.bytes_added)} -{human_size(t.bytes_removed)}"
        )
        sys.stdout.write("\n".join(out) + "\n")
    for text in errors:
        sys.stderr.write(f"neo-diff: not compared: {text}\n")
    return EXIT_OK if not errors else 1


def _line(c: Change) -> str:
    name = shown(c.path) or "."
    if c.kind == "d":
        name += "/"
    if c.status in "+-":
        size = c.size_after if c.status == "+" else c.size_before
        return f"{c.status} {_size_text(size):>10}  {name}"
    if c.status == "T":
        return f"T {_size_text(c.size_after):>10}  {name}  ({_KIND_WORD[c.old_kind or '?']} -> {_KIND_WORD[c.kind]})"
    what = ", ".join(_describe(k, v) for k, v in c.changes.items() if c.status == "U" or k != "mtime_ns")
    if c.status == "M":  # (its mtime changed with its content: --json has it)
        sizes = f"{_size_text(c.size_before)} -> {_size_text(c.size_after)}" if c.kind == "f" else ""
        return f"M {_size_text(c.size_after):>10}  {name}" + (
            f"  ({sizes}{'; ' + what if what else ''})" if sizes or what else ""
        )
    return f"U {'':>10}  {name}  ({what})"


def _size_text(size: int | None) -> str:
    return "-" if size is None else human_size(size)


def _describe(key: str, pair: list[Any]) -> str:
    a, b = pair
    if key == "mode":
        return f"mode {stat.filemode(a)[1:]} -> {stat.filemode(b)[1:]}"
    if key == "mtime_ns":
        fine = _stamp(a) == _stamp(b)  # within one second: show the nanoseconds that differ
        return f"mtime {_stamp(a, fine)} -> {_stamp(b, fine)}"
    if key == "xattrs":
        return "xattrs " + (
            f"{','.join(map(shown, a)) or '-'} -> {','.join(map(shown, b)) or '-'}" if a != b else "values"
        )
    if key == "link":
        return f"link {shown(a)} -> {shown(b)}"
    if key in ("user", "group"):
        return f"{key} {shown(a or '-')} -> {shown(b or '-')}"
    return f"{key} {a} -> {b}"


def _stamp(ns: int, fine: bool = False) -> str:
    seconds, part = divmod(ns, 10**9)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) + (f".{part:09d}" if fine else "")


diff = entry_point("neo-diff", lambda: diff_main(None))

__all__ = ["Change", "compare", "diff", "diff_main", "totals"]
