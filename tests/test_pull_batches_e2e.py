"""A restore of many small files, end to end (a real twistd, the real neo-push and neo-pull): small files are
fetched in batches (``get_files``) and written a batch per worker hop; what that must keep is checked here.
Damage in a batch costs only the damaged file: the batch is fetched again file by file, the damaged one is
named and left out, every other file is restored byte for byte."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import pytest
from support import RunningServer, assert_clean, snapshot_of
from test_heal_e2e import first_chunk, pull, push, rot
from test_stash_e2e import stamp

if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
    pytest.skip("OpenSSH client not installed", allow_module_level=True)


def small_tree(root: Path, seed: int) -> None:
    """600 small files over 30 directories, a tenth of them copies of another (chunks shared across a batch),
    some empty, one directory deep inside another."""
    rng = random.Random(seed)
    made: list[bytes] = []
    for i in range(600):
        d = root / f"d{i % 30:02}" / ("deep/er" if i % 7 == 0 else "")
        d.mkdir(parents=True, exist_ok=True)
        if made and i % 10 == 0:
            data = rng.choice(made)
        elif i % 50 == 0:
            data = b""
        else:
            data = rng.randbytes(rng.randrange(1, 40_000))
        made.append(data)
        (d / f"f{i:03}.bin").write_bytes(data)


def test_a_tree_of_small_files_restores_whole(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    small_tree(src, 1)
    (src / "d00" / "big.bin").write_bytes(random.Random(2).randbytes(3_000_000))  # fetched on its own
    stamp(src, 1)
    push(server, src)
    dest = tmp_path / "back"
    pull(server, 1, dest)
    assert snapshot_of(dest) == snapshot_of(src)
    assert_clean(server.log_text())


def test_damage_in_a_batch_costs_only_the_damaged_file(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    small_tree(src, 3)
    (src / "d05" / "victim.bin").write_bytes(random.Random(4).randbytes(30_000))
    stamp(src, 1)
    time.sleep(1.1)
    push(server, src)
    rot(server, first_chunk(server, "d05/victim.bin"), fix_crcs=False)
    dest = tmp_path / "back"
    r = pull(server, 1, dest, code=1)
    assert "d05/victim.bin" in r.stderr and "damaged" in r.stderr, r.stderr
    assert not (dest / "d05" / "victim.bin").exists()
    (src / "d05" / "victim.bin").unlink()
    want, got = snapshot_of(src), snapshot_of(dest)
    want.pop("d05"), got.pop("d05")  # its mtime moved with the unlink above
    assert got == want
