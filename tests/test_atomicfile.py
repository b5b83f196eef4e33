"""neotwist.atomicfile: the one atomic write the key file, the pins and the files cache share."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from neotwist.atomicfile import atomic_write


def test_writes_new_file_0600_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "f"
    atomic_write(target, b"one")
    assert target.read_bytes() == b"one"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f"]  # no temporary file left behind


def test_other_mode(tmp_path: Path) -> None:
    target = tmp_path / "f"
    atomic_write(target, b"x", mode=0o644)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_no_replace_leaves_an_existing_file_alone(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        atomic_write(target, b"new", replace=False)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]
    atomic_write(tmp_path / "g", b"new", replace=False)
    assert (tmp_path / "g").read_bytes() == b"new"


def test_failed_rename_removes_the_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "d"
    target.mkdir()
    (target / "child").write_bytes(b"")  # a non-empty directory cannot be replaced by a file
    with pytest.raises(OSError):
        atomic_write(target, b"x")
    assert sorted(os.listdir(tmp_path)) == ["d"]


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "nowhere" / "f", b"x")
