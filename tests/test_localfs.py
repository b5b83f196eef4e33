"""Safe writing under a pull's destination: symlinks are never followed, server paths are re-checked."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from neotwist.client.localfs import TEMP_MARK, SafeDest, UnsafePath


@pytest.fixture
def dest(tmp_path: Path):
    d = SafeDest(str(tmp_path / "dest"))
    yield d
    d.close()


def _write(d: SafeDest, rel: str, data: bytes, mode: int = 0o640, mtime_ns: int = 10**18) -> None:
    t = d.new_file(rel)
    os.write(t.fd, data)
    t.commit(mode, mtime_ns)


def test_write_file_sets_mode_mtime_and_creates_parents(dest: SafeDest, tmp_path: Path) -> None:
    _write(dest, "a/b/c.txt", b"hello", 0o604, 1_500_000_000_123_456_789)
    p = tmp_path / "dest" / "a" / "b" / "c.txt"
    assert p.read_bytes() == b"hello"
    st = p.stat()
    assert stat.S_IMODE(st.st_mode) == 0o604
    assert st.st_mtime_ns == 1_500_000_000_123_456_789
    assert not [n for n in os.listdir(p.parent) if TEMP_MARK in n]


def test_replacing_a_file_is_atomic_rename(dest: SafeDest, tmp_path: Path) -> None:
    _write(dest, "f", b"old")
    t = dest.new_file("f")
    os.write(t.fd, b"new")
    assert (tmp_path / "dest" / "f").read_bytes() == b"old"  # untouched until commit
    t.commit(0o644, 10**18)
    assert (tmp_path / "dest" / "f").read_bytes() == b"new"
    t2 = dest.new_file("f")
    os.write(t2.fd, b"never")
    t2.abort()
    assert (tmp_path / "dest" / "f").read_bytes() == b"new"
    assert os.listdir(tmp_path / "dest") == ["f"]


def test_parent_replaced_by_symlink_to_outside_is_refused(dest: SafeDest, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest.make_dir("sub")
    os.rmdir(tmp_path / "dest" / "sub")
    os.symlink(outside, tmp_path / "dest" / "sub")
    with pytest.raises(UnsafePath, match="symlink"):
        _write(dest, "sub/evil", b"x")
    with pytest.raises(UnsafePath):
        dest.make_dir("sub/deeper")
    with pytest.raises(UnsafePath):
        dest.make_symlink("sub/l", "/etc")
    with pytest.raises(UnsafePath):
        dest.set_dir_meta("sub", 0o777, 10**18)
    assert dest.open_read("sub/evil") is None
    assert list(outside.iterdir()) == []
    assert stat.S_IMODE(outside.stat().st_mode) != 0o777


def test_server_paths_with_dotdot_or_absolute_are_refused(dest: SafeDest, tmp_path: Path) -> None:
    for bad in ("../escape", "a/../../escape", "/etc/passwd", "a//b", "./x", "x/\0/y"):
        with pytest.raises(UnsafePath, match="refusing server path"):
            _write(dest, bad, b"x")
        with pytest.raises(UnsafePath):
            dest.make_dir(bad)
    assert not (tmp_path / "escape").exists()


def test_symlinks_are_created_as_text_and_never_followed(dest: SafeDest, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target").write_text("precious")
    assert dest.make_symlink("abs", str(outside))
    assert dest.make_symlink("file-link", str(outside / "target"))
    root = tmp_path / "dest"
    assert os.readlink(root / "abs") == str(outside)
    assert not dest.make_symlink("abs", str(outside))  # already so
    # Writing through the link's directory is refused; writing a file at the link's name replaces the link.
    with pytest.raises(UnsafePath):
        _write(dest, "abs/planted", b"x")
    _write(dest, "file-link", b"replaced")
    assert (outside / "target").read_text() == "precious"
    assert not (root / "file-link").is_symlink()
    assert (root / "file-link").read_bytes() == b"replaced"
    assert dest.open_read("abs") is None  # a symlink is not a regular file to read from
    assert list(outside.iterdir()) == [outside / "target"]


def test_symlink_replaces_file_but_not_directory(dest: SafeDest, tmp_path: Path) -> None:
    _write(dest, "x", b"data")
    assert dest.make_symlink("x", "elsewhere")
    assert os.readlink(tmp_path / "dest" / "x") == "elsewhere"
    dest.make_dir("d")
    with pytest.raises(UnsafePath, match="directory is in the way"):
        dest.make_symlink("d", "elsewhere")
    with pytest.raises(UnsafePath, match="directory is in the way"):
        _write(dest, "d", b"x")
    assert (tmp_path / "dest" / "d").is_dir()
    assert not [n for n in os.listdir(tmp_path / "dest") if TEMP_MARK in n]


def test_file_in_the_way_of_a_directory(dest: SafeDest) -> None:
    _write(dest, "f", b"x")
    with pytest.raises(UnsafePath, match="not a directory"):
        dest.make_dir("f/sub")


def test_dir_meta_and_lstat(dest: SafeDest, tmp_path: Path) -> None:
    dest.make_dir("a/b")
    dest.set_dir_meta("a/b", 0o750, 1_234_000_000_000_000_000)
    st = dest.lstat("a/b")
    assert st is not None and stat.S_IMODE(st.st_mode) == 0o750
    assert st.st_mtime_ns == 1_234_000_000_000_000_000
    assert dest.lstat("a/missing") is None
    assert dest.lstat("missing/deeper") is None


def test_long_names_get_short_enough_temp_names(dest: SafeDest, tmp_path: Path) -> None:
    name = "n" * 255
    _write(dest, name, b"x")
    assert (tmp_path / "dest" / name).read_bytes() == b"x"
