"""Stopping the server (SIGTERM, as systemd does) while a push uploads: the uploads running in worker threads
finish before the repository closes, so the log stays clean, and the next push resumes and restores whole."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

from support import BIN, RunningServer, assert_clean, snapshot_of

MiB = 1024 * 1024


def stored_bytes(server: RunningServer) -> int:
    return sum(p.stat().st_size for p in (server.data / "repo").glob("t*/packs/*/*.pack"))


def test_sigterm_during_a_push_stops_cleanly_and_the_push_resumes(tmp_path: Path) -> None:
    server = RunningServer(tmp_path)
    try:
        src = tmp_path / "src"
        src.mkdir()
        rng = random.Random(3)
        for i in range(4):
            (src / f"big{i}.bin").write_bytes(rng.randbytes(32 * MiB))
        push = subprocess.Popen(
            [str(BIN / "neo-push"), "-i", str(server.key), "--known-hosts", str(server.known_hosts),
             "--accept-new-host-key", "--no-cache", str(src), server.remote("t")],
            env=server.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while stored_bytes(server) < 8 * MiB and push.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert push.poll() is None, "the push ended before the server could be stopped under it"
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)  # twistd re-raises the signal it handled
        push.wait(timeout=60)
        assert push.returncode == 1
        log = server.log_text()
        assert "Received SIGTERM" in log
        assert_clean(log)  # no upload met a closed index

        server.start()
        r = server.cli("neo-push", "--no-cache", str(src), server.remote("t"))
        assert r.returncode == 0, r.stderr
        out = tmp_path / "out"
        r = server.cli("neo-pull", server.remote("t"), str(out))
        assert r.returncode == 0, r.stderr
        assert snapshot_of(out) == snapshot_of(src)
    finally:
        server.stop()
