"""Walk a local directory tree for a push: one ``lstat`` per item, filters applied while walking.

The walk uses ``os.scandir`` (names and types come from one ``getdents`` per directory), never follows a
symlink, never descends a directory the filter rejects and never opens a file: it only reports what is there.
Items that cannot be pushed are counted and skipped with a warning, not fatal: sockets (and FIFOs and devices
when no metadata is captured), paths over the protocol's byte limit, unreadable directories. Names are any
bytes the kernel allows (held as ``os.fsdecode`` gives them: a byte that is not UTF-8 is a lone surrogate), and
a tree may go deeper than PATH_MAX (:mod:`neotwist.client.deep`).

Records come out parents first (pre-order), the root ('' path) first of all, so a consumer can batch them in
order and a pull recreates parents before children.
"""

from __future__ import annotations

import marshal
import operator
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

import blake3

from neotwist import paths
from neotwist.client import deep
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


@dataclass(frozen=True, slots=True)
class SameDir:
    """What :func:`walk` yields instead of the records of a directory's items when its ``same_dir`` says the
    directory is as it was: ``path`` is the directory ('' = the root), ``signature`` a digest of the name and
    ``lstat`` values (type and mode, size, mtime, inode, ctime, device) of every item the filters took, and the
    counts are of those items (``files`` and ``size``: its regular files). The directory's own record comes
    from its parent as usual, and its subdirectories are walked as usual. ``newest_ns`` is the latest mtime or
    ctime among the items: an item changed within the clock's tick may change again and keep every ``lstat``
    value (a symlink made again, say), so a directory with one that recent is not recorded as it is."""

    path: str
    signature: bytes
    items: int
    files: int
    size: int
    newest_ns: int = 0


SIGNATURE_VERSION = 1
"""Part of every directory signature: raised when what an item's records are made of changes, so that a
directory is not taken as it was by a client that would describe it otherwise."""


def _summarize(path: str, kept: list[tuple[os.DirEntry[str], os.stat_result]]) -> SameDir | None:
    """The signature of a directory's items (see :class:`SameDir`); None when it has an item with more than
    one name (a hard link's record depends on where the walk met its inode first, not on the item alone)."""
    sig: list[object] = [SIGNATURE_VERSION]
    add = sig.append
    files = size = newest = 0
    S_ISREG, S_ISDIR = stat.S_ISREG, stat.S_ISDIR
    for entry, st in kept:
        m = st.st_mode
        if S_ISREG(m):
            files += 1
            size += st.st_size
        if st.st_nlink > 1 and not S_ISDIR(m):
            return None
        mtime, ctime = st.st_mtime_ns, st.st_ctime_ns
        newest = max(newest, mtime, ctime)
        add((entry.name, m, st.st_size, mtime, st.st_ino, ctime, st.st_dev))
    # marshal format 2: no back-references, so equal values always encode alike (a name is its UTF-8 text, a
    # lone surrogate included)
    digest = blake3.blake3(marshal.dumps(sig, 2)).digest(16)
    return SameDir(path, digest, len(kept), files, size, newest)


_by_name = operator.attrgetter("name")


def _shown(directory: str, dir_fd: int | None, entry: os.DirEntry[str]) -> str:
    """The real path of a directory entry (one read through a descriptor, deep down, has only its name)."""
    return entry.path if dir_fd is None else f"{directory}/{entry.name}"


def _storable_special(mode: int) -> bool:
    """A FIFO or device: stored (as an empty file and its extra record) when metadata is captured."""
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


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


def _too_long(rel: str) -> str | None:
    """Why the path ``rel`` cannot be stored, or None. A name is any bytes the kernel allows; only the
    protocol's byte limits are left to check (and only for a path long enough to reach them)."""
    if len(paths.local_bytes(rel)) > limits.MAX_PATH:
        return f"not stored: its path is over {limits.MAX_PATH} bytes"
    return None


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
    return cast(Iterator[ScanRecord], walk(root, filt, stats, warn, capture))  # no same_dir: records only


def walk(
    root: str,
    filt: Filter | None = None,
    stats: ScanStats | None = None,
    warn: Callable[[str], None] | None = None,
    capture: Capture | None = None,
    same_dir: Callable[[SameDir], bool] | None = None,
) -> Iterator[ScanRecord | SameDir]:
    """:func:`scan`, and with ``same_dir``: each directory's :class:`SameDir` is handed to it once its items
    are stat'ed and filtered (so it sees every directory, to remember its signature); when it answers True the
    SameDir is yielded instead of the records of the directory's items (a push takes them from its files
    cache), whose extra records and symlink targets are then not read. Items skipped with a warning are
    skipped in either case, and counted in ``stats``."""
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
        if problem is not None:  # named by its real path (``path`` may go through /proc/self/fd)
            stats.note(f"{root}/{rel}" if rel else root, problem)
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
    quarter_path = limits.MAX_PATH // 4  # below it, a path cannot be over MAX_PATH bytes
    deep_dirs = deep.Directories(root)  # a directory whose children may reach PATH_MAX is read through one
    while stack:
        directory, prefix = stack.pop()
        dir_fd: int | None = None
        try:
            if not deep.is_short(directory + "/" + "x" * 255):
                dir_fd = deep_dirs.get(prefix[:-1])
            with os.scandir(directory if dir_fd is None else dir_fd) as it:
                entries = sorted(it, key=_by_name)
        except OSError as e:
            skip(directory, f"directory not read ({e.strerror}); nothing under it is stored")
            continue
        if rules is not None:  # a tagged directory keeps only its tags
            entries, left_out = rules.select(entries, directory, dir_fd)
            stats.filtered += left_out
        # First pass: stat and filter every entry (what is skipped or filtered is counted here, whatever comes
        # next), so the directory's signature is known before any of its records is made.
        # (Paths are made only for what needs them: most entries of an unchanged directory need none.)
        kept: list[tuple[os.DirEntry[str], os.stat_result]] = []
        prefix_len = len(prefix)
        for entry in entries:
            name = entry.name
            if prefix_len + len(name) >= quarter_path:
                too_long = _too_long(prefix + name)
                if too_long is not None:
                    skip(_shown(directory, dir_fd, entry), too_long)
                    continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as e:
                skip(_shown(directory, dir_fd, entry), f"not stored: cannot stat it ({e.strerror})")
                continue
            m = st.st_mode
            if S_ISDIR(m):
                if filt is not None and not filt.take_dir(prefix + name, name):
                    stats.filtered += 1
                    continue
            elif filt is not None and not filt.take_file(prefix + name, name):
                stats.filtered += 1
                continue
            elif not (S_ISREG(m) or S_ISLNK(m)) and (capture is None or not _storable_special(m)):
                skip(_shown(directory, dir_fd, entry), f"{_special_kind(m)} not stored")
                continue
            kept.append((entry, st))
        subdirs: list[tuple[str, str]] = []
        if same_dir is not None:
            summary = _summarize(prefix[:-1], kept)
            if summary is not None and same_dir(summary):
                yield summary
                for entry, st in kept:
                    if S_ISDIR(st.st_mode) and (rules is None or rules.descend(st, root_st)):
                        subdirs.append((_shown(directory, dir_fd, entry), prefix + entry.name + "/"))
                stack.extend(reversed(subdirs))
                continue
        for entry, st in kept:
            name = entry.name
            rel = prefix + name
            if dir_fd is None:
                shown_path = where = entry.path
            else:  # deep down: the real path for messages, a short one for system calls
                shown_path, where = f"{directory}/{name}", deep.proc_path(dir_fd, name)
            m = st.st_mode
            if S_ISDIR(m):
                yield ScanRecord(
                    rel, "d", S_IMODE(m), st.st_mtime_ns, 0, st.st_ino, st.st_ctime_ns, "",
                    more(where, rel, st, "d"),
                )  # fmt: skip
                if rules is None or rules.descend(st, root_st):  # another file system: kept empty
                    subdirs.append((shown_path, rel + "/"))
            elif S_ISREG(m):
                yield ScanRecord(
                    rel, "f", S_IMODE(m), st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns, "",
                    more(where, rel, st, "f"),
                )  # fmt: skip
            elif S_ISLNK(m):
                try:
                    target = os.readlink(name, dir_fd=dir_fd) if dir_fd is not None else os.readlink(where)
                except OSError as e:
                    skip(shown_path, f"symlink not stored: cannot read it ({e.strerror})")
                    continue
                yield ScanRecord(
                    rel, "l", S_IMODE(m), st.st_mtime_ns, 0, st.st_ino, st.st_ctime_ns, target,
                    more(where, rel, st, "l"),
                )  # fmt: skip
            else:
                yield ScanRecord(
                    rel, "s", S_IMODE(m), st.st_mtime_ns, 0, st.st_ino, st.st_ctime_ns, "",
                    more(where, rel, st, "s"),
                )  # fmt: skip
        # Push in reverse so the stack pops them in name order.
        stack.extend(reversed(subdirs))


def plain_names_only(
    records: Iterator[ScanRecord | SameDir], stats: ScanStats
) -> Iterator[ScanRecord | SameDir]:
    """``records`` but those a server that predates byte names would refuse (a path that is not UTF-8 or holds a
    backslash), each skipped with its reason: for a plaintext target on such a server. A :class:`SameDir` goes
    through: it is yielded only for a directory whose every item was stored by the last push."""
    for rec in records:
        if type(rec) is ScanRecord and paths.to_wire(rec.path) != rec.path:
            stats.skip(rec.path, "not stored: the server stores only UTF-8 names without a backslash; upgrade it")
        else:
            yield rec
