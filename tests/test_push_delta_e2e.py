"""A push lists only what changed since the last push (end to end: a real twistd, the real neo-push and
neo-pull): when the files cache's snapshot is still the target's latest, unchanged entries are not sent and
deleted paths are named, and every snapshot still restores whole."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import pytest
from support import RunningServer, assert_clean, snapshot_of
from test_heal_e2e import pull, push
from test_stash_e2e import stamp

if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
    pytest.skip("OpenSSH client not installed", allow_module_level=True)


def tree(root: Path) -> None:
    rng = random.Random(5)
    for i in range(400):
        d = root / f"d{i % 20:02}" / ("sub" if i % 3 == 0 else "")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:03}").write_bytes(rng.randbytes(rng.randrange(0, 3000)))
    (root / "link").symlink_to("d00/f000")


def test_an_unchanged_push_lists_nothing_and_changes_are_all_kept(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    tree(src)
    stamp(src, 1)
    # the files cache does not trust a file changed in the second before a push (its ctime is that recent):
    # wait it out, or the second push would list those files again
    time.sleep(1.1)
    first = push(server, src, "--delete")
    again = push(server, src, "--delete")
    assert again["snapshot"] == first["snapshot"] + 1
    assert again["bytes_sent"] < 2000 < first["bytes_sent"], (first["bytes_sent"], again["bytes_sent"])

    # change a few files, a mode, remove a file and a whole directory, add some, re-point the link
    (src / "d01" / "f001").write_bytes(b"new content")
    (src / "d02" / "f002").chmod(0o600)
    (src / "d03" / "sub" / "f003").unlink()
    shutil.rmtree(src / "d04")
    (src / "d05" / "added").write_bytes(b"added")
    (src / "newdir" / "deeper").mkdir(parents=True)
    (src / "newdir" / "deeper" / "x").write_bytes(b"x")
    (src / "link").unlink()
    (src / "link").symlink_to("d05/added")
    stamp(src, 2)
    changed = push(server, src, "--delete")
    assert changed["deleted"] > 0 and changed["bytes_sent"] < first["bytes_sent"] / 4, changed
    back = tmp_path / "back"
    pull(server, changed["snapshot"], back)
    assert snapshot_of(back) == snapshot_of(src)
    old = tmp_path / "old"
    pull(server, first["snapshot"], old)  # the earlier snapshot is whole too
    assert (old / "d04").is_dir() and (old / "d03" / "sub" / "f003").exists()
    assert_clean(server.log_text())


def test_another_push_in_between_means_a_full_listing(server: RunningServer, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    tree(a)
    stamp(a, 1)
    push(server, a, "--delete")
    (b / "only").mkdir(parents=True)
    (b / "only" / "b").write_bytes(b"from b")
    stamp(b, 1)
    push(server, b, "--delete")  # another root, another cache: the target's latest is b's now
    again = push(server, a, "--delete")  # a's cache names an older snapshot: everything is listed
    assert again["bytes_sent"] > 2000, again
    back = tmp_path / "back"
    pull(server, again["snapshot"], back)
    assert snapshot_of(back) == snapshot_of(a)
