"""Directory-level exclusions of a push's walk: ``--one-file-system``, ``--exclude-caches``, ``--exclude-if-present``.

These look at a directory as a whole, not at a name, so they live beside the pattern filter
(:mod:`neotwist.client.filters`) rather than in it:

- ``--one-file-system`` (``-x``, as rsync and restic): a directory on another file system than the pushed root
  (another ``st_dev``: a mount point) is kept as an empty directory, as ``rsync -x`` keeps it, and not entered.
- ``--exclude-caches``: a directory holding a valid ``CACHEDIR.TAG`` (a regular file whose first 43 bytes are
  the signature of https://bford.info/cachedir/) keeps only the directory itself and the tag file, as GNU tar's
  ``--exclude-caches`` does: a restore still shows the cache's place and still marks it as a cache. Nothing
  else in it, at any depth, is read or stored.
- ``--exclude-if-present NAME`` (repeatable): the same for a directory that contains an entry called NAME (any
  kind of entry; tar's ``--exclude-tag``): the directory and NAME are kept, the rest left out.

The tag check costs nothing for directories without such a name (the listing is already in hand); a candidate
``CACHEDIR.TAG`` is opened without following a symlink and read for 43 bytes at most.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

CACHEDIR_TAG = "CACHEDIR.TAG"
SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
"""The first bytes of a valid CACHEDIR.TAG (the Cache Directory Tagging Specification, version 1.0)."""

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def is_cache_tag(path: str, dir_fd: int | None = None) -> bool:
    """Is ``path`` (relative to ``dir_fd`` when given) a valid cache directory tag: a regular file (not a
    symlink) that starts with the signature?"""
    try:
        fd = os.open(path, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return os.pread(fd, len(SIGNATURE), 0) == SIGNATURE
    except OSError:
        return False
    finally:
        os.close(fd)


@dataclass(frozen=True)
class DirRules:
    """The directory-level rules of one push (see the module docstring). Stateless, so the walk that counts the
    totals for the progress display can use them at the same time as the push's own walk."""

    one_file_system: bool = False
    exclude_caches: bool = False
    if_present: Sequence[str] = ()

    @property
    def empty(self) -> bool:
        return not (self.one_file_system or self.exclude_caches or self.if_present)

    def descend(self, st: os.stat_result, root: os.stat_result) -> bool:
        """Should the walk enter a directory (``st`` its lstat, ``root`` the pushed root's stat)?"""
        return not self.one_file_system or st.st_dev == root.st_dev

    def select(
        self, entries: list[os.DirEntry[str]], directory: str, dir_fd: int | None = None
    ) -> tuple[list[os.DirEntry[str]], int]:
        """The ``entries`` of ``directory`` (listed through ``dir_fd`` when given) to walk, and how many were
        left out: all of them, or only the tags when the directory is tagged."""
        if not (self.exclude_caches or self.if_present):
            return entries, 0
        names = {e.name: e for e in entries}
        tags = [name for name in self.if_present if name in names]
        if self.exclude_caches and CACHEDIR_TAG in names and CACHEDIR_TAG not in tags:
            entry = names[CACHEDIR_TAG]
            where = CACHEDIR_TAG if dir_fd is not None else os.path.join(directory, CACHEDIR_TAG)
            if entry.is_file(follow_symlinks=False) and is_cache_tag(where, dir_fd):
                tags.append(CACHEDIR_TAG)
        if not tags:
            return entries, 0
        kept = [e for e in entries if e.name in tags]
        return kept, len(entries) - len(kept)


__all__ = ["CACHEDIR_TAG", "SIGNATURE", "DirRules", "is_cache_tag"]
