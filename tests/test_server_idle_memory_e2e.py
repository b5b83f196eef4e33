"""After many clients push at once and leave, twistd gives its memory back: its RSS returns near what it was
before, within seconds of the last connection closing (a real twistd, the real neo-push over SSH, in parallel).

Without it, the page caches of the targets just pushed and the heap the pushes freed stayed resident until the
next periodic shrink, two minutes later; the targets themselves, until ``--target-idle`` (five minutes)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from support import BIN, RunningServer

if shutil.which("ssh") is None:
    pytest.skip("OpenSSH client not installed", allow_module_level=True)

MiB = 1024 * 1024
CLIENTS = 16
FILES = 500  # per client, up to 64 KiB each: enough that the pushes overlap even on a quiet machine (at 200 the
# server grew by 17-23 MiB only there, the clients finishing one after the other)
SETTLE = 10.0  # seconds we wait, at most, for the RSS to come back
CALM = 5.0  # seconds a server needs to settle after its last connection: about three looks, one a second
BOUND = 10 * MiB
"""How far above its baseline the server may stay once idle. Measured on 2 shared cores (load 12-14): baseline
60 MiB after one push and its settling; 16 clients x 500 files peaked at 83-101 MiB and were back at +2.7,
+3.9 and +4.9 MiB (16 x 1,000 files: +7.1). Before the server closed its unused targets and ended its idle
workers on going idle, it stayed at +17 MiB (+29 for 16 x 1,000 files) until ``--target-idle`` closed the
targets, and at +10 MiB after that: the targets' SQLite connections (0.5 MiB each once shrunk) and the worker
threads' own state (0.3 MiB each, scattered through their malloc arenas). What remains is the Python heap's
fragmentation: pymalloc frees a 1 MiB arena only once nothing at all lives in it."""
GREW = 2 * BOUND  # the pushes must have made the server grow by at least this, or the test proves nothing


def rss(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def make_tree(root: Path, seed: int) -> None:
    rng = random.Random(seed)
    for i in range(FILES):
        d = root / f"d{i // 100}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04}.bin").write_bytes(rng.randbytes(rng.randrange(1, 64 * 1024)))


def push(server: RunningServer, src: Path, target: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "neo-push"), "-i", str(server.key), "--known-hosts", str(server.known_hosts),
         "--accept-new-host-key", "--no-progress", str(src), server.remote(target)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=server.env(),
    )  # fmt: skip


def test_the_server_gives_back_what_concurrent_pushes_took(server: RunningServer, tmp_path: Path) -> None:
    pid = server.process.pid
    trees = []
    for i in range(CLIENTS + 1):
        trees.append(tmp_path / f"src{i}")
        make_tree(trees[-1], i)
    first = push(server, trees[-1], "warm-up")  # imports, one target, the first allocations
    assert first.wait(120) == 0, first.communicate()[1]
    time.sleep(CALM)  # the warm-up's own settling: its target closed, its workers ended, the heap trimmed
    baseline = rss(pid)
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # VmHWM from now: the peak of the pushes below
    clients = [push(server, trees[i], f"t{i}") for i in range(CLIENTS)]
    for c in clients:
        assert c.wait(120) == 0, c.communicate()[1]
    peak = rss(pid, "VmHWM")
    assert peak > baseline + GREW, (baseline / MiB, peak / MiB)  # the pushes did make it grow
    deadline = time.monotonic() + SETTLE
    after = rss(pid)
    while after > baseline + BOUND and time.monotonic() < deadline:
        time.sleep(0.5)
        after = rss(pid)
    figures = f"baseline {baseline / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB, after {after / MiB:.1f} MiB"
    if os.environ.get("NEO_TEST_SHOW_MEMORY"):
        print(figures, f"({time.monotonic() - deadline + SETTLE:.1f} s after the pushes)")
    assert after <= baseline + BOUND, f"{figures}, {SETTLE:g} s after the pushes"
    assert os.path.exists(f"/proc/{pid}")  # still serving
