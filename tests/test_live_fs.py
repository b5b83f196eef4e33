"""A live filesystem never crashes or aborts a push: with the real twistd, neo-push and neo-pull.

The source is a FUSE filesystem (tests/livefs.py) with a file that fails with EIO, one truncated while it is
read and one overwritten in place at every open. Each is named with its reason, every other file is stored,
and the push exits with 23 (done, incomplete). Before, the first two killed neo-push with SIGBUS (mmap) and the
third aborted the whole push.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import RunningServer

HERE = Path(__file__).parent

if shutil.which("ssh") is None:
    pytest.skip("OpenSSH client not installed", allow_module_level=True)


@pytest.fixture
def live_fs(tmp_path: Path) -> Iterator[Path]:
    """The misbehaving tree, mounted; skipped (saying why) where FUSE cannot be mounted."""
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as e:
        pytest.skip(f"FUSE bindings not usable here: {e}")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this machine")
    mnt = tmp_path / "live"
    mnt.mkdir()
    log = (tmp_path / "livefs.log").open("w")
    proc = subprocess.Popen([sys.executable, str(HERE / "livefs.py"), str(mnt)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 15
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"cannot mount FUSE here: {(tmp_path / 'livefs.log').read_text()[-500:]}")
            time.sleep(0.05)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_eio_truncation_and_overwrite_during_a_push_are_named_and_the_rest_commits(
    server: RunningServer, live_fs: Path, tmp_path: Path
) -> None:
    r = server.cli("neo-push", "--accept-new-host-key", "--json", str(live_fs), server.remote("live"))
    assert r.returncode == 23, f"exit {r.returncode}: {r.stderr}"
    summary = json.loads(r.stdout)
    reasons = {Path(w["path"]).name: w["reason"] for w in summary["warnings_detail"]}
    assert "Input/output error" in reasons["eio.bin"], reasons
    assert "changed while it was read" in reasons["shrinks.bin"], reasons
    assert "changed while it was pushed" in reasons["changing.bin"], reasons
    assert "directory not read (Permission denied)" in reasons["locked"], reasons
    assert summary["warnings"] == 4 and summary["snapshot"] == 1, summary
    for name in ("eio.bin", "shrinks.bin", "changing.bin", "locked"):
        assert name in r.stderr, r.stderr  # named as it happens, not only counted
    assert "snapshot 1 is incomplete" in r.stderr

    out = tmp_path / "restored"
    p = server.cli("neo-pull", "--json", server.remote("live"), str(out))
    assert p.returncode == 0, p.stderr
    assert (out / "ok.txt").read_bytes() == (live_fs / "ok.txt").read_bytes()
    assert (out / "dir" / "ok2.bin").read_bytes() == (live_fs / "dir" / "ok2.bin").read_bytes()
    assert (out / "shrinks.bin").read_bytes() == bytes([9]) * (3 * 1024 * 1024 // 2)  # stored as last read
    assert not (out / "eio.bin").exists() and not (out / "changing.bin").exists()
