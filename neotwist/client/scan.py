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
from neotwist.wire import limits


@dataclass(slots=True)
class ScanRecord:
    """One item found by the walk. ``path`` is relative to the root, '/'-separated ('' = the root)."""

    path: str
    kind: str  # "f" file, "d" directory, "l" symlink
    mode: int  # permission bits only (stat.S_IMODE)
    mtime_ns: int
    size: int
    inode: int
    ctime_ns: int
    link: str = ""


@dataclass
class ScanStats:
    """What the walk skipped, for the summary (and why, for --debug)."""

    skipped: int = 0
    filtered: int = 0
    warnings: list[str] = field(default_factory=list)

    def skip(self, why: str) -> None:
        self.skipped += 1
        if len(self.warnings) < 1000:
            self.warnings.append(why)


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


def scan(
    root: str,
    filt: Filter | None = None,
    stats: ScanStats | None = None,
    warn: Callable[[str], None] | None = None,
) -> Iterator[ScanRecord]:
    """Yield a record for ``root`` itself and every item under it that the filter takes.

    ``root`` must be a directory (a symlink to one is accepted for the root only, as rsync does with a
    trailing slash). Raises OSError if the root cannot be read; problems below it are counted in ``stats``.
    """
    if stats is None:
        stats = ScanStats()
    filt = None if filt is None or filt.empty else filt

    def skip(why: str) -> None:
        stats.skip(why)
        if warn is not None:
            warn(why)

    st = os.stat(root)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"{root} is not a directory")
    yield ScanRecord("", "d", stat.S_IMODE(st.st_mode), st.st_mtime_ns, 0, st.st_ino, st.st_ctime_ns)

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
            skip(f"cannot read directory {directory}: {e.strerror}")
            continue
        subdirs: list[tuple[str, str]] = []
        for entry in entries:
            name = entry.name
            rel = prefix + name
            if not _name_ok(name) or len(rel.encode("utf-8")) > max_path:
                skip(f"skipping {entry.path!r}: name cannot be stored (not UTF-8, backslash or too long)")
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as e:
                skip(f"cannot stat {entry.path}: {e.strerror}")
                continue
            m = st.st_mode
            if S_ISDIR(m):
                if filt is not None and not filt.take_dir(rel, name):
                    stats.filtered += 1
                    continue
                yield ScanRecord(rel, "d", S_IMODE(m), st.st_mtime_ns, 0, st.st_ino, st.st_ctime_ns)
                subdirs.append((entry.path, rel + "/"))
                continue
            if filt is not None and not filt.take_file(rel, name):
                stats.filtered += 1
                continue
            if S_ISREG(m):
                yield ScanRecord(rel, "f", S_IMODE(m), st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
            elif S_ISLNK(m):
                try:
                    target = os.readlink(entry.path)
                except OSError as e:
                    skip(f"cannot read symlink {entry.path}: {e.strerror}")
                    continue
                if not _link_ok(target):
                    skip(f"skipping symlink {entry.path!r}: its target cannot be stored")
                    continue
                yield ScanRecord(rel, "l", S_IMODE(m), st.st_mtime_ns, 0, st.st_ino, st.st_ctime_ns, target)
            else:
                skip(f"skipping special file {entry.path} (socket, fifo or device)")
        # Push in reverse so the stack pops them in name order.
        stack.extend(reversed(subdirs))
