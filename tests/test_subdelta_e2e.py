"""Scattered small edits in a big file send about what changed, not whole chunks (end to end: a real twistd, the
real neo-push and neo-pull over OpenSSH). The server signs the previous version of each changed chunk, the
client sends the new one as a delta, and the file restores byte for byte: the second push moves no more bytes
than rsync's delta transfer does for the same edit (measured here when rsync is installed)."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from support import RunningServer, assert_clean, snapshot_of
from test_heal_e2e import pull, push

if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
    pytest.skip("OpenSSH client not installed", allow_module_level=True)

SIZE = 16 * 1024 * 1024
EDITS = 100


def edit(path: Path, rng: random.Random) -> None:
    """EDITS overwrites of 100 bytes at scattered offsets, in place."""
    with path.open("r+b") as f:
        for _ in range(EDITS):
            f.seek(rng.randrange(0, SIZE - 100))
            f.write(rng.randbytes(100))


def rsync_bytes(before: bytes, src: Path, work: Path) -> int:
    """Bytes rsync's delta transfer moves (sent + received) to bring ``before`` up to ``src`` (``--ignore-times``:
    the copy written now may have the edited file's size and mtime, and rsync would skip it)."""
    dest = work / "rsync-dest"
    dest.mkdir()
    (dest / src.name).write_bytes(before)
    out = subprocess.run(
        ["rsync", "--no-whole-file", "--ignore-times", "--stats", str(src), str(dest / src.name)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert (dest / src.name).read_bytes() == src.read_bytes()
    sent = int(re.search(r"Total bytes sent: ([\d,]+)", out).group(1).replace(",", ""))  # type: ignore[union-attr]
    received = int(re.search(r"Total bytes received: ([\d,]+)", out).group(1).replace(",", ""))  # type: ignore[union-attr]
    return sent + received


def test_scattered_edits_send_only_what_changed(server: RunningServer, tmp_path: Path) -> None:
    rng = random.Random(16)
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big.bin"
    big.write_bytes(rng.randbytes(SIZE))
    time.sleep(1.1)  # the files cache remembers files whose ctime is over a second old
    first = push(server, src)
    before = big.read_bytes()
    edit(big, rng)
    second = push(server, src)
    moved = second["bytes_sent"] + second["bytes_received"]
    # rsync moves its block signatures and one block per edit; without rsync, bound it by what a block of
    # rsync's size (the square root of the file's size) per edit would cost
    bound = rsync_bytes(before, big, tmp_path) if shutil.which("rsync") else EDITS * 4096 + 100_000
    assert moved <= bound, (moved, bound, second)
    assert second.get("chunks_sent_as_deltas", 0) > 0, second
    assert second["bytes_sent"] < first["bytes_sent"] / 20, (first["bytes_sent"], second)

    back = tmp_path / "back"
    pull(server, second["snapshot"], back)
    assert snapshot_of(back) == snapshot_of(src)
    old = tmp_path / "old"
    pull(server, first["snapshot"], old)
    assert (old / "big.bin").read_bytes() == before
    assert_clean(server.log_text())
