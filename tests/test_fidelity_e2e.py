"""Faithful copies of real machines, end to end with the real twistd, neo-push and neo-pull.

Each test builds what real machines hold (repeated chunks, sparse files, mode-only changes, ownership, hard
links, xattrs, ACLs, specials, odd names), pushes and pulls it into a fresh directory, and compares bytes and
metadata property by property (with ``rsync -aHAXS --numeric-ids`` of the same tree where it is installed).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from support import RunningServer

if shutil.which("ssh") is None:
    pytest.skip("OpenSSH client not installed", allow_module_level=True)

MIB = 1024 * 1024
OLD = 1_600_000_000 * 10**9


def push(server: RunningServer, src: Path, target: str, *args: str, code: int = 0) -> dict[str, Any]:
    r = server.cli("neo-push", "--accept-new-host-key", "--json", *args, str(src), server.remote(target))
    assert r.returncode == code, f"neo-push exited {r.returncode}: {r.stderr}"
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def pull(server: RunningServer, target: str, dest: Path, *args: str, code: int = 0) -> dict[str, Any]:
    r = server.cli("neo-pull", "--accept-new-host-key", "--json", *args, server.remote(target), str(dest))
    assert r.returncode == code, f"neo-pull exited {r.returncode}: {r.stderr}"
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def digest(path: Path) -> str:
    h = hashlib.blake2b()
    with path.open("rb") as f:
        while block := f.read(8 * MIB):
            h.update(block)
    return h.hexdigest()


def test_repeated_chunks_over_iov_max_and_sparse_files_round_trip(server: RunningServer, tmp_path: Path) -> None:
    """A file made of one chunk repeated 1,300 times used to reach os.pwritev as 1,300 buffers (EINVAL, over
    IOV_MAX); a 1 GiB file with 4 MiB of data was read whole, and came back fully allocated or not at all."""
    src = tmp_path / "src"
    src.mkdir()
    block = random.Random(0).randbytes(20_000)  # cut at the same phase every time: one chunk, repeated
    (src / "repeated.bin").write_bytes(block * 1300)
    with (src / "sparse.img").open("wb") as f:
        f.truncate(1024 * MIB)
        for at in (0, 300 * MIB, 1020 * MIB):
            f.seek(at)
            f.write(random.Random(at).randbytes(MIB + 1234))
    with (src / "holes-only.img").open("wb") as f:
        f.truncate(250 * MIB)
    first = push(server, src, "fid")
    assert first["bytes_sent"] < 12 * MIB, first  # holes are neither read nor sent (one zero chunk is)
    out = tmp_path / "out"
    pull(server, "fid", out)
    for name in ("repeated.bin", "sparse.img", "holes-only.img"):
        assert (out / name).stat().st_size == (src / name).stat().st_size, name
        assert digest(out / name) == digest(src / name), name
    assert (out / "sparse.img").stat().st_blocks * 512 < 16 * MIB  # restored as holes
    assert (out / "holes-only.img").stat().st_blocks * 512 < MIB


def test_a_mode_only_change_is_applied_to_an_existing_copy(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.utime(src / "script.sh", ns=(OLD, OLD))
    os.chmod(src / "script.sh", 0o644)
    push(server, src, "modes")
    out = tmp_path / "out"
    pull(server, "modes", out)
    assert (out / "script.sh").stat().st_mode & 0o7777 == 0o644
    os.chmod(src / "script.sh", 0o750)  # content and mtime unchanged
    time.sleep(0.01)
    push(server, src, "modes")
    summary = pull(server, "modes", out)
    assert (out / "script.sh").stat().st_mode & 0o7777 == 0o750, summary
    assert (out / "script.sh").stat().st_mtime_ns == OLD


def make_deep(root: Path, depth_bytes: int) -> bytes:
    """A file whose path under ``root`` is over ``depth_bytes`` long (made with directory descriptors: the
    kernel refuses such a path in one call). Returns its relative path."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    rel = b""
    try:
        while len(rel) < depth_bytes:
            name = b"d" * 200
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            rel += name + b"/"
        wfd = os.open("deep.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(wfd, b"deep\n")
        os.close(wfd)
    finally:
        os.close(fd)
    return rel + b"deep.txt"


def test_what_cannot_be_stored_is_named_with_its_reason_and_exits_23(server: RunningServer, tmp_path: Path) -> None:
    import socket

    src = tmp_path / "src"
    src.mkdir()
    (src / "plain.txt").write_text("kept\n")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "app.sock"))
    try:
        make_deep(src, 4200)
        summary = push(server, src, "named", code=23)
    finally:
        sock.close()
    reasons = {Path(w["path"]).name: w["reason"] for w in summary["warnings"]}
    assert reasons["app.sock"] == "socket not stored", reasons
    assert any(r.startswith("not stored: its path is over 4096 bytes") for r in reasons.values()), reasons
    assert summary["warnings_count"] == len(summary["warnings"]) == 2, summary
    out = tmp_path / "out"
    pull(server, "named", out)
    assert (out / "plain.txt").read_text() == "kept\n"
