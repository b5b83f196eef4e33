"""Healing damaged chunks end to end: a real twistd, the real neo-push, neo-check, neo-pull and neo-admin.

A chunk whose record was altered with both CRCs recomputed (silent rot only ``--verify-data`` sees) is found by
``neo-check --verify-data``, marked by ``--repair``, and the next push of the intact file stores it again, so
every snapshot that refers to it restores byte for byte, whether that push reads every file (``--no-cache``) or
trusts its files cache (the commit then asks for the damaged chunks and the client re-reads). A file whose
intact copy is gone stays listed as lost. A chunk a pull finds rotten is marked too, and healed the same way.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support import BIN, RunningServer, assert_clean, snapshot_of
from test_stash_e2e import stamp

from neotwist.server.repository import packs

if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
    pytest.skip("OpenSSH client not installed", allow_module_level=True)


def cli(server: RunningServer, program: str, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    r = server.cli(program, "--accept-new-host-key", *args)
    assert r.returncode == code, f"{program} {args} exited {r.returncode}: {r.stderr}\n{server.log_text()[-3000:]}"
    return r


def cli_json(server: RunningServer, program: str, *args: str, code: int = 0) -> Any:
    return json.loads(cli(server, program, "--json", *args, code=code).stdout)


def index_path(server: RunningServer) -> Path:
    return next((server.data / "repo").glob("t*")) / "index.sqlite"


def first_chunk(server: RunningServer, path: str) -> bytes:
    with sqlite3.connect(index_path(server)) as db:
        (chunks,) = db.execute("SELECT chunks FROM versions WHERE path = ? AND last IS NULL", (path,)).fetchone()
    return bytes(chunks[:32])


def rot(server: RunningServer, cid: bytes, *, fix_crcs: bool = True) -> None:
    """Flip one stored byte of chunk ``cid``'s record; with ``fix_crcs`` recompute the record's data and header
    CRCs so only hashing the content (``--verify-data``) can tell."""
    with sqlite3.connect(index_path(server)) as db:
        pack, offset, length, codec, size = db.execute(
            "SELECT pack, offset, length, codec, size FROM chunks WHERE id = ?", (cid,)
        ).fetchone()
    packfile = index_path(server).parent / "packs" / f"{pack // 1000:02}" / f"{pack:08}.pack"
    with packfile.open("r+b") as f:
        f.seek(offset + packs.HEADER_SIZE)
        data = bytearray(f.read(length))
        data[length // 2] ^= 0x5A
        f.seek(offset)
        header = packs.encode_header(cid, codec, size, bytes(data)) if fix_crcs else f.read(packs.HEADER_SIZE)
        f.seek(offset)
        f.write(header + bytes(data))


def push(server: RunningServer, src: Path, *flags: str) -> Any:
    return cli_json(server, "neo-push", *flags, str(src), server.remote("t"))


def pull(server: RunningServer, snapshot: int, dest: Path, code: int = 0) -> subprocess.CompletedProcess[str]:
    return cli(server, "neo-pull", "--snapshot", str(snapshot), server.remote("t"), str(dest), code=code)


def damaged(report: dict[str, Any]) -> dict[str, list[int]]:
    return {f["path"]: f["snapshots"] for f in report["damaged_files"]}


def test_repair_marks_damage_and_the_next_push_heals_every_snapshot(server: RunningServer, tmp_path: Path) -> None:
    rng = random.Random(17)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("victim.bin", "cached.bin", "lost.bin", "bystander.bin"):
        (src / name).write_bytes(rng.randbytes(120_000))
    stamp(src, 1)
    push(server, src)
    (src / "more.txt").write_text("a second snapshot\n")
    stamp(src, 2)
    time.sleep(1.1)  # the files cache remembers files whose ctime is over a second old
    push(server, src)
    trees = {2: snapshot_of(src)}
    assert cli_json(server, "neo-check", "--verify-data", server.remote("t"))["ok"]

    victim, cached, lost = (first_chunk(server, p) for p in ("victim.bin", "cached.bin", "lost.bin"))
    for cid in (victim, cached, lost):
        rot(server, cid)
    assert cli_json(server, "neo-check", server.remote("t"))["ok"]  # the CRCs are good: only hashing tells
    found = cli_json(server, "neo-check", "--verify-data", server.remote("t"), code=1)
    assert damaged(found) == {"victim.bin": [1, 2], "cached.bin": [1, 2], "lost.bin": [1, 2]}
    assert found["damaged_chunks"] == 3 and found["marked_chunks"] == 0 and found["lost_chunks"] == 0

    # Without a repair the server believes it holds the chunks: a push that reads every file sends none.
    assert push(server, src, "--no-cache")["chunks_sent"] == 0
    assert cli(server, "neo-check", "--verify-data", server.remote("t"), code=1)

    # --repair marks them; what no push has healed yet is listed as lost.
    repaired = cli_json(server, "neo-check", "--verify-data", "--repair", server.remote("t"), code=1)
    assert repaired["repair"] is True and repaired["marked_chunks"] == 3 and repaired["lost_chunks"] == 3
    assert damaged(repaired) == {"victim.bin": [1, 2, 3], "cached.bin": [1, 2, 3], "lost.bin": [1, 2, 3]}
    assert all(f["marked"] for f in repaired["damaged_files"])
    text = cli(server, "neo-check", "--repair", server.remote("t"), code=1).stderr
    assert "lost: victim.bin in snapshot(s) 1, 2, 3" in text and "push the intact file" in text, text
    assert "marked 0 chunk(s)" in text and "3 chunk(s) lost until a push sends them again" in text, text

    # lost.bin's intact copy is gone (replaced locally); victim.bin is re-read by a push without the cache.
    (src / "lost.bin").write_bytes(b"a different file now\n")
    only = tmp_path / "only-victim"
    only.mkdir()
    shutil.copy2(src / "victim.bin", only / "victim.bin")
    healed = push(server, only, "--no-cache")  # snapshot 4 (no --delete: the other files stay)
    assert healed["chunks_sent"] == 1 and healed["retried_without_cache"] is False, healed
    after = cli_json(server, "neo-check", "--verify-data", server.remote("t"), code=1)
    assert damaged(after) == {"cached.bin": [1, 2, 3, 4], "lost.bin": [1, 2, 3, 4]} and after["lost_chunks"] == 2

    # cached.bin is unchanged and its files cache vouches for it: the commit asks for its damaged chunk, and the
    # client runs again asking about the cached files' chunks, reads cached.bin alone again and sends the chunk.
    pushed = push(server, src)
    assert pushed["snapshot"] == 5 and pushed["retried_without_cache"] is True and pushed["chunks_sent"] == 1, pushed
    assert (pushed["files_reread"], pushed["files_changed"]) == (1, 2), pushed  # cached.bin, and lost.bin (new)
    trees[5] = snapshot_of(src)
    final = cli_json(server, "neo-check", "--verify-data", server.remote("t"), code=1)
    assert damaged(final) == {"lost.bin": [1, 2, 3, 4]} and final["lost_chunks"] == 1
    assert final["damaged_files"][0]["marked"] is True

    # Every snapshot restores byte for byte but lost.bin's old version, which is named.
    for sid in (1, 2, 3, 4):
        dest = tmp_path / f"r{sid}"
        r = pull(server, sid, dest, code=1)
        assert "lost.bin" in r.stderr
        for name in ("victim.bin", "cached.bin", "bystander.bin"):
            assert (dest / name).read_bytes() == trees[2][name][1], (sid, name)
    dest = tmp_path / "latest"
    pull(server, 5, dest)
    assert snapshot_of(dest) == trees[5]

    # The owner can forget a lost file only by pruning the snapshots that hold it; then nothing is lost.
    cli_json(server, "neo-prune", "--keep-last", "1", server.remote("t"))
    clean = cli_json(server, "neo-check", "--verify-data", "--repair", server.remote("t"))
    assert clean["ok"] and clean["lost_chunks"] == 0
    assert_clean(server.log_text())


def test_a_rotten_chunk_a_pull_meets_is_marked_and_healed_by_the_next_push(
    server: RunningServer, tmp_path: Path
) -> None:
    rng = random.Random(18)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(rng.randbytes(150_000))
    (src / "b.bin").write_bytes(rng.randbytes(50_000))
    stamp(src, 1)
    time.sleep(1.1)  # the files cache remembers files whose ctime is over a second old
    push(server, src)
    rot(server, first_chunk(server, "a.bin"), fix_crcs=False)
    r = pull(server, 1, tmp_path / "broken", code=1)
    assert "a.bin" in r.stderr and "damaged" in r.stderr
    report = cli_json(server, "neo-check", server.remote("t"), code=1)  # the pull marked it: no --repair needed
    assert damaged(report) == {"a.bin": [1]} and report["lost_chunks"] == 1 and report["damaged_files"][0]["marked"]

    pushed = push(server, src)  # with the files cache: the commit asks for the chunk
    assert pushed["retried_without_cache"] is True and pushed["chunks_sent"] >= 1
    assert (pushed["files_reread"], pushed["files_changed"]) == (1, 1), pushed  # a.bin alone is read again
    assert cli_json(server, "neo-check", "--verify-data", server.remote("t"))["ok"]
    for sid in (1, pushed["snapshot"]):
        dest = tmp_path / f"r{sid}"
        pull(server, sid, dest)
        assert snapshot_of(dest) == snapshot_of(src)
    assert_clean(server.log_text())


def test_neo_admin_check_repair_beside_a_running_server(server: RunningServer, tmp_path: Path) -> None:
    rng = random.Random(19)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(rng.randbytes(100_000))
    stamp(src, 1)
    time.sleep(1.1)  # the files cache remembers files whose ctime is over a second old
    push(server, src)
    rot(server, first_chunk(server, "a.bin"))

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "neo-admin"), "--data", str(server.data), "check", *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    r = admin("alice", "t", "--verify-data", "--repair", "--json")
    assert r.returncode == 1, r.stderr
    [doc] = json.loads(r.stdout)["targets"]
    assert doc["marked_chunks"] == 1 and doc["lost_chunks"] == 1 and doc["damaged_files"][0]["marked"]
    r = admin("alice", "t")
    assert r.returncode == 1 and "a.bin  lost in snapshots 1" in r.stdout, r.stdout

    said = cli(server, "neo-push", str(src), server.remote("t")).stdout
    assert "1 file(s) the files cache called unchanged were read again" in said, said
    r = admin("--verify-data")
    assert r.returncode == 0, r.stdout
    dest = tmp_path / "back"
    pull(server, 1, dest)
    assert snapshot_of(dest) == snapshot_of(src)
    assert_clean(server.log_text())
