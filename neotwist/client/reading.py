"""Reading a file of a live filesystem for a push: with ``pread``, never ``mmap``, and skipping its holes.

A mapped file that is truncated while it is read (or whose disk answers EIO) kills the whole process with
SIGBUS; a ``pread`` instead returns short, or raises OSError, and the push names that one file and goes on.

Sparse files are asked for their layout with ``SEEK_DATA``/``SEEK_HOLE`` (one pair of ``lseek`` calls per
extent, and only for files that have fewer blocks than their size suggests). A hole of at least one maximal
chunk is never read: it becomes a run of all-zero chunks whose ids are computed once, which the store keeps
once and a pull writes back as a hole. Data extents are cut apart, so the chunks of a sparse file can differ
from those of a dense copy of the same bytes; both restore to the same bytes.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from neotwist.chunking import Chunker

SEEK_DATA = getattr(os, "SEEK_DATA", None)
SEEK_HOLE = getattr(os, "SEEK_HOLE", None)


class RangeReader:
    """``readinto`` over ``length`` bytes of ``fd`` from ``start`` with ``preadv`` (for ``cut_stream``); stops
    early at end of file (the file was truncated) and counts what it got."""

    __slots__ = ("fd", "got", "left", "pos", "short")

    def __init__(self, fd: int, start: int, length: int) -> None:
        self.fd = fd
        self.pos = start
        self.left = length
        self.got = 0
        self.short = False

    def readinto(self, b: memoryview) -> int:
        want = min(len(b), self.left)
        if want <= 0:
            return 0
        n = os.preadv(self.fd, [b[:want] if want < len(b) else b], self.pos)
        if n == 0:
            self.short = True
            self.left = 0
            return 0
        self.pos += n
        self.left -= n
        self.got += n
        return n


def layout(fd: int, size: int, blocks: int, min_hole: int) -> list[tuple[int, int, bool]]:
    """(start, length, is data) segments covering ``size`` bytes of ``fd``: holes of at least ``min_hole`` bytes
    apart. A dense file (as many 512-byte blocks as its size needs) costs no system call."""
    if SEEK_DATA is None or SEEK_HOLE is None or blocks * 512 >= size or size < min_hole:
        return [(0, size, True)]
    out: list[tuple[int, int, bool]] = []
    pos = data_from = 0
    try:
        while pos < size:
            try:
                data = os.lseek(fd, pos, SEEK_DATA)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
                data = size  # nothing but a hole up to the end
            data = min(data, size)
            hole_end = data
            if hole_end - pos >= min_hole:
                if pos > data_from:
                    out.append((data_from, pos - data_from, True))
                out.append((pos, hole_end - pos, False))
                data_from = hole_end
            if data >= size:
                break
            pos = min(os.lseek(fd, data, SEEK_HOLE), size)
    except OSError:
        return [(0, size, True)]  # the filesystem cannot tell: read it all
    if data_from < size:
        out.append((data_from, size - data_from, True))
    return out


@dataclass(slots=True)
class Cut:
    """A file cut into chunks: where each is, its ids, how many bytes it covers, how many were really read."""

    offsets: list[tuple[int, int]] = field(default_factory=list)
    ids: list[bytes] = field(default_factory=list)
    size: int = 0
    read: int = 0
    truncated: bool = False


def cut_fd(chunker: Chunker, fd: int, size: int, blocks: int) -> Cut:
    """Cut ``size`` bytes of the regular file ``fd`` (``blocks`` from its stat) without mapping it; holes of a
    maximal chunk or more become zero chunks without being read. Raises OSError (EIO, ...) from the reads."""
    out = Cut()
    offsets, ids = out.offsets, out.ids
    max_size = chunker.params.max_size
    for start, length, is_data in layout(fd, size, blocks, max_size):
        if not is_data:
            full, rest = divmod(length, max_size)
            zid = chunker.zero_id(max_size)
            for k in range(full):
                offsets.append((start + k * max_size, max_size))
                ids.append(zid)
            if rest:
                offsets.append((start + full * max_size, rest))
                ids.append(chunker.zero_id(rest))
            out.size = start + length
            continue
        reader = RangeReader(fd, start, length)
        for piece, chunk in chunker.cut_stream(reader):
            offsets.append((start + piece.offset, piece.length))
            ids.append(piece.id)
            del chunk
        out.read += reader.got
        out.size = start + reader.got
        if reader.short:
            out.truncated = True
            break
    return out
