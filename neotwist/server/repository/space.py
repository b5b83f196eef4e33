"""Free space on the repository's file system: the reserve pushes leave alone, and the emergency ballast.

A disk that fills up completely stops more than pushes: SQLite cannot create the shared-memory file a WAL
database needs to be read, so logins, listings and restores would fail too, and prune would have no room to
delete anything. Two mechanisms keep the server working:

- **The reserve** (``twistd neophytos --min-free``, default 2 %): a push does not start, and
  no chunk is stored, while the free space is (or would fall) below it. The refusal is a DiskFull error that
  says how much is free and what to do. Garbage collection and prune may use the reserve: they give space back.
- **The ballast**: a file of :func:`ballast_size` bytes (``DATA/repo/emergency-space``) that the server keeps
  while there is room and deletes when the file system is found full anyway (another program filled it, or it
  was full when the server started), so that there is room for the index files' own bookkeeping, for prune and
  for garbage collection. It is made again once the free space is back above the reserve.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from neotwist.server.repository.errors import DiskFull
from neotwist.server.repository.index import logged
from neotwist.sizes import parse_size

BALLAST_NAME = "emergency-space"

_PERCENT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*%\s*")


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system of ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def total_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def human(n: int) -> str:
    """A byte count as people read it (MiB, with one decimal)."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class Reserve:
    """Free space pushes must leave on the repository's file system: ``fraction`` of its size or ``size``
    bytes (one of them), as parsed by :meth:`parse`."""

    fraction: float = 0.0
    size: int = 0

    @classmethod
    def parse(cls, text: str) -> Reserve:
        """``2%``, ``500MiB``, ``1GB`` or ``0`` (no reserve); ValueError with the accepted forms."""
        match = _PERCENT.fullmatch(text)
        if match is not None:
            fraction = float(match.group(1)) / 100
            if not 0 <= fraction < 1:
                raise ValueError(f"{text!r}: a percentage of the file system from 0% to 99%")
            return cls(fraction=fraction)
        size = parse_size(text)
        assert size is not None
        return cls(size=size)

    def bytes_on(self, path: Path) -> int:
        """The reserve in bytes on the file system of ``path``."""
        return int(total_bytes(path) * self.fraction) if self.fraction else self.size

    def __str__(self) -> str:
        return f"{self.fraction * 100:g}%" if self.fraction else human(self.size)

    def tight(self, path: Path) -> bool:
        """Whether free space is short: less than twice the reserve (or the ballast, if more) is free. The
        server then reclaims an aborted push's chunks at once instead of keeping them for a resume."""
        return free_bytes(path) < 2 * max(self.bytes_on(path), ballast_size(path))

    def check(self, path: Path, incoming: int = 0) -> None:
        """Raise DiskFull unless ``incoming`` more bytes leave at least the reserve free on ``path``'s file
        system."""
        reserve = self.bytes_on(path)
        free = free_bytes(path)
        if free - incoming < reserve or (incoming and free <= incoming):
            raise logged(
                DiskFull(
                    f"the server's disk is full: {human(free)} free, and {human(reserve)} ({self}) is kept free "
                    "for the server itself; nothing was stored (the operator frees space, or prunes old snapshots)",
                )
            )


def ballast_size(path: Path) -> int:
    """1 % of the file system, at least 256 KiB and at most 16 MiB: room for SQLite's shared-memory and WAL
    files, a prune, and a garbage collection's first steps."""
    return max(256 * 1024, min(16 * 1024 * 1024, total_bytes(path) // 100))


class Ballast:
    """The emergency space file in ``directory`` (see the module docstring). Not thread-safe: the server
    calls it from one place (start-up, then a periodic check)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / BALLAST_NAME

    def held(self) -> bool:
        return self.path.exists()

    def release(self) -> int:
        """Delete the ballast; return the bytes it held (0 if there was none)."""
        try:
            size = self.path.stat().st_size
            self.path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def keep(self, reserve: Reserve) -> str | None:
        """Release the ballast when the file system is nearly full (less free than the ballast itself: the
        server may be unable to open its own files), or make it when there is room for it above the reserve.
        Returns what it did, for the log, or None."""
        directory = self.path.parent
        size = ballast_size(directory)
        free = free_bytes(directory)
        if self.held():
            if free < size:
                freed = self.release()
                return (
                    f"the disk holding {directory} is full ({human(free)} free): released the "
                    f"{human(freed)} emergency space so logins, restores, prune and check keep working; "
                    "free space or prune old snapshots"
                )
            return None
        if free - size > reserve.bytes_on(directory) + size:
            try:
                with open(self.path, "xb") as f:
                    os.posix_fallocate(f.fileno(), 0, size)
                    os.fsync(f.fileno())
            except FileExistsError:
                return None
            except OSError as e:
                self.path.unlink(missing_ok=True)
                return f"cannot set aside {human(size)} of emergency space in {directory}: {e.strerror}"
        return None
