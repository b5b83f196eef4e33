"""A real server whose data directory is a small file system that fills up (a 64 MiB tmpfs).

A push bigger than the disk is refused with "the server's disk is full" (exit 1, never an authentication
failure) and its chunks are reclaimed at once; while another program keeps the disk full, the server releases
its emergency space by itself and logins, listings, restores and prune work; it restarts on the full disk, the
operator's check works (also on a full disk with the server stopped), and pushes work again once there is
room.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import BIN, RunningServer, snapshot_of

MiB = 1024 * 1024


def used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    data = tmp_path / "data"
    data.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,mode=700", "tmpfs", str(data)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def test_a_full_data_disk(tmp_path: Path, small_disk: Path) -> None:
    server = RunningServer(tmp_path)
    try:
        src = tmp_path / "src"
        src.mkdir()
        for i in range(3):
            (src / f"f{i}.txt").write_bytes(os.urandom(50_000))
        first = snapshot_of(src)
        r = server.cli("neo-push", "--accept-new-host-key", str(src), server.remote("t"))
        assert r.returncode == 0, r.stderr

        # A push four times the size of the disk: refused at the reserve, and nothing of it stays behind.
        big = src / "big.bin"
        with open(big, "wb") as f:
            for _ in range(200):
                f.write(os.urandom(MiB))
        r = server.cli("neo-push", str(src), server.remote("t"))
        assert r.returncode == 1, r.stderr
        assert "the server's disk is full" in r.stderr and "kept free" in r.stderr, r.stderr
        deadline = time.monotonic() + 20  # the server reclaims them as soon as it sees the connection go
        while used(small_disk) > 8 * MiB and time.monotonic() < deadline:
            time.sleep(0.2)
        assert used(small_disk) < 8 * MiB, used(small_disk)  # the failed push's chunks were reclaimed
        big.unlink()

        # Two more snapshots: one with 8 MiB that the next one deletes (a prune will give that back).
        (src / "old.bin").write_bytes(os.urandom(8 * MiB))
        r = server.cli("neo-push", str(src), server.remote("t"))
        assert r.returncode == 0, r.stderr
        (src / "old.bin").unlink()
        r = server.cli("neo-push", "--delete", str(src), server.remote("t"))
        assert r.returncode == 0, r.stderr

        # Another program fills the disk to the last byte: the server lets go of its emergency space.
        filler = small_disk / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=100"], capture_output=True)
        assert os.statvfs(small_disk).f_bavail == 0
        # Before the server notices, a login may fail: as what it is, never as a wrong key or password.
        r = server.cli("neo-ls", server.remote("t"))
        assert r.returncode in (0, 1) and "authentication failed" not in r.stderr, r.stderr
        deadline = time.monotonic() + 30
        while "released" not in server.log_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "the disk holding" in server.log_text() and "emergency space" in server.log_text()
        r = server.cli("neo-ls", server.remote("t"))
        assert r.returncode == 0 and "f0.txt" in r.stdout, r.stderr
        out = tmp_path / "restore"
        r = server.cli("neo-pull", server.remote("t"), str(out))
        assert r.returncode == 0, r.stderr
        assert snapshot_of(out) == first

        more = tmp_path / "more"
        more.mkdir()
        (more / "small.txt").write_text("x")
        r = server.cli("neo-push", str(more), server.remote("t2"))
        assert r.returncode == 1 and "the server's disk is full" in r.stderr, r.stderr

        # Prune works on the full disk and gives the deleted file's space back.
        before = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        r = server.cli("neo-prune", "--keep-last", "1", server.remote("t"))
        assert r.returncode == 0, r.stderr
        after = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        assert after - before > 7 * MiB, (before, after)

        # It restarts on the full disk and serves reads; the operator's check works beside it.
        server.stop()
        server.start()
        r = server.cli("neo-ls", server.remote("t"))
        assert r.returncode == 0 and "f0.txt" in r.stdout, r.stderr
        r = subprocess.run(
            [str(BIN / "neo-admin"), "--data", str(server.data), "check", "--verify-data"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == 0 and "no damage found" in r.stdout, r.stdout + r.stderr

        # Room again: pushes work, and what was pushed before is intact.
        filler.unlink()
        r = server.cli("neo-push", str(more), server.remote("t2"))
        assert r.returncode == 0, r.stderr
        r = server.cli("neo-pull", server.remote("t"), str(tmp_path / "again"))
        assert r.returncode == 0 and snapshot_of(tmp_path / "again") == first, r.stderr
        assert "Traceback" not in server.log_text().split("Received SIGTERM")[-1]

        # The emergency space is set aside again; with the server stopped and the disk full once more, the
        # operator's check releases it to read the repository.
        ballast = server.data / "repo" / "emergency-space"
        deadline = time.monotonic() + 30
        while not ballast.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert ballast.exists()
        server.stop()
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=100"], capture_output=True)
        r = subprocess.run(
            [str(BIN / "neo-admin"), "--data", str(server.data), "check"], capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0 and "no damage found" in r.stdout, r.stdout + r.stderr
        assert "released" in r.stderr and not ballast.exists(), r.stderr
    finally:
        server.stop()
