"""The directory-level rules of a push's walk (client/dirrules.py) on a real tree: which directories count as
tagged, and what the walk then yields."""

from __future__ import annotations

import os
from pathlib import Path

from neotwist.client.dirrules import SIGNATURE, DirRules, is_cache_tag
from neotwist.client.filters import Filter
from neotwist.client.scan import ScanStats, scan


def test_a_cache_tag_is_a_regular_file_that_starts_with_the_signature(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_bytes(SIGNATURE + b"\n# a comment\n")
    exact = tmp_path / "exact"
    exact.write_bytes(SIGNATURE)
    short = tmp_path / "short"
    short.write_bytes(SIGNATURE[:-1])
    wrong = tmp_path / "wrong"
    wrong.write_bytes(SIGNATURE.upper())
    link = tmp_path / "link"
    link.symlink_to(good)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opened without blocking, and refused: not a regular file
    assert [is_cache_tag(str(p)) for p in (good, exact, short, wrong, link, fifo, tmp_path / "absent")] == [
        True, True, False, False, False, False, False,
    ]  # fmt: skip


def test_the_walk_keeps_a_tagged_directory_and_its_tag_only(tmp_path: Path) -> None:
    (tmp_path / "c" / "deep").mkdir(parents=True)
    (tmp_path / "c" / "CACHEDIR.TAG").write_bytes(SIGNATURE)
    (tmp_path / "c" / "deep" / "x").write_text("x")
    (tmp_path / "c" / "y").write_text("y")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / ".nobackup").mkdir()  # a tag may be any kind of entry; it is kept as it is
    (tmp_path / "t" / ".nobackup" / "inside").write_text("kept with its tag")
    (tmp_path / "t" / "z").write_text("z")
    (tmp_path / "a").write_text("a")

    def walk(rules: DirRules | None) -> tuple[list[str], int]:
        stats = ScanStats()
        found = sorted(r.path for r in scan(str(tmp_path), Filter(dirs=rules), stats))
        return found, stats.filtered

    everything, none = walk(None)
    assert none == 0 and "c/deep/x" in everything and "t/z" in everything
    assert walk(DirRules(exclude_caches=True)) == (
        ["", "a", "c", "c/CACHEDIR.TAG", "t", "t/.nobackup", "t/.nobackup/inside", "t/z"], 2,
    )  # fmt: skip
    assert walk(DirRules(exclude_caches=True, if_present=(".nobackup",))) == (
        ["", "a", "c", "c/CACHEDIR.TAG", "t", "t/.nobackup", "t/.nobackup/inside"], 3,
    )  # fmt: skip
    # one file system: everything here is on one, so nothing changes
    assert walk(DirRules(one_file_system=True)) == (everything, 0)
