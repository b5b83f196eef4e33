"""The walk's directory signatures (scan.walk with ``same_dir``): what changes them, and what a directory taken
as it was still yields."""

from __future__ import annotations

import os
from pathlib import Path

from neotwist.client.scan import SameDir, ScanRecord, walk


def _tree(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "f").write_text("f")
    (root / "a" / "b" / "g").write_text("g")
    (root / "top").write_text("top")


def _signatures(root: Path) -> dict[str, bytes]:
    seen: dict[str, bytes] = {}

    def same_dir(summary: SameDir) -> bool:
        seen[summary.path] = summary.signature
        return False

    list(walk(str(root), same_dir=same_dir))
    return seen


def test_taken_directories_yield_one_summary_and_are_still_descended(tmp_path: Path) -> None:
    _tree(tmp_path)
    out = list(walk(str(tmp_path), same_dir=lambda summary: summary.path != "a/b"))
    records = [r.path for r in out if isinstance(r, ScanRecord)]
    summaries = {r.path: (r.items, r.files, r.size) for r in out if isinstance(r, SameDir)}
    assert records == ["", "a/b/g"]  # the root's own record, and the items of the one directory not taken
    assert summaries == {"": (2, 1, 3), "a": (2, 1, 1)}


def test_a_signature_changes_with_any_change_to_an_item_and_only_then(tmp_path: Path) -> None:
    _tree(tmp_path)
    before = _signatures(tmp_path)
    assert _signatures(tmp_path) == before
    f = tmp_path / "a" / "f"
    st = f.stat()
    f.write_text("F")  # same size; mtime put back: only the ctime changed
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = _signatures(tmp_path)
    assert after["a"] != before["a"] and after["a/b"] == before["a/b"] and after[""] == before[""]
    os.chmod(tmp_path / "a" / "b" / "g", 0o600)
    assert _signatures(tmp_path)["a/b"] != after["a/b"]
    (tmp_path / "a" / "b" / "g").rename(tmp_path / "a" / "b" / "h")
    assert _signatures(tmp_path)["a/b"] != after["a/b"]


def test_a_directory_with_a_hard_link_has_no_signature(tmp_path: Path) -> None:
    """A hard link's record names the first path of its inode met by the walk: not a property of its
    directory alone."""
    _tree(tmp_path)
    os.link(tmp_path / "top", tmp_path / "a" / "b" / "top-again")
    assert set(_signatures(tmp_path)) == {"a"}
