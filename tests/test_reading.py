"""Files are read for a push with pread, never mapped, and their holes are skipped (neotwist.client.reading)."""

from __future__ import annotations

import os
import random
from pathlib import Path

from neotwist.chunking import DEFAULT_PARAMS, Chunker
from neotwist.client.reading import cut_fd, layout

MIB = 1024 * 1024


def test_a_dense_file_is_cut_as_cut_bytes_cuts_it(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(5 * MIB + 3)
    (tmp_path / "f").write_bytes(data)
    chunker = Chunker(DEFAULT_PARAMS)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        st = os.fstat(fd)
        cut = cut_fd(chunker, fd, st.st_size, st.st_blocks)
    finally:
        os.close(fd)
    expected = [(p.offset, p.length, p.id) for p, _ in chunker.cut_bytes(data)]
    assert [(o, n, i) for (o, n), i in zip(cut.offsets, cut.ids, strict=True)] == expected
    assert (cut.size, cut.read, cut.truncated) == (len(data), len(data), False)


def test_a_file_truncated_after_its_stat_is_cut_short_not_a_sigbus(tmp_path: Path) -> None:
    """A mapped file truncated under the reader kills the process with SIGBUS; a pread just comes back short."""
    path = tmp_path / "f"
    path.write_bytes(random.Random(2).randbytes(4 * MIB))
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        os.truncate(path, MIB)  # after the stat the reader relies on
        cut = cut_fd(Chunker(DEFAULT_PARAMS), fd, st.st_size, st.st_blocks)
    finally:
        os.close(fd)
    assert cut.truncated and cut.size == cut.read == MIB
    assert sum(n for _o, n in cut.offsets) == MIB


def test_holes_are_not_read_and_become_zero_chunks(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with path.open("wb") as f:
        f.truncate(64 * MIB)
        f.seek(10 * MIB)
        f.write(b"a" * 100_000)
        f.seek(40 * MIB)
        f.write(b"b" * 5000)
    chunker = Chunker(DEFAULT_PARAMS)
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        segments = layout(fd, st.st_size, st.st_blocks, DEFAULT_PARAMS.max_size)
        cut = cut_fd(chunker, fd, st.st_size, st.st_blocks)
    finally:
        os.close(fd)
    if len(segments) == 1:
        import pytest

        pytest.skip("this filesystem does not report holes (SEEK_DATA/SEEK_HOLE)")
    assert cut.read < MIB  # only the data extents (block-rounded) were read, not 64 MiB
    assert cut.size == 64 * MIB and sum(n for _o, n in cut.offsets) == 64 * MIB
    data = path.read_bytes()
    for (offset, length), cid in zip(cut.offsets, cut.ids, strict=True):
        assert chunker.chunk_id(data[offset : offset + length]) == cid
    assert len(set(cut.ids)) < 12  # the holes are a few distinct zero chunks, repeated
