"""``--json-progress`` with the real CLIs and a real ``twistd``: status lines, then the summary."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from support import RunningServer

if shutil.which("ssh-keygen") is None:
    pytest.skip("OpenSSH client not installed", allow_module_level=True)


def _lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_json_progress_streams_status_then_the_summary(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(3)
    sizes = [rng.randrange(0, 300_000) for _ in range(60)]
    for i, size in enumerate(sizes):
        (src / f"f{i:02}").write_bytes(rng.randbytes(size))
    pushed = server.cli("neo-push", "--accept-new-host-key", "--json-progress", str(src), server.remote("t"))
    assert pushed.returncode == 0, pushed.stderr
    lines = _lines(pushed.stdout)
    *status, summary = lines
    assert status and all(s["message_type"] == "status" and s["action"] == "push" for s in status), lines
    last = status[-1]
    assert last["total_files"] == last["files_done"] == 61  # the files and the root directory
    assert last["total_bytes"] == last["bytes_done"] == sum(sizes)
    assert last["percent_done"] == 1.0
    # the summary is --json's, with its keys, marked as restic marks it
    assert summary["message_type"] == "summary" and summary["snapshot"] == 1
    for key in ("files_scanned", "files_changed", "bytes_sent", "bytes_received", "elapsed_s"):
        assert key in summary, key

    dest = tmp_path / "dest"
    pulled = server.cli("neo-pull", "--json-progress", server.remote("t"), str(dest))
    assert pulled.returncode == 0, pulled.stderr
    *status, summary = _lines(pulled.stdout)
    assert status[-1]["total_bytes"] == status[-1]["bytes_done"] == sum(sizes)
    assert summary["message_type"] == "summary" and summary["files_changed"] == 60
