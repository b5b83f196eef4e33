"""The client's memory does not grow with the size of what it pushes (end to end: a real twistd and the real
neo-push, its peak taken by /usr/bin/time from outside, so the test process's own size does not count).
Compressed chunks of a big file used to wait in memory all at once for their turn to be sent."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support import BIN, RunningServer

if shutil.which("ssh") is None or not Path("/usr/bin/time").exists():
    pytest.skip("OpenSSH client or GNU time not installed", allow_module_level=True)


def peak_kib(server: RunningServer, src: Path, target: str) -> int:
    r = subprocess.run(
        ["/usr/bin/time", "-f", "%M", str(BIN / "neo-push"), "-i", str(server.key), "--known-hosts",
         str(server.known_hosts), "--accept-new-host-key", "--no-progress", str(src), server.remote(target)],
        capture_output=True, text=True, timeout=600, env=server.env(),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return int(r.stderr.strip().splitlines()[-1])


def test_a_big_file_costs_no_more_memory_than_a_small_one(server: RunningServer, tmp_path: Path) -> None:
    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir()
    big.mkdir()
    (small / "f").write_bytes(os.urandom(8 << 20))
    with open(big / "f", "wb") as f:  # incompressible, so every byte travels
        for _ in range(12):
            f.write(os.urandom(8 << 20))
    base = peak_kib(server, small, "small")
    grown = peak_kib(server, big, "big")
    # 88 MiB more data: what is held is bounded by jobs in flight and the send window, not by the file
    assert grown - base < 48 * 1024, (base, grown)


def test_the_mmap_threshold_is_fixed_where_glibc_is() -> None:
    import platform

    from neotwist import runtime

    assert runtime.tune_malloc() == (platform.libc_ver()[0] == "glibc")
