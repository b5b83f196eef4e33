"""Local paths longer than PATH_MAX: reached one directory at a time, with descriptors.

The kernel refuses a path of PATH_MAX (4096) bytes or more in one system call, but a tree may go deeper. A path
within the limit is used as it is (one call, as always); a longer one is opened from its longest prefix within
the limit, then one component at a time (``openat`` with O_NOFOLLOW: below the pushed root no symlink is
followed). An item in a deep directory is named for path-only calls (``llistxattr``, ``lgetxattr``) as
``/proc/self/fd/N/NAME``, N being its directory's descriptor.
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict

PATH_MAX = 4096
"""Bytes of a path the kernel takes in one call, its terminating NUL included (Linux)."""

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_SUBDIR = _DIR | os.O_NOFOLLOW


def is_short(path: str) -> bool:
    """Can ``path`` be given to the kernel in one call?"""
    return len(path) < PATH_MAX // 4 or len(os.fsencode(path)) < PATH_MAX


def _split_long(root: str, rel: str) -> tuple[str, list[str]]:
    """(the longest prefix of root/rel within PATH_MAX, the components after it)."""
    parts = rel.split("/")
    prefix = root
    used = len(os.fsencode(root))
    for i, part in enumerate(parts):
        size = used + 1 + len(os.fsencode(part))
        if size >= PATH_MAX:
            return prefix, parts[i:]
        prefix, used = f"{prefix}/{part}", size
    return prefix, []


def open_below(root: str, rel: str, flags: int, mode: int = 0o777) -> int:
    """``os.open`` of ``rel`` (relative to the directory ``root``, '/'-separated) however long the path."""
    full = f"{root}/{rel}" if rel else root
    if is_short(full):
        return os.open(full, flags, mode)
    prefix, parts = _split_long(root, rel)
    fd = os.open(prefix, _DIR)
    try:
        for part in parts[:-1]:
            sub = os.open(part, _SUBDIR, dir_fd=fd)
            os.close(fd)
            fd = sub
        return os.open(parts[-1], flags, mode, dir_fd=fd)
    finally:
        os.close(fd)


class Directories:
    """Descriptors of the deep directories of one walk below ``root``. The last few are kept open (at most
    ``keep``), so a depth-first walk opens a deep directory with one ``openat`` from its parent's descriptor
    rather than again from the top (which would make a long chain of short names cost its depth squared).
    They are closed when the object goes (a walk's generator finishing or being dropped)."""

    def __init__(self, root: str, keep: int = 16) -> None:
        self.root = root
        self.keep = keep
        self._open: OrderedDict[str, int] = OrderedDict()
        weakref.finalize(self, _close_all, self._open)

    def get(self, rel: str) -> int:
        """A descriptor of the directory ``rel`` below the root, open until the next :meth:`get` (it is the
        newest, so the next call keeps it while it can use it)."""
        parent, _, name = rel.rpartition("/")
        held = self._open.get(parent) if parent else None
        fd = os.open(name, _SUBDIR, dir_fd=held) if held is not None else open_below(self.root, rel, _SUBDIR)
        self._open[rel] = fd
        while len(self._open) > self.keep:
            os.close(self._open.popitem(last=False)[1])
        return fd


def _close_all(fds: OrderedDict[str, int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


def proc_path(dir_fd: int, name: str) -> str:
    """A short path to ``name`` in the directory open as ``dir_fd``, for calls that take only paths."""
    return f"/proc/self/fd/{dir_fd}/{name}"
