"""Walk a local directory tree for a push: one ``lstat`` per item, filters applied while walking.

The walk uses ``os.scandir`` (names and types come from one ``getdents`` per directory), never follows a
symlink, never descends a directory the filter rejects and never opens a file: it only reports what is there.
Items that cannot be pushed are counted and skipped with a warning, not fatal: sockets, fifos and devices,
names that are not UTF-8 or that the protocol refuses (backslash, over 255 bytes), unreadable directories.

Records come out parents first (pre-order), the root ('' path) first of all, so a consumer can batch them in
order and a pull recreates parents before children.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from neotwist.client.filters import Filter
from neotwist.client.metadata import Capture
from neotwist.client.problems import MAX_KEPT, Problem, shown
from neotwist.wire import limits


@dataclass(slots=True)
class ScanRecord:
    """One item found by the walk. ``path`` is relative to the root, '/'-separated ('' = the root)."""

    path: str
    kind: str  # "f" file, "d" directory, "l" symlink, "s" FIFO or device (stored as an empty "f" + its extra)
    mode: int  # permission bits only (stat.S_IMODE)
    mtime_ns: int
    size: int
    inode: int
    ctime_ns: int
    link: str = ""
    extra: bytes = b""  # owner, xattrs, hard link, special (an encoded neotwist.client.metadata.Extra)


@dataclass
class ScanStats:
    """What the walk skipped, for the summary: every skipped item is named with its reason."""

    skipped: int = 0
    filtered: int = 0
    warnings: list[Problem] = field(default_factory=list)
    fresh: list[Problem] = field(default_factory=list)  # not yet taken by :meth:`take`

    def skip(self, path: str, reason: str) -> None:
        self.skipped += 1
        problem = Problem(shown(path), reason)
        if len(self.warnings) < MAX_KEPT:
            self.warnings.append(problem)
        self.fresh.append(problem)

    def note(self, path: str, reason: str) -> None:
        """A problem with an item that is stored nonetheless (some of its xattrs, say)."""
        problem = Problem(shown(path), reason)
        if len(self.warnings) < MAX_KEPT:
            self.warnings.append(problem)
        self.fresh.append(problem)

    def take(self) -> list[Problem]:
        """The problems found since the last call (to print them as the walk goes)."""
        out, self.fresh = self.fresh, []
        return out


def _name_ok(name: str) -> bool:
    """Can ``name`` be sent as a path component? (UTF-8, no backslash, within MAX_NAME.)"""
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return len(encoded) <= limits.MAX_NAME and "\\" not in name


def _link_ok(target: str) -> bool:
    """Can a symlink's target text be sent? (UTF-8, within MAX_LINK; it is data, so anything else goes.)"""
    try:
        return len(target.encode("utf-8")) <= limits.MAX_LINK
    except UnicodeEncodeError:
        return False


def _name_problem(name: str, rel: str) -> str:
    """Why an item's name or path cannot be stored."""
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "not stored: its name is not UTF-8"
    if len(encoded) > limits.MAX_NAME:
        return f"not stored: its name is over {limits.MAX_NAME} bytes"
    if "\\" in name:
        return "not stored: its name contains a backslash"
    return f"not stored: its path is over {limits.MAX_PATH} bytes"


def _special_kind(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"


def scan(
    root: str,
    filt: Filter | None = None,
    stats: ScanStats | None = None,
    warn: Callable[[str], None] | None = None,
    capture: Capture | None = None,
) -> Iterator[ScanRecord]:
    """Yield a record for ``root`` itself and every item under it that the filter takes.

    ``root`` must be a directory (a symlink to one is accepted for the root only, as rsync does with a
    trailing slash). Raises OSError if the root cannot be read; problems below it are counted in ``stats``.
    """
    if stats is None:
        stats = ScanStats()
    rules = filt.dirs if filt is not None and filt.dirs is not None and not filt.dirs.empty else None
    filt = None if filt is None or filt.empty else filt

    def skip(path: str, reason: str) -> None:
        stats.skip(path, reason)
        if warn is not None:
            warn(f"{shown(path)}: {reason}")

    def more(path: str, rel: str, st: os.stat_result, kind: str) -> bytes:
        if capture is None:
            return b""
        data, problem = capture.record(path, rel, st, kind)
        if problem is not None:
            stats.note(path, problem)
        return data

    st = root_st = os.stat(root)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"{root} is not a directory")
    yield ScanRecord(
        "", "d", stat.S_IMODE(st.st_mode), st.st_mtime_ns, 0, st.st_ino, st.st_ctime_ns, "", more(root, "", st, "d")
    )

    # Depth-first with an explicit stack of (absolute dir, relative prefix) so deep trees need no recursion.
    stack: list[tuple[str, str]] = [(root, "")]
    S_ISDIR, S_ISREG, S_ISLNK, S_IMODE = stat.S_ISDIR, stat.S_ISREG, stat.S_ISLNK, stat.S_IMODE
    max_path = limits.MAX_PATH
    while stack:
        directory, prefix = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            skip(directory, f"directory not read ({e.strerror}); nothing under it is stored")
            continue
        if rules is not None:  # a tagged directory keeps only its tags
            entries, left_out = rules.select(entries, directory)
            stats.filtered += left_out
        subdirs: list[tuple[str, str]] = []
        for entry in entries:
            name = entry.name
            rel = prefix + name
            if not _name_ok(name) or len(rel.encode("utf-8")) > max_path:
                skip(entry.path, _name_problem(name, rel))
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as e:
                skip(entry.path, f"not stored: cannot stat it ({e.strerror})")
                continue
            m = st.st_mode
            if S_ISDIR(m):
                if filt is not None and not filt.take_dir(rel, name):
                    stats.filtered += 1
                    continue
                yield ScanRecord(
                    rel, "d", S_IMODE(m), st.st_mtime_ns, 0, st.st_ino, st.st_ctime_ns, "",
                    more(entry.path, rel, st, "d"),
                )  # fmt: skip
                if rules is None or rules.descend(st, root_st):  # another file system: kept empty
                    subdirs.append((entry.path, rel + "/"))
                continue
            if filt is not None and not filt.take_file(rel, name):
                stats.filtered += 1
                continue
            if S_ISREG(m):
                yield ScanRecord(
                    rel, "f", S_IMODE(m), st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns, "",
                    more(entry.path, rel, st, "f"),
                )  # fmt: skip
            elif S_ISLNK(m):
                try:
                    target = os.readlink(entry.path)
                except OSError as e:
                    skip(entry.path, f"symlink not stored: cannot read it ({e.strerror})")
                    continue
                if not _link_ok(target):
                    skip(entry.path, "symlink not stored: its target is not UTF-8 or over 4096 bytes")
                    continue
                yield ScanRecord(
                    rel, "l", S_IMODE(m), st.st_mtime_ns, 0, st.st_ino, st.st_ctime_ns, target,
                    more(entry.path, rel, st, "l"),
                )  # fmt: skip
            elif capture is not None and (stat.S_ISFIFO(m) or stat.S_ISCHR(m) or stat.S_ISBLK(m)):
                yield ScanRecord(
                    rel, "s", S_IMODE(m), st.st_mtime_ns, 0, st.st_ino, st.st_ctime_ns, "",
                    more(entry.path, rel, st, "s"),
                )  # fmt: skip
            else:
                skip(entry.path, f"{_special_kind(m)} not stored")
        # Push in reverse so the stack pops them in name order.
        stack.extend(reversed(subdirs))
