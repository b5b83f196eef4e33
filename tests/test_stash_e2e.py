"""The stash end to end: a real twistd, the real neo-push, neo-pull, neo-ls, neo-prune, neo-check and neo-admin.

Five pushes with edits, deletions and renames, then every snapshot restored and compared byte for byte; a deleted
file recovered into a tree without touching the rest; listings of snapshots, versions and deleted files; prune by
policy with the disk space it reclaims measured; a target that keeps no history; a corrupted chunk found by
neo-check and neo-admin check, refused by neo-pull for the one file it belongs to while the others restore.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import random
import shutil
import sqlite3
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from support import BIN, RunningServer, assert_clean, snapshot_of

from neotwist.client.timespec import format_time

if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
    pytest.skip("OpenSSH client not installed", allow_module_level=True)

OLD = 1_600_000_000


def run(server: RunningServer, program: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    r = server.cli(program, "--accept-new-host-key", *args)
    if ok:
        assert r.returncode == 0, f"{program} {args} exited {r.returncode}: {r.stderr}\n{server.log_text()[-3000:]}"
    return r


def run_json(server: RunningServer, program: str, *args: str) -> Any:
    return json.loads(run(server, program, "--json", *args).stdout)


def push(server: RunningServer, src: Path, target: str, *flags: str) -> dict[str, Any]:
    result: dict[str, Any] = run_json(server, "neo-push", "--no-cache", *flags, str(src), server.remote(target))
    return result


def pull(server: RunningServer, remote: str, dest: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return run(server, "neo-pull", *flags, remote, str(dest))


def stamp(root: Path, generation: int = 0) -> None:
    """Old mtimes that depend only on a file's path and content (a directory's: on its path), so an unchanged
    file keeps its mtime from push to push and a changed one gets a new one."""
    for p in sorted(root.rglob("*")):
        if not p.is_symlink():
            key = str(p.relative_to(root)).encode() + (b"" if p.is_dir() else p.read_bytes())
            t = (OLD + zlib.crc32(key) % 10_000_000) * 10**9
            os.utime(p, ns=(t, t))


def pack_bytes(server: RunningServer) -> int:
    """Bytes of the pack files alone: where chunk data goes (the SQLite files grow with every snapshot row)."""
    return sum(p.stat().st_size for p in (server.data / "repo").rglob("*.pack"))


def snapshot_rows(server: RunningServer, target: str) -> list[list[str]]:
    """The plain-text ``neo-ls --snapshots`` table below its header, each row's first five columns (ID, TIME,
    FILES, CHANGED, DELETED: none of them holds a space)."""
    lines = run(server, "neo-ls", "--snapshots", server.remote(target)).stdout.splitlines()
    assert lines[0].split()[:5] == ["ID", "TIME", "FILES", "CHANGED", "DELETED"], lines
    return [line.split()[:5] for line in lines[1:]]


def data_bytes(server: RunningServer) -> int:
    """Bytes the repository holds on disk (packs and SQLite files)."""
    return sum(p.stat().st_size for p in (server.data / "repo").rglob("*") if p.is_file())


def test_five_pushes_every_snapshot_restores_and_deleted_files_come_back(server: RunningServer, tmp_path: Path) -> None:
    rng = random.Random(4)
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "a.txt").write_text("version one\n" * 1000)
    (src / "old.txt").write_text("soon deleted\n")
    (src / "docs" / "b.txt").write_text("to be renamed\n" * 50)
    (src / "docs" / "c.bin").write_bytes(rng.randbytes(400_000))
    expected: dict[int, dict[str, Any]] = {}

    stamp(src, 1)
    s1 = push(server, src, "docs", "--delete")["snapshot"]
    expected[s1] = snapshot_of(src)

    with (src / "a.txt").open("a") as f:  # an edit
        f.write("version two\n")
    (src / "old.txt").unlink()  # a deletion, recorded
    stamp(src, 2)
    s2 = push(server, src, "docs", "--delete")["snapshot"]
    expected[s2] = snapshot_of(src)

    (src / "docs" / "b.txt").rename(src / "docs" / "b2.txt")  # a rename
    (src / "new.bin").write_bytes(rng.randbytes(300_000))
    stamp(src, 3)
    s3 = push(server, src, "docs", "--sync-rdel")["snapshot"]  # the original's spelling
    expected[s3] = snapshot_of(src)

    data = bytearray((src / "docs" / "c.bin").read_bytes())  # a change in the middle of a big file
    data[200_000:200_100] = rng.randbytes(100)
    (src / "docs" / "c.bin").write_bytes(bytes(data))
    a_before = expected[s3]["a.txt"]
    (src / "a.txt").unlink()  # deleted locally, pushed without --delete: the remote view keeps it
    stamp(src, 4)
    s4 = push(server, src, "docs")["snapshot"]
    expected[s4] = {**snapshot_of(src), "a.txt": a_before}

    stamp(src, 5)
    s5 = push(server, src, "docs", "--delete")["snapshot"]  # now a.txt is recorded as deleted
    expected[s5] = snapshot_of(src)
    assert [s1, s2, s3, s4, s5] == sorted({s1, s2, s3, s4, s5})

    # Every snapshot restores byte for byte (modes, mtimes, directories).
    for sid, tree in expected.items():
        dest = tmp_path / f"restore-{sid}"
        pull(server, server.remote("docs"), dest, "--snapshot", str(sid))
        assert snapshot_of(dest) == tree, f"snapshot {sid}"

    listing = run_json(server, "neo-ls", server.remote("docs"), "--snapshots")
    snaps = listing["snapshots"]
    assert [s["id"] for s in snaps] == [s1, s2, s3, s4, s5]
    assert [s["time"] for s in snaps] == sorted(s["time"] for s in snaps)
    assert snaps[0]["bytes_added"] > 400_000 // 2  # the first push stored the data (compressed)
    assert snaps[3]["bytes_added"] < 100_000  # the 100-byte edit of c.bin stored about one chunk
    assert [s["delete"] for s in snaps] == [True, True, True, False, True]

    # --at picks the newest snapshot at or before a time: the time of s2 itself, and just before s3.
    at_s2 = snaps[1]["time"]
    dest = tmp_path / "at-s2"
    pull(server, server.remote("docs"), dest, "--at", f"@{at_s2}")
    assert snapshot_of(dest) == expected[s2]
    files = run_json(server, "neo-ls", "-R", "--at", f"@{(at_s2 + snaps[2]['time']) / 2}", server.remote("docs"))
    assert files["snapshot"] == s2
    assert {e["path"] for e in files["entries"]} == set(expected[s2]) | {""}
    too_early = run(server, "neo-ls", "--at", "@1000", server.remote("docs"), ok=False)
    assert too_early.returncode == 1 and "no snapshot was taken at or before" in too_early.stderr

    versions = run_json(server, "neo-ls", server.remote("docs"), "--versions", "a.txt")["versions"]
    assert [(v["snapshot"], v["until"]) for v in versions] == [(s1, s2), (s2, s5)]
    assert [v["size"] for v in versions] == [len("version one\n" * 1000), len("version one\n" * 1000 + "version two\n")]

    deleted = {d["path"]: d for d in run_json(server, "neo-ls", server.remote("docs"), "--deleted")["deleted"]}
    assert set(deleted) == {"old.txt", "docs/b.txt", "a.txt"}
    assert (deleted["old.txt"]["deleted_in"], deleted["old.txt"]["last_snapshot"]) == (s2, s1)
    assert (deleted["docs/b.txt"]["deleted_in"], deleted["docs/b.txt"]["last_snapshot"]) == (s3, s2)
    assert (deleted["a.txt"]["deleted_in"], deleted["a.txt"]["last_snapshot"]) == (s5, s4)
    sub = run_json(server, "neo-ls", server.remote("docs/docs"), "--deleted")["deleted"]
    assert [d["path"] for d in sub] == ["b.txt"]  # relative to REMOTE's path

    # Recover one deleted file into a working tree: only that file appears, nothing else is touched.
    work = tmp_path / "work"
    shutil.copytree(src, work, symlinks=True)
    before = snapshot_of(work)
    pull(server, server.remote("docs/old.txt"), work, "--snapshot", str(deleted["old.txt"]["last_snapshot"]))
    after = snapshot_of(work)
    assert after.pop("old.txt") == expected[s1]["old.txt"]
    assert {k: v for k, v in after.items() if k != ""} == before
    # ... and a renamed-away file to a new name, by time.
    pull(server, server.remote("docs/docs/b.txt"), work / "docs" / "b-restored.txt", "--at", f"@{at_s2}")
    assert (work / "docs" / "b-restored.txt").read_text() == "to be renamed\n" * 50
    assert_clean(server.log_text())


def test_a_time_shown_by_neo_ls_picks_that_snapshot_and_an_unchanged_push_adds_nothing(
    server: RunningServer, tmp_path: Path
) -> None:
    """Snapshots are stamped with fractional server time and shown to the second: the shown TIME, given back to
    --at, must pick that very snapshot (not the one before it, and the first one must not be "too early")."""
    rng = random.Random(9)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n" * 500)
    (src / "b.bin").write_bytes(rng.randbytes(300_000))
    (src / "sub" / "c.txt").write_text("charlie\n")
    stamp(src)
    first = push(server, src, "t")
    t1 = run_json(server, "neo-ls", "--snapshots", server.remote("t"))["snapshots"][0]["time"]
    time.sleep(max(0.0, math.floor(t1) + 1.05 - time.time()))  # the next snapshot falls in a later second
    packs = pack_bytes(server)
    second = push(server, src, "t")  # nothing changed
    assert (second["new_chunks"], second["new_bytes"], second["files_changed"]) == (0, 0, 3)  # --no-cache reads
    assert pack_bytes(server) == packs  # not one byte more chunk data

    snaps = run_json(server, "neo-ls", "--snapshots", server.remote("t"))["snapshots"]
    assert [s["id"] for s in snaps] == [first["snapshot"], second["snapshot"]]
    assert [(s["files"], s["changed"], s["bytes_added"], s["new_chunks"]) for s in snaps[1:]] == [(3, 0, 0, 0)]
    assert snaps[0]["files"] == 3 and snaps[0]["bytes_added"] > 300_000
    rows = snapshot_rows(server, "t")
    # FILES counts files only; CHANGED counts the two directories too ('' and sub)
    assert [(int(r[0]), int(r[2]), int(r[3])) for r in rows] == [(first["snapshot"], 3, 5), (second["snapshot"], 3, 0)]
    assert rows[0][1] != rows[1][1] and all(math.modf(s["time"])[0] > 0 for s in snaps)  # shown to the second

    for sid, shown, _files, _changed, _deleted in rows:
        listed = run_json(server, "neo-ls", "--at", shown, server.remote("t"))
        assert listed["snapshot"] == int(sid), (shown, snaps)
        pulled = run_json(server, "neo-pull", "--at", shown, server.remote("t"), str(tmp_path / f"at-{sid}"))
        assert pulled["snapshot"] == int(sid), (shown, snaps)
        assert snapshot_of(tmp_path / f"at-{sid}") == snapshot_of(src)
    # The second before the first snapshot's has none: the message quotes the TIME as given, and the oldest.
    early = datetime.datetime.fromisoformat(rows[0][1]) - datetime.timedelta(seconds=1)
    r = run(server, "neo-ls", "--at", early.isoformat(), server.remote("t"), ok=False)
    assert r.returncode == 1
    assert f"no snapshot was taken at or before {early.isoformat()}; the oldest is {rows[0][0]} at {rows[0][1]}" in (
        r.stderr
    )


def test_prune_keeps_what_the_policy_says_and_gc_reclaims_disk(server: RunningServer, tmp_path: Path) -> None:
    rng = random.Random(5)
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep.txt").write_text("always here\n" * 100)
    ids = []
    trees = {}
    for n in range(4):
        for old in src.glob("unique-*"):
            old.unlink()
        (src / f"unique-{n}.bin").write_bytes(rng.randbytes(2 * 1024 * 1024))  # incompressible: 2 MiB each
        stamp(src, n)
        sid = push(server, src, "t", "--delete")["snapshot"]
        ids.append(sid)
        trees[sid] = snapshot_of(src)

    refused = run(server, "neo-prune", server.remote("t"), ok=False)
    assert refused.returncode == 2 and "--keep" in refused.stderr

    dry = run_json(server, "neo-prune", "--dry-run", "--keep-last", "2", server.remote("t"))
    assert (dry["dry_run"], dry["kept"], dry["removed"]) == (True, 2, 2)
    assert [s["keep"] for s in dry["snapshots"]] == [False, False, True, True]
    assert [s["id"] for s in run_json(server, "neo-ls", "--snapshots", server.remote("t"))["snapshots"]] == ids

    before = data_bytes(server)
    pruned = run_json(server, "neo-prune", "--keep-last", "2", server.remote("t"))
    after = data_bytes(server)
    assert (pruned["kept"], pruned["removed"]) == (2, 2)
    assert pruned["reclaimed_bytes"] >= 4 * 1024 * 1024 * 0.95  # the two unique files of the pruned snapshots
    assert before - after >= 4 * 1024 * 1024 * 0.9, (before, after)
    assert [s["id"] for s in run_json(server, "neo-ls", "--snapshots", server.remote("t"))["snapshots"]] == ids[2:]
    for sid in ids[2:]:
        dest = tmp_path / f"r{sid}"
        pull(server, server.remote("t"), dest, "--snapshot", str(sid))
        assert snapshot_of(dest) == trees[sid]
    gone = run(server, "neo-pull", "--snapshot", str(ids[0]), server.remote("t"), str(tmp_path / "gone"), ok=False)
    assert gone.returncode == 1 and f"no snapshot {ids[0]}" in gone.stderr
    # A pruned snapshot's deleted files are no longer offered for recovery.
    deleted = run_json(server, "neo-ls", "--deleted", server.remote("t"))["deleted"]
    assert [d["path"] for d in deleted] == ["unique-2.bin"]
    checked = run_json(server, "neo-check", "--verify-data", server.remote("t"))
    assert checked["ok"] and checked["damaged_files"] == []
    assert_clean(server.log_text())


def test_a_target_without_history_keeps_only_its_latest_snapshot(server: RunningServer, tmp_path: Path) -> None:
    rng = random.Random(6)
    src = tmp_path / "src"
    src.mkdir()
    sizes = []
    for n in range(3):
        for old in src.glob("*.bin"):
            old.unlink()
        (src / f"data-{n}.bin").write_bytes(rng.randbytes(3 * 1024 * 1024))
        stamp(src, n)
        push(server, src, "scratch", "--delete", "--no-sformat")  # the original's name for --no-history
        sizes.append(data_bytes(server))
    snaps = run_json(server, "neo-ls", "--snapshots", server.remote("scratch"))["snapshots"]
    assert len(snaps) == 1
    assert sizes[2] < sizes[0] + 1024 * 1024, sizes  # not three times 3 MiB: older data was reclaimed
    assert run_json(server, "neo-ls", "--deleted", server.remote("scratch"))["deleted"] == []
    dest = tmp_path / "back"
    pull(server, server.remote("scratch"), dest)
    assert snapshot_of(dest) == snapshot_of(src)


def _chunk_location(server: RunningServer, path: str) -> tuple[Path, int, int]:
    """(pack file, offset of the stored bytes, their length) of the first chunk of ``path``'s current version."""
    tdir = next((server.data / "repo").glob("t*"))
    with sqlite3.connect(tdir / "index.sqlite") as db:
        (chunks,) = db.execute("SELECT chunks FROM versions WHERE path = ? AND last IS NULL", (path,)).fetchone()
        pack, offset, length = db.execute(
            "SELECT pack, offset, length FROM chunks WHERE id = ?", (bytes(chunks[:32]),)
        ).fetchone()
    packfile = tdir / "packs" / f"{pack // 1000:02}" / f"{pack:08}.pack"
    return packfile, offset + 53, length


def test_a_corrupted_chunk_is_reported_and_only_its_file_fails_to_restore(
    server: RunningServer, tmp_path: Path
) -> None:
    rng = random.Random(8)
    src = tmp_path / "src"
    src.mkdir()
    (src / "victim.bin").write_bytes(rng.randbytes(200_000))
    (src / "bystander.bin").write_bytes(rng.randbytes(200_000))
    (src / "note.txt").write_text("fine\n")
    stamp(src, 1)
    push(server, src, "c")
    assert run_json(server, "neo-check", "--verify-data", server.remote("c"))["ok"]

    packfile, offset, length = _chunk_location(server, "victim.bin")
    with packfile.open("r+b") as f:
        f.seek(offset + length // 2)
        byte = f.read(1)
        f.seek(offset + length // 2)
        f.write(bytes([byte[0] ^ 0xFF]))

    r = run(server, "neo-check", server.remote("c"), ok=False)
    assert r.returncode == 1
    assert "victim.bin" in r.stderr and "bystander.bin" not in r.stderr and "DAMAGED" in r.stderr
    report = json.loads(run(server, "neo-check", "--json", server.remote("c"), ok=False).stdout)
    assert report["ok"] is False and report["damaged_chunks"] == 1
    assert [f["path"] for f in report["damaged_files"]] == ["victim.bin"]
    assert report["damaged_snapshots"] == [1]

    admin = subprocess.run(
        [str(BIN / "neo-admin"), "--data", str(server.data), "check", "--json"], capture_output=True, text=True
    )
    assert admin.returncode == 1, admin.stderr
    assert "victim.bin" in admin.stdout

    dest = tmp_path / "dest"
    r = run(server, "neo-pull", server.remote("c"), str(dest), ok=False)
    assert r.returncode == 1  # incomplete: the rest is restored
    assert "victim.bin" in r.stderr and "damaged" in r.stderr
    assert not (dest / "victim.bin").exists()
    assert (dest / "bystander.bin").read_bytes() == (src / "bystander.bin").read_bytes()
    assert (dest / "note.txt").read_text() == "fine\n"

    # The damaged file alone: named by its path in LOCAL (the server's request path for it is ''), with why.
    alone = tmp_path / "alone"
    alone.mkdir()
    r = run(server, "neo-pull", server.remote("c/victim.bin"), str(alone), ok=False)
    assert r.returncode == 1  # incomplete: the rest is restored
    assert "neo-pull: damaged, not restored: victim.bin: chunk " in r.stderr, r.stderr
    assert ": : " not in r.stderr and list(alone.iterdir()) == []
    r = run(server, "neo-pull", server.remote("c/victim.bin"), str(tmp_path / "renamed.bin"), ok=False)
    assert r.returncode == 1 and "damaged, not restored: renamed.bin: chunk " in r.stderr, r.stderr
    assert not (tmp_path / "renamed.bin").exists()
    assert "Traceback" not in server.log_text()


def test_a_missing_or_deleted_path_is_named_and_the_snapshot_holding_it_suggested(
    server: RunningServer, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "t").mkdir(parents=True)
    (src / "t" / "keep.txt").write_text("kept\n")
    (src / "t" / "gone.txt").write_text("soon gone\n")
    stamp(src)
    s1 = push(server, src, "docs")["snapshot"]
    gone = snapshot_of(src)["t/gone.txt"]
    (src / "t" / "gone.txt").unlink()
    # the plain-text summary says how many paths --delete recorded as deleted (the --json has "deleted")
    text = run(server, "neo-push", "--no-cache", "--delete", str(src), server.remote("docs")).stdout
    assert text.startswith(f"snapshot {s1 + 1}: ") and ", 1 recorded as deleted\n" in text, text
    s2 = s1 + 1
    assert ", 0 recorded as deleted" in run(server, "neo-push", "--delete", str(src), server.remote("x")).stdout
    assert "recorded as deleted" not in run(server, "neo-push", str(src), server.remote("x")).stdout

    for program, args in [("neo-ls", ()), ("neo-pull", (str(tmp_path / "d1"),))]:
        r = run(server, program, server.remote("docs/t/nope"), *args, ok=False)
        assert r.returncode == 1
        assert f"nothing at 't/nope' in snapshot {s2}" in r.stderr, r.stderr
        r = run(server, program, server.remote("docs/t/gone.txt"), *args, ok=False)
        assert r.returncode == 1
        assert f"'t/gone.txt' was deleted in that snapshot; snapshot {s1} holds its last version" in r.stderr, r.stderr
        assert f"--snapshot {s1}" in r.stderr and "neo-ls --versions t/gone.txt" in r.stderr
    assert not (tmp_path / "d1").exists()
    # following the advice works
    pull(server, server.remote("docs/t/gone.txt"), tmp_path / "back.txt", "--snapshot", str(s1))
    assert snapshot_of(tmp_path)["back.txt"] == gone
    versions = run_json(server, "neo-ls", server.remote("docs"), "--versions", "t/gone.txt")["versions"]
    assert [(v["snapshot"], v["until"]) for v in versions] == [(s1, s2)]
    r = run(server, "neo-ls", server.remote("docs/t"), "--versions", "nope", ok=False)
    assert r.returncode == 1 and "no stored version of 't/nope'" in r.stderr, r.stderr
    assert_clean(server.log_text())


def _decisions(reply: dict[str, Any]) -> list[tuple[int, bool, list[str]]]:
    return [(s["id"], s["keep"], s["reasons"]) for s in reply["snapshots"]]


def test_prune_by_day_and_by_age_through_the_server_and_the_targets_listing(
    server: RunningServer, tmp_path: Path
) -> None:
    """--keep-daily and --keep-within decided by the server's clock, dry run and real. Snapshots seconds apart
    share their day (newest of it kept) unless they straddle a UTC midnight, which the expectation computes; the
    --keep-within cut is put in a 6-second gap between the second and third snapshot, measured from the
    snapshots' own server times, so the run's own delay cannot move it past either."""
    rng = random.Random(10)
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep.txt").write_text("always\n")
    ids: list[int] = []
    trees = {}
    for n in range(4):
        for old in src.glob("unique-*"):
            old.unlink()
        (src / f"unique-{n}.bin").write_bytes(rng.randbytes(60_000))
        stamp(src, n)
        if n == 2:
            t2 = run_json(server, "neo-ls", "--snapshots", server.remote("t"))["snapshots"][-1]["time"]
            time.sleep(max(0.0, t2 + 6 - time.time()))
        ids.append(push(server, src, "t", "--delete")["snapshot"])
        trees[ids[-1]] = snapshot_of(src)
    snaps = run_json(server, "neo-ls", "--snapshots", server.remote("t"))["snapshots"]
    times = {s["id"]: s["time"] for s in snaps}
    assert [s["id"] for s in snaps] == ids and times[ids[2]] - times[ids[1]] >= 6

    # neo-ls HOST: every target with its snapshots, latest, files (of the latest snapshot) and stored bytes.
    listed = run_json(server, "neo-ls", f"ssh://alice@127.0.0.1:{server.ssh_port}")["targets"]
    assert set(listed[0]) == {
        "name", "encrypted", "snapshots", "latest", "latest_time", "files", "stored_bytes", "right", "owner",
    }  # fmt: skip
    (t,) = listed
    assert (t["name"], t["encrypted"], t["snapshots"], t["latest"], t["files"]) == ("t", False, 4, ids[-1], 2)
    assert (t["latest_time"], t["right"], t["owner"]) == (times[ids[-1]], "full", "")
    assert t["stored_bytes"] == sum(s["bytes_added"] for s in snaps) >= 4 * 60_000
    lines = run(server, "neo-ls", f"ssh://alice@127.0.0.1:{server.ssh_port}").stdout.splitlines()
    assert lines[0].split() == ["TARGET", "SNAPSHOTS", "LATEST", "FILES", "STORED"]
    assert lines[1].split()[:4] == ["t", "4", format_time(times[ids[-1]]), "2"]

    # --keep-daily 2: the newest snapshot of each of the two newest UTC days that have one (usually one day).
    days: dict[datetime.date, int] = {}
    for sid in ids:
        days[datetime.datetime.fromtimestamp(times[sid], tz=datetime.UTC).date()] = sid  # the day's newest
    daily = set(sorted(days.values())[-2:])
    dry = run_json(server, "neo-prune", "--dry-run", "--keep-daily", "2", server.remote("t"))
    assert _decisions(dry) == [
        (sid, sid in daily, (["latest"] if sid == ids[-1] else []) + (["daily"] if sid in daily else []))
        for sid in ids
    ]
    assert (dry["dry_run"], dry["kept"], dry["removed"]) == (True, len(daily), 4 - len(daily))
    assert run_json(server, "neo-prune", "--dry-run", "--keep-within", "1d", server.remote("t"))["removed"] == 0

    def within() -> str:
        """A --keep-within whose cut falls just after the second snapshot: the server's now is later than ours,
        which moves the cut later, by far less than the gap before the third."""
        return f"{time.time() - times[ids[1]] - 0.2:.3f}s"

    expected = [(ids[0], False, []), (ids[1], False, []), (ids[2], True, ["within"]),
                (ids[3], True, ["latest", "within"])]  # fmt: skip
    dry = run_json(server, "neo-prune", "--dry-run", "--keep-within", within(), server.remote("t"))
    assert _decisions(dry) == expected
    assert [s["id"] for s in run_json(server, "neo-ls", "--snapshots", server.remote("t"))["snapshots"]] == ids
    real = run_json(server, "neo-prune", "--keep-within", within(), server.remote("t"))
    assert _decisions(real) == expected and (real["dry_run"], real["kept"], real["removed"]) == (False, 2, 2)
    assert real["reclaimed_bytes"] > 0
    assert [s["id"] for s in run_json(server, "neo-ls", "--snapshots", server.remote("t"))["snapshots"]] == ids[2:]
    for sid in ids[2:]:
        pull(server, server.remote("t"), tmp_path / f"r{sid}", "--snapshot", str(sid))
        assert snapshot_of(tmp_path / f"r{sid}") == trees[sid]
    (t,) = run_json(server, "neo-ls", f"ssh://alice@127.0.0.1:{server.ssh_port}")["targets"]
    assert (t["snapshots"], t["latest"]) == (2, ids[-1])
    assert_clean(server.log_text())


def test_verify_data_finds_a_chunk_whose_record_is_valid_but_content_wrong(
    server: RunningServer, tmp_path: Path
) -> None:
    """A record rewritten with other bytes of the same length and a matching CRC passes the plain check (headers
    and CRCs) and only --verify-data, which hashes every chunk, finds it; neo-pull refuses the file too."""
    from neotwist.server.repository import packs

    rng = random.Random(11)
    src = tmp_path / "src"
    src.mkdir()
    (src / "forged.bin").write_bytes(rng.randbytes(100_000))  # incompressible: stored raw (codec 0)
    (src / "fine.bin").write_bytes(rng.randbytes(100_000))
    stamp(src)
    push(server, src, "v")
    packfile, offset, length = _chunk_location(server, "forged.bin")
    with packfile.open("r+b") as f:
        f.seek(offset - packs.HEADER_SIZE)
        header = f.read(packs.HEADER_SIZE)
        stored = f.read(length)
        _magic, cid, codec, size = header[:4], header[4:36], header[36], int.from_bytes(header[37:41])
        assert codec == 0 and size == length, (codec, size, length)
        forged = bytes(b ^ 0x55 for b in stored)
        f.seek(offset - packs.HEADER_SIZE)
        f.write(packs.encode_header(cid, codec, size, forged) + forged)  # a valid record: wrong bytes, good CRC

    plain = run_json(server, "neo-check", server.remote("v"))
    assert plain["ok"] is True and plain["verified_data"] is False  # the CRCs all match
    r = run(server, "neo-check", "--verify-data", server.remote("v"), ok=False)
    assert r.returncode == 1
    assert "damaged: forged.bin in snapshot(s) 1" in r.stderr and "fine.bin" not in r.stderr, r.stderr
    report = json.loads(run(server, "neo-check", "--json", "--verify-data", server.remote("v"), ok=False).stdout)
    assert (report["ok"], report["verified_data"], report["damaged_chunks"]) == (False, True, 1)
    damaged = [(f["path"], f["snapshots"], f["chunk"]) for f in report["damaged_files"]]
    assert damaged == [("forged.bin", [1], cid.hex())]
    assert "hash" in report["damaged_files"][0]["why"]
    dest = tmp_path / "dest"
    r = run(server, "neo-pull", server.remote("v"), str(dest), ok=False)
    assert r.returncode == 1 and "damaged, not restored: forged.bin" in r.stderr, r.stderr
    assert not (dest / "forged.bin").exists() and (dest / "fine.bin").read_bytes() == (src / "fine.bin").read_bytes()
    assert "Traceback" not in server.log_text()
