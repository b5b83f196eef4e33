"""The push walk and its filters, on real files in a temporary directory."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from neotwist.client.filters import SAMPLE, Filter, FilterError, write_sample
from neotwist.client.scan import ScanStats, scan


def _tree(root: Path) -> None:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "mod.py").write_text("print(1)\n")
    (root / "src" / "pkg" / "mod.pyc").write_bytes(b"\0" * 10)
    (root / "build" / "deep").mkdir(parents=True)
    (root / "build" / "deep" / "out.o").write_bytes(b"x" * 100)
    (root / "notes.txt").write_text("hello")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    os.symlink("notes.txt", root / "link")
    os.symlink("/etc/passwd", root / "abs-link")


def _paths(root: Path, filt: Filter | None = None, stats: ScanStats | None = None) -> dict[str, str]:
    return {r.path: r.kind for r in scan(str(root), filt, stats)}


def test_scan_reports_everything_parents_first(tmp_path: Path) -> None:
    _tree(tmp_path)
    records = list(scan(str(tmp_path)))
    paths = [r.path for r in records]
    assert paths[0] == ""
    assert records[0].kind == "d"
    for r in records:
        parent = r.path.rpartition("/")[0]
        if r.path:
            assert paths.index(parent) < paths.index(r.path), r.path
    kinds = {r.path: r for r in records}
    assert kinds["src/pkg/mod.py"].kind == "f"
    assert kinds["src/pkg/mod.py"].size == 9
    assert kinds["src/pkg"].kind == "d"
    assert kinds["link"].kind == "l" and kinds["link"].link == "notes.txt"
    assert kinds["abs-link"].link == "/etc/passwd"
    st = os.lstat(tmp_path / "notes.txt")
    n = kinds["notes.txt"]
    assert (n.mode, n.mtime_ns, n.inode, n.ctime_ns) == (
        stat.S_IMODE(st.st_mode),
        st.st_mtime_ns,
        st.st_ino,
        st.st_ctime_ns,
    )


def test_scan_does_not_follow_symlinked_directories(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "escape")
    found = _paths(root)
    assert found == {"": "d", "escape": "l"}


def test_special_files_are_skipped_and_counted(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "sock"))
        (tmp_path / "plain").write_text("p")
        stats = ScanStats()
        assert _paths(tmp_path, stats=stats) == {"": "d", "plain": "f"}
        assert stats.skipped == 2
        named = {(Path(w.path).name, w.reason) for w in stats.warnings}
        assert named == {("fifo", "FIFO not stored"), ("sock", "socket not stored")}
    finally:
        sock.close()


def test_every_name_the_kernel_allows_is_walked_and_filtered(tmp_path: Path) -> None:
    (tmp_path / "back\\slash").write_text("x")
    os.close(os.open(os.fsencode(tmp_path) + b"/bad-\xff-utf8", os.O_CREAT | os.O_WRONLY, 0o644))
    os.close(os.open(os.fsencode(tmp_path) + b"/caf\xe9.tmp", os.O_CREAT | os.O_WRONLY, 0o644))
    (tmp_path / "ok").write_text("x")
    stats = ScanStats()
    found = _paths(tmp_path, stats=stats)
    assert found == {"": "d", "ok": "f", "back\\slash": "f", "bad-\udcff-utf8": "f", "caf\udce9.tmp": "f"}
    assert stats.skipped == 0
    # patterns match such names, as a latin-1 shell would give them
    filt = Filter.from_lines(["*.tmp", os.fsdecode(b"bad-\xff-*")])
    assert _paths(tmp_path, filt) == {"": "d", "ok": "f", "back\\slash": "f"}


def test_gitignore_patterns_prune_directories(tmp_path: Path) -> None:
    _tree(tmp_path)
    filt = Filter.from_lines(["*.pyc", "build/", ".git/"])
    stats = ScanStats()
    found = _paths(tmp_path, filt, stats)
    assert "src/pkg/mod.pyc" not in found
    assert "build" not in found and "build/deep/out.o" not in found
    assert ".git" not in found
    assert "src/pkg/mod.py" in found
    assert stats.filtered == 3  # mod.pyc, build, .git: nothing below a pruned directory is even looked at


def test_negation_and_exclude_option(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_text("1")
    (tmp_path / "keep.log").write_text("1")
    (tmp_path / "b.txt").write_text("1")
    filt = Filter.from_lines(["*.log", "!keep.log"])
    assert set(_paths(tmp_path, filt)) == {"", "keep.log", "b.txt"}
    filt.add_patterns(["*.txt"])
    assert set(_paths(tmp_path, filt)) == {"", "keep.log"}


def test_original_rules_first_match_wins(tmp_path: Path) -> None:
    _tree(tmp_path)
    filt = Filter.from_lines(
        [
            "# original format",
            r"dir reject ^\.git$",
            r"path accept ^src/pkg/mod\.pyc$",
            r"file reject \.pyc$",
            r"path reject ^build",
            "notes.txt",  # a gitignore line in the same file
        ]
    )
    found = _paths(tmp_path, filt)
    assert ".git" not in found
    assert "src/pkg/mod.pyc" in found  # accepted by the earlier path rule
    assert "build" not in found
    assert "notes.txt" not in found
    assert "link" in found


def test_rules_decide_before_gitignore_patterns(tmp_path: Path) -> None:
    (tmp_path / "x.tmp").write_text("1")
    filt = Filter.from_lines(["*.tmp", r"file accept ^x\.tmp$"])
    assert "x.tmp" in _paths(tmp_path, filt)


def test_bad_regex_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "filters"
    bad.write_text("# c\nfile reject ([unclosed\n")
    with pytest.raises(FilterError, match=r"filters:2: bad regular expression"):
        Filter.from_file(bad)
    with pytest.raises(FilterError, match="cannot read filter file"):
        Filter.from_file(tmp_path / "missing")


def test_sample_filter_file_is_valid_and_works(tmp_path: Path) -> None:
    path = write_sample(tmp_path)
    assert path.read_text() == SAMPLE
    filt = Filter.from_file(path)
    assert filt.rules and filt.patterns
    (tmp_path / "tree" / "node_modules").mkdir(parents=True)
    (tmp_path / "tree" / "node_modules" / "x.js").write_text("1")
    (tmp_path / "tree" / "a.pyc").write_text("1")
    (tmp_path / "tree" / "important.tmp").write_text("1")
    (tmp_path / "tree" / "other.tmp").write_text("1")
    assert set(_paths(tmp_path / "tree", filt)) == {"", "important.tmp"}
    write_sample(tmp_path)  # the same content again is fine
    path.write_text("mine")
    with pytest.raises(FilterError, match="differs"):
        write_sample(tmp_path)


def test_unreadable_directory_is_skipped(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every directory")
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "f").write_text("1")
    locked.chmod(0)
    try:
        stats = ScanStats()
        found = _paths(tmp_path, stats=stats)
        assert "locked" in found and "locked/f" not in found
        assert stats.skipped == 1
    finally:
        locked.chmod(0o755)


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("1")
    with pytest.raises(NotADirectoryError):
        list(scan(str(tmp_path / "f")))
    with pytest.raises(FileNotFoundError):
        list(scan(str(tmp_path / "missing")))
