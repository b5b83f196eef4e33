"""Checking a target: clean ones pass, every kind of damage is found and traced to files and snapshots, and
``neo-admin check`` does the same from outside the server, read-only."""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import zstandard
from repo_support import commit, dir_entry, every_target, file_entry, ids_of, pack_bytes, put, store_chunk, view
from support import RunningServer, assert_clean

from neotwist.chunking import DEFAULT_PARAMS
from neotwist.server.accounts import AccountStore
from neotwist.server.repository import Repository, StoreSizes, Target, packs
from neotwist.wire.messages import CODEC_SEALED, Entry

NEO_ADMIN = Path(sys.executable).with_name("neo-admin")


def history(t: Target) -> dict[str, bytes]:
    """Four snapshots; docs/a.txt (one chunk) is in 1..3 unchanged, then replaced. Snapshot 2 is pruned.
    Returns the contents of the files of the latest snapshot."""
    a = file_entry("docs/a.txt", b"alpha " * 500, target=t)
    b = file_entry("b.txt", b"bravo " * 700, b"more bravo " * 300, target=t)
    commit(t, [dir_entry(""), dir_entry("docs"), a, b], 10.0)
    commit(t, [dir_entry(""), dir_entry("docs"), a, b, file_entry("c.txt", b"c", target=t)], 20.0)
    commit(t, [dir_entry(""), dir_entry("docs"), a, b], 30.0)
    commit(t, [dir_entry(""), dir_entry("docs"), file_entry("docs/a.txt", b"new alpha", target=t), b], 40.0)
    t.prune([2])
    t.flush()
    return {"docs/a.txt": b"new alpha", "b.txt": b"bravo " * 700 + b"more bravo " * 300}


def location(t: Target, cid: bytes) -> tuple[Path, int, int]:
    """(pack file, record offset, stored length) of a chunk, from the index."""
    pack, offset, length = (
        sqlite3.connect(t.directory / "index.sqlite")
        .execute("SELECT pack, offset, length FROM chunks WHERE id = ?", (cid,))
        .fetchone()
    )
    return t.chunks.packs.path(pack), offset, length


def chunk_of(t: Target, snapshot: int, path: str) -> bytes:
    return ids_of(view(t, snapshot)[path])[0]


def poke(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_a_clean_target_checks_ok(target: Target) -> None:
    history(target)
    calls: list[tuple[int, int]] = []
    for verify in (False, True):
        report = target.check(verify, lambda done, total: calls.append((done, total)))
        assert report.ok and report.verified_data is verify
        assert (report.damaged_chunks, report.damaged_files, report.damaged_snapshots, report.problems) == (
            [],
            [],
            [],
            [],
        )
        assert report.chunks_checked == target.usage().chunks == 5
        assert report.bytes_checked == target.usage().stored_bytes
    assert calls[-1] == (target.usage().stored_bytes,) * 2
    # The chunk only pruned snapshot 2 used is unreferenced: a note, not damage.
    target.prune([])
    assert target.check().unreferenced_chunks == 1 and target.check().ok
    target.collect_garbage()
    assert target.check().unreferenced_chunks == 0


def test_a_rotten_byte_is_traced_to_the_file_and_its_snapshots(target: Target) -> None:
    history(target)
    cid = chunk_of(target, 1, "docs/a.txt")
    pack, offset, length = location(target, cid)
    raw = pack.read_bytes()
    poke(pack, offset + packs.HEADER_SIZE + length // 2, bytes([raw[offset + packs.HEADER_SIZE + length // 2] ^ 1]))
    report = target.check()
    assert not report.ok
    assert [c for c, _ in report.damaged_chunks] == [cid.hex()]
    assert "stored bytes are damaged" in report.damaged_chunks[0][1]
    [damaged] = report.damaged_files
    assert (damaged.path, damaged.snapshots, damaged.chunk) == ("docs/a.txt", [1, 3], cid.hex())
    assert report.damaged_snapshots == [1, 3]  # 2 is pruned; 4 has the new version
    assert report.chunks_checked == 5 and report.problems == []


def test_a_damaged_header_and_a_shared_chunk(target: Target) -> None:
    history(target)
    cid = chunk_of(target, 4, "b.txt")  # b.txt is in every kept snapshot
    pack, offset, _ = location(target, cid)
    poke(pack, offset + 10, b"\x00\x00")  # inside the id, in the header
    report = target.check()
    assert "record header is damaged" in report.damaged_chunks[0][1]
    [damaged] = report.damaged_files
    assert (damaged.path, damaged.snapshots) == ("b.txt", [1, 3, 4])
    assert report.damaged_snapshots == [1, 3, 4]


def test_a_truncated_pack(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", sizes=StoreSizes(pack_bytes=64 * 1024))
    t = repo.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
    datas = [random.Random(n).randbytes(30_000) for n in range(6)]  # two records per pack
    commit(t, [dir_entry(""), *(file_entry(f"f{n}", d, target=t) for n, d in enumerate(datas))], 1.0)
    t.flush()
    ids = ids_of(view(t, 1)["f0"])
    first_pack, _, _ = location(t, ids[0])
    size = first_pack.stat().st_size
    with open(first_pack, "r+b") as f:
        f.truncate(size - 100)  # the last record of the pack loses its tail
    report = t.check()
    assert not report.ok
    assert any("shorter than its committed" in p for p in report.problems), report.problems
    assert len(report.damaged_chunks) == 1 and "truncated" in report.damaged_chunks[0][1]
    [damaged] = report.damaged_files
    assert damaged.snapshots == [1] and damaged.path in {f"f{n}" for n in range(6)}
    first_pack.unlink()  # and a pack that is gone altogether
    report = t.check()
    assert any("is missing" in p for p in report.problems)
    assert len(report.damaged_files) >= 2 and report.damaged_snapshots == [1]
    repo.close()


def test_verify_data_finds_a_record_with_a_good_crc_but_wrong_content(target: Target) -> None:
    content = b"the real content " * 100
    cid = put(target, content, compress=False)
    other = put(target, b"compressed content " * 100)
    commit(target, [dir_entry(""), file_entry("real", content), file_entry("z", b"compressed content " * 100)], 1.0)
    target.flush()
    pack, offset, length = location(target, cid)
    forged = b"FORGED  content! " * 100
    assert len(forged) == length
    poke(pack, offset, packs.encode_header(cid, 0, len(forged), forged) + forged)  # a valid record, wrong bytes
    # A zstd record whose bytes are replaced by another valid frame of the same length: CRC good, hash bad.
    zpack, zoffset, zlength = location(target, other)
    frame = zstandard.ZstdCompressor(level=1).compress(b"x" * len(b"compressed content " * 100))
    assert len(frame) <= zlength
    frame = frame + b"\x00" * (zlength - len(frame))  # padding after the frame: refused by decompression
    poke(zpack, zoffset, packs.encode_header(other, 1, 1900, frame) + frame)

    assert target.check(verify_data=False).ok  # headers and CRCs are all fine
    report = target.check(verify_data=True)
    assert not report.ok
    why = dict(report.damaged_chunks)
    assert "content does not hash to its id" in why[cid.hex()]
    assert "decompress" in why[other.hex()]
    assert sorted(f.path for f in report.damaged_files) == ["real", "z"]
    assert target.usage().chunks == 2


def test_index_disagreements_are_problems(target: Target) -> None:
    history(target)
    db = sqlite3.connect(target.directory / "index.sqlite", isolation_level=None)
    cid = chunk_of(target, 4, "docs/a.txt")
    db.execute("DELETE FROM chunks WHERE id = ?", (cid,))  # referenced but no longer stored
    db.execute("UPDATE snapshots SET files = 99 WHERE id = 3")
    db.close()
    report = target.check()
    assert not report.ok
    assert dict(report.damaged_chunks)[cid.hex()].endswith("is referenced but not stored")
    assert [(f.path, f.snapshots) for f in report.damaged_files] == [("docs/a.txt", [4])]
    assert any(p.startswith("counters say 5 chunks") for p in report.problems), report.problems
    assert any(p.startswith("snapshot 3 records 99 files") for p in report.problems), report.problems


def test_a_confined_check_reports_missing_chunks_below_its_root_only(target: Target) -> None:
    """A check with a root collects what the root references once (for the records it reads) and finds the
    chunks missing among them from that same set: one missing below the root is named, one outside is not."""
    history(target)
    below, outside = chunk_of(target, 4, "docs/a.txt"), chunk_of(target, 4, "b.txt")
    db = sqlite3.connect(target.directory / "index.sqlite", isolation_level=None)
    db.execute("DELETE FROM chunks WHERE id IN (?, ?)", (below, outside))
    db.close()
    report = target.check(root="docs")
    assert [cid for cid, _ in report.damaged_chunks] == [below.hex()]
    assert dict(report.damaged_chunks)[below.hex()].endswith("is referenced but not stored")
    assert [(f.path, f.snapshots) for f in report.damaged_files] == [("docs/a.txt", [4])]
    assert (report.chunks_checked, report.unreferenced_chunks, report.problems) == (1, 0, [])


def test_encrypted_targets_say_what_could_not_be_verified(repo: Repository) -> None:
    t = repo.create_target(7, "secret", encrypted=True, chunker=DEFAULT_PARAMS)
    sealed = b"\x01" * 64 + b"opaque ciphertext"
    cid = b"\x42" * 32
    store_chunk(t, cid, CODEC_SEALED, 10, sealed)
    commit(t, [dir_entry(""), Entry("x", "f", 0o600, 1, 10, cid)], 1.0)
    report = t.check(verify_data=True)
    assert report.ok and report.chunks_checked == 1
    assert any("only their CRCs were checked" in n for n in report.notes)


def test_a_read_only_check_beside_a_writer_changes_nothing(tmp_path: Path) -> None:
    """Like neo-admin check while the server runs: the server has appended chunks it has not indexed yet."""
    server = Repository(tmp_path / "repo")
    t = server.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
    history(t)
    pending = put(t, b"appended, not yet flushed " * 100)
    [pack] = list((t.directory / "packs").rglob("*.pack"))
    size = pack.stat().st_size
    index_before = (t.directory / "index.sqlite").read_bytes()
    tool = Repository(tmp_path / "repo", read_only=True)
    [rt] = every_target(tool)
    report = rt.check(verify_data=True)
    assert report.ok and report.chunks_checked == 5
    tool.close()
    assert pack.stat().st_size == size  # the unindexed tail was not truncated
    assert (t.directory / "index.sqlite").read_bytes() == index_before
    t.flush()
    assert t.missing([pending]) == [False] and t.check().chunks_checked == 6
    server.close()


# --- neo-admin check ------------------------------------------------------------------------------------------


def admin_check(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NEO_ADMIN), "--data", str(data), "check", *args], capture_output=True, text=True, timeout=60
    )


def tree_digest(root: Path) -> dict[str, str]:
    """Digest of every index and pack file (SQLite's -wal/-shm are its own bookkeeping)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


def test_neo_admin_check(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    store = AccountStore(data / "accounts.sqlite", bcrypt_rounds=4)
    alice, bob = store.add("alice", None), store.add("bob", None)
    server = Repository(data / "repo")  # stays open, as in a running server
    home = server.create_target(alice.id, "home", encrypted=False, chunker=DEFAULT_PARAMS)
    history(home)
    work = server.create_target(alice.id, "work", encrypted=False, chunker=DEFAULT_PARAMS)
    commit(work, [dir_entry(""), file_entry("w", b"work " * 100, target=work)], 1.0)
    theirs = server.create_target(bob.id, "home", encrypted=False, chunker=DEFAULT_PARAMS)
    commit(theirs, [dir_entry(""), file_entry("b", b"bob " * 100, target=theirs)], 1.0)
    for t in (home, work, theirs):
        t.flush()

    before = tree_digest(data / "repo")
    r = admin_check(data)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("alice/home: 5 chunks") and lines[0].endswith(": ok")
    assert lines[-1].startswith("checked 3 targets, 7 chunks") and lines[-1].endswith("no damage found")
    r = admin_check(data, "alice", "--json", "--verify-data")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and doc["verify_data"] is True and doc["targets_checked"] == 2
    assert [(t["account"], t["target"], t["ok"]) for t in doc["targets"]] == [
        ("alice", "home", True),
        ("alice", "work", True),
    ]
    assert tree_digest(data / "repo") == before  # nothing was written

    cid = chunk_of(home, 1, "docs/a.txt")
    pack, offset, _ = location(home, cid)
    poke(pack, offset + packs.HEADER_SIZE, b"rot")
    r = admin_check(data)
    assert r.returncode == 1
    assert "alice/home:docs/a.txt  damaged in snapshots 1, 3: " in r.stdout
    assert "alice/work: 1 chunks" in r.stdout and "bob/home: 1 chunks" in r.stdout
    assert r.stdout.splitlines()[-1].endswith("1 damaged files in 2 snapshots, 0 problems")
    r = admin_check(data, "alice", "home", "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    [report] = doc["targets"]
    assert doc["ok"] is False and report["damaged_snapshots"] == [1, 3]
    assert report["damaged_files"] == [
        {
            "path": "docs/a.txt",
            "snapshots": [1, 3],
            "chunk": cid.hex(),
            "why": report["damaged_chunks"][0]["why"],
            "marked": False,
        }
    ]
    assert admin_check(data, "bob").returncode == 0  # bob's data is fine

    r = admin_check(data, "carol")
    assert r.returncode == 1 and "no such account: 'carol'" in r.stderr
    r = admin_check(data, "alice", "nope")
    assert r.returncode == 1 and "no target 'nope'" in r.stderr
    r = admin_check(tmp_path / "nowhere")
    assert r.returncode == 1 and "no data directory" in r.stderr
    r = subprocess.run([str(NEO_ADMIN), "check", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--verify-data" in r.stdout and "Examples" in r.stdout
    assert pack_bytes(home) > 0
    server.close()


def test_neo_admin_check_beside_a_running_server(server: RunningServer, tmp_path: Path) -> None:
    """neo-push to a real twistd, then neo-admin check while it runs: it finds the data whole, then a rotten
    record, and the server goes on serving pushes undisturbed."""
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    rng = random.Random(3)
    (src / "docs" / "a.bin").write_bytes(rng.randbytes(300_000))
    (src / "b.txt").write_text("hello\n")
    r = server.cli("neo-push", "--accept-new-host-key", str(src), server.remote("docs"))
    assert r.returncode == 0, r.stderr
    r = admin_check(server.data, "alice", "--json", "--verify-data")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] and [t["target"] for t in doc["targets"]] == ["docs"] and doc["chunks_checked"] >= 2

    tool = Repository(server.data / "repo", read_only=True)
    [docs] = every_target(tool)
    cid = chunk_of(docs, 1, "docs/a.bin")
    pack, offset, _ = location(docs, cid)
    tool.close()
    poke(pack, offset + packs.HEADER_SIZE + 100, b"\xff\xfe")
    r = admin_check(server.data)
    assert r.returncode == 1
    assert "alice/docs:docs/a.bin  damaged in snapshots 1: " in r.stdout

    (src / "c.txt").write_text("more\n")
    r = server.cli("neo-push", str(src), server.remote("docs"))
    assert r.returncode == 0, r.stderr
    r = admin_check(server.data, "alice", "docs")
    assert r.returncode == 1 and "damaged in snapshots 1, 2: " in r.stdout  # a.bin is unchanged in 2
    server.stop()
    assert_clean(server.log_text())
