"""--password leaves the process's command line (/proc/PID/cmdline) once parsed, and the user is warned."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from support import BIN

from neotwist.client.argvsecret import MASK, masked


def test_masked() -> None:
    assert masked(["neo-push", "--password", "s3cret", "a", "b"]) == ["neo-push", "--password", MASK, "a", "b"]
    assert masked(["neo-push", "--authcode=s3cret", "a"]) == ["neo-push", f"--authcode={MASK}", "a"]
    assert masked(["neo-push", "--auth", "s3cret"]) == ["neo-push", "--auth", MASK]
    assert masked(["neo-push", "--password-stdin", "a"]) is None


def test_a_running_neo_push_does_not_show_its_password(tmp_path: Path) -> None:
    """The client is held in its TLS handshake by a server that never answers, long enough to be looked at."""
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    secret = "hunter2-" + "x" * 20
    (tmp_path / "src").mkdir()
    process = subprocess.Popen(
        [str(BIN / "neo-push"), "--password", secret, str(tmp_path / "src"),
         f"tls://alice@127.0.0.1:{port}/t"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    try:
        conn, _ = silent.accept()  # connected: the arguments were parsed long before
        conn.settimeout(0)
        deadline = time.monotonic() + 10
        while True:
            cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
            if MASK.encode() in cmdline or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert secret.encode() not in cmdline, cmdline
        assert b"--password " + MASK.encode() in cmdline.replace(b"\0", b" "), cmdline
    finally:
        process.kill()
        _, err = process.communicate(timeout=10)
        silent.close()
    assert "warning: --password was visible to other users" in err.decode(), err
