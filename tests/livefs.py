"""A small FUSE filesystem that misbehaves as live disks do, for the live-filesystem tests (run as a program).

``python livefs.py MOUNTPOINT`` serves, until unmounted:

- ``ok.txt`` and ``dir/ok2.bin``: ordinary files;
- ``eio.bin``: 4 MiB, every read past 2 MiB fails with EIO (a failing disk);
- ``shrinks.bin``: says 4 MiB, but ends after 1.5 MiB when read (truncated while it is read);
- ``changing.bin``: 3 MiB whose bytes differ at every open (overwritten in place while it is pushed);
- ``locked/``: a directory that cannot be listed (EACCES, even for root).

Mounted with ``direct_io`` so every read reaches this process (no page cache hides a change).
"""

from __future__ import annotations

import errno
import random
import stat
import sys

import mfusepy as fuse

MIB = 1024 * 1024
OK = b"ordinary bytes\n" * 100
OK2 = random.Random(2).randbytes(2 * MIB + 5)
SIZES = {"/eio.bin": 4 * MIB, "/shrinks.bin": 4 * MIB, "/changing.bin": 3 * MIB}
MTIME = 1_600_000_000


class LiveFS(fuse.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self) -> None:
        self.opens = 0
        self.content: dict[int, bytes] = {}
        self.fh_gen: dict[int, int] = {}

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        times = {"st_mtime": MTIME * 10**9, "st_ctime": MTIME * 10**9, "st_atime": MTIME * 10**9}
        if path in ("/", "/dir", "/locked"):
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, **times}
        size = {"/ok.txt": len(OK), "/dir/ok2.bin": len(OK2), **SIZES}.get(path)
        if size is None:
            raise fuse.FuseOSError(errno.ENOENT)
        return {"st_mode": stat.S_IFREG | 0o644, "st_nlink": 1, "st_size": size, "st_blocks": size // 512, **times}

    def readdir(self, path: str, fh: int) -> list[str]:
        if path == "/dir":
            return [".", "..", "ok2.bin"]
        if path == "/locked":
            raise fuse.FuseOSError(errno.EACCES)
        return [".", "..", "ok.txt", "dir", "locked", *(p[1:] for p in SIZES)]

    def opendir(self, path: str) -> int:
        if path == "/locked":
            raise fuse.FuseOSError(errno.EACCES)
        return 0

    def open(self, path: str, flags: int) -> int:
        self.opens += 1
        self.fh_gen[self.opens] = self.opens
        return self.opens

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        if path == "/ok.txt":
            return OK[offset : offset + size]
        if path == "/dir/ok2.bin":
            return OK2[offset : offset + size]
        if path == "/eio.bin":
            if offset + size > 2 * MIB:
                raise fuse.FuseOSError(errno.EIO)
            return bytes([7]) * size
        if path == "/shrinks.bin":
            end = min(offset + size, 3 * MIB // 2)
            return bytes([9]) * max(0, end - offset)
        if path == "/changing.bin":
            gen = self.fh_gen.get(fh, 0)
            data = self.content.get(gen)
            if data is None:
                self.content = {gen: random.Random(gen).randbytes(SIZES[path])}
                data = self.content[gen]
            return data[offset : offset + size]
        raise fuse.FuseOSError(errno.ENOENT)

    def release(self, path: str, fh: int) -> int:
        self.fh_gen.pop(fh, None)
        return 0


if __name__ == "__main__":
    fuse.FUSE(LiveFS(), sys.argv[1], foreground=True, nothreads=True, direct_io=True, ro=True)
