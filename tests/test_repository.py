"""Tests for the server repository: real SQLite files and pack files in a temporary directory."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import blake3
import pytest
import zstandard
from repo_support import (
    Refused,
    as_sent,
    dir_entry,
    file_chunks,
    file_entry,
    listing,
    put,
    read_chunk,
    store_chunk,
    view,
)

from neotwist import bounds
from neotwist.chunking import DEFAULT_PARAMS
from neotwist.server.repository import Repository, StoreSizes, Target, packs
from neotwist.server.targets import chunker_params
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode
from neotwist.wire.messages import CODEC_RAW, CODEC_SEALED, CODEC_ZSTD, Entry


def chunk(data: bytes) -> tuple[bytes, bytes]:
    """(id, data) of a plaintext chunk."""
    return blake3.blake3(data).digest(), data


def code_of(excinfo: pytest.ExceptionInfo[Exception]) -> ErrorCode:
    """The wire code the client would see for the refusal."""
    return as_sent(excinfo.value).code


# --- catalog ------------------------------------------------------------------------------------------------


def test_create_find_and_list_targets(repo: Repository, tmp_path: Path) -> None:
    assert repo.find_target(7, "home") is None
    t = repo.create_target(7, "home", encrypted=False, chunker=DEFAULT_PARAMS)
    again = repo.create_target(7, "home", encrypted=True, chunker=DEFAULT_PARAMS)
    assert again is t and again.meta.encrypted is False  # the existing target, settings unchanged
    other = repo.create_target(8, "home", encrypted=True, chunker=DEFAULT_PARAMS)
    assert other.meta.id != t.meta.id and other.meta.encrypted
    assert repo.find_target(7, "home") is t
    assert chunker_params(t.meta.chunker) == DEFAULT_PARAMS and t.meta.keep_history
    # Names are data: the directory is named by the numeric id.
    assert (tmp_path / "repo" / f"t{t.meta.id}" / "index.sqlite").exists()
    with pytest.raises(Refused) as e:
        repo.create_target(7, "../evil", encrypted=False, chunker=DEFAULT_PARAMS)
    assert code_of(e) == ErrorCode.BAD_NAME

    push = t.begin_push("", False)
    push.add([file_entry("a", b"x" * 100, target=t)])
    push.commit(100.0)
    [info] = repo.list_targets(7)
    assert (info.name, info.encrypted, info.snapshots, info.latest, info.latest_time, info.files) == (
        "home",
        False,
        1,
        1,
        100.0,
        1,
    )
    assert info.stored_bytes == t.usage().stored_bytes > 0
    assert [i.name for i in repo.list_targets(8)] == ["home"]
    assert repo.list_targets(9) == []


def test_concurrent_create_target_gives_one_target(repo: Repository) -> None:
    results: list[Target] = []
    barrier = threading.Barrier(4)

    def create() -> None:
        barrier.wait()
        results.append(repo.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS))

    threads = [threading.Thread(target=create) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(results) == 4 and all(r is results[0] for r in results)


# --- chunks -------------------------------------------------------------------------------------------------


def test_store_and_read_chunks(target: Target) -> None:
    cid, data = chunk(b"some file content " * 1000)
    assert target.missing([cid]) == [True]
    packed = zstandard.ZstdCompressor().compress(data)
    assert store_chunk(target, cid, CODEC_ZSTD, len(data), packed) is True
    assert target.missing([cid]) == [False]  # pending counts as present
    assert read_chunk(target, cid) == (CODEC_ZSTD, len(data), packed)  # readable before flush
    target.flush()
    assert read_chunk(target, cid) == (CODEC_ZSTD, len(data), packed)
    raw_id, raw = chunk(b"raw bytes")
    assert store_chunk(target, raw_id, CODEC_RAW, len(raw), raw)
    empty_id, empty = chunk(b"")
    assert store_chunk(target, empty_id, CODEC_RAW, 0, empty)
    assert target.missing([raw_id, chunk(b"nope")[0], cid, empty_id]) == [False, True, False, False]
    usage = target.usage()
    assert usage.chunks == 3 and usage.stored_bytes == len(packed) + len(raw)


def test_duplicates_are_stored_once(target: Target) -> None:
    cid, data = chunk(b"dup" * 500)
    assert store_chunk(target, cid, CODEC_RAW, len(data), data) is True
    assert store_chunk(target, cid, CODEC_RAW, len(data), data) is False  # pending
    target.flush()
    packed = zstandard.ZstdCompressor().compress(data)
    assert store_chunk(target, cid, CODEC_ZSTD, len(data), packed) is False  # indexed
    target.flush()
    assert target.usage().chunks == 1
    pack_files = list((target.directory / "packs").rglob("*.pack"))
    assert len(pack_files) == 1
    assert pack_files[0].stat().st_size == len(packs.FILE_MAGIC) + packs.HEADER_SIZE + len(data)


def test_wrong_id_is_refused(target: Target) -> None:
    cid, _ = chunk(b"the real content")
    with pytest.raises(Refused) as e:
        store_chunk(target, cid, CODEC_RAW, 16, b"other content!!!")
    assert code_of(e) == ErrorCode.CHUNK_MISMATCH
    assert target.missing([cid]) == [True]
    assert not list((target.directory / "packs").rglob("*.pack"))  # nothing was written


def test_wrong_declared_size_is_refused(target: Target) -> None:
    cid, data = chunk(b"x" * 1000)
    for codec, payload, size in [
        (CODEC_RAW, data, 999),
        (CODEC_ZSTD, zstandard.ZstdCompressor().compress(data), 999),
        (CODEC_ZSTD, zstandard.ZstdCompressor().compress(data), 1001),
        (CODEC_ZSTD, zstandard.ZstdCompressor(write_content_size=False).compress(data), 999),
        (CODEC_ZSTD, zstandard.ZstdCompressor(write_content_size=False).compress(data), 1001),
        (CODEC_ZSTD, zstandard.ZstdCompressor().compress(data) + b"trailing", 1000),
        (CODEC_ZSTD, b"not zstd at all", 1000),
    ]:
        with pytest.raises(Refused) as e:
            store_chunk(target, cid, codec, size, payload)
        assert code_of(e) == ErrorCode.CHUNK_MISMATCH, (codec, size)
    assert target.missing([cid]) == [True]


def test_zstd_bomb_is_refused_without_expanding(target: Target) -> None:
    """A frame that expands to 256 MiB, declared (or not) as a small chunk, is refused within the bound."""
    bomb_raw_size = 256 * 1024 * 1024
    cctx = zstandard.ZstdCompressor(level=1)
    with_size = cctx.compress(b"\0" * bomb_raw_size)
    without_size = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(b"\0" * bomb_raw_size)
    assert len(with_size) < 64 * 1024 and len(without_size) < 64 * 1024
    cid = blake3.blake3(b"\0" * 1024).digest()
    for payload in (with_size, without_size):
        with pytest.raises(Refused) as e:
            store_chunk(target, cid, CODEC_ZSTD, 1024, payload)
        assert code_of(e) == ErrorCode.CHUNK_MISMATCH
    # A declared size over the protocol limit is refused before any decompression.
    with pytest.raises(Refused) as e:
        store_chunk(target, cid, CODEC_ZSTD, limits.MAX_CHUNK + 1, with_size)
    assert code_of(e) == ErrorCode.LIMIT_EXCEEDED


def test_codecs_follow_encryption(repo: Repository, target: Target) -> None:
    cid, data = chunk(b"plain")
    with pytest.raises(Refused) as e:
        store_chunk(target, cid, CODEC_SEALED, len(data), data)
    assert code_of(e) == ErrorCode.ENCRYPTION_MISMATCH
    sealed = repo.create_target(7, "secret", encrypted=True, chunker=DEFAULT_PARAMS)
    with pytest.raises(Refused) as e:
        store_chunk(sealed, cid, CODEC_RAW, len(data), data)
    assert code_of(e) == ErrorCode.ENCRYPTION_MISMATCH
    opaque_id = os.urandom(32)  # keyed ids cannot be recomputed by the server
    assert store_chunk(sealed, opaque_id, CODEC_SEALED, 100, b"ciphertext")
    assert read_chunk(sealed, opaque_id) == (CODEC_SEALED, 100, b"ciphertext")
    with pytest.raises(Refused) as e:
        store_chunk(sealed, b"short", CODEC_SEALED, 1, b"x")
    assert code_of(e) == ErrorCode.BAD_MESSAGE


def test_flushed_chunks_survive_reopen(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    first = Repository(root)
    t = first.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
    cid = put(t, b"durable" * 100)
    t.flush()
    # A second, independent Repository (another process would see the same) finds the chunk.
    second = Repository(root)
    t2 = second.find_target(1, "t")
    assert t2 is not None and t2 is not t
    assert t2.missing([cid]) == [False]
    assert read_chunk(t2, cid)[1] == 700
    second.close()
    first.close()
    third = Repository(root)
    t3 = third.find_target(1, "t")
    assert t3 is not None and t3.missing([cid]) == [False] and t3.usage().chunks == 1
    third.close()


def test_auto_flush_indexes_chunks_without_an_explicit_flush(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    first = Repository(root, sizes=StoreSizes(auto_flush=9_000))
    t = first.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
    ids = [put(t, os.urandom(3000), compress=False) for _ in range(5)]
    other = Repository(root).find_target(1, "t")
    assert other is not None
    seen = other.missing(ids)
    assert seen[:3] == [False, False, False]  # three records (with headers) crossed 9,000 bytes
    assert seen[3:] == [True, True]  # still pending in the first process
    other.close()
    first.close()


def test_pack_rotation_and_reopen(tmp_path: Path) -> None:
    small = StoreSizes(pack_bytes=10_000)
    root = tmp_path / "repo"
    r = Repository(root, sizes=small)
    t = r.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
    datas = [os.urandom(3000) for _ in range(10)]
    ids = [put(t, d, compress=False) for d in datas]
    r.close()
    pack_files = sorted((root / f"t{t.meta.id}" / "packs").rglob("*.pack"))
    assert len(pack_files) == 4  # three records per pack
    assert all(p.stat().st_size <= 10_000 for p in pack_files)
    r = Repository(root, sizes=small)
    t = r.find_target(1, "t")
    assert t is not None
    more = [put(t, os.urandom(3000), compress=False) for _ in range(3)]
    for cid, data in zip(ids, datas, strict=True):
        assert read_chunk(t, cid) == (CODEC_RAW, 3000, data)
    assert t.missing(more) == [False, False, False]
    r.close()
    # The last pack had room for two more records and was continued, then a fifth pack started.
    assert len(sorted((root / f"t{t.meta.id}" / "packs").rglob("*.pack"))) == 5


def test_damaged_record_is_reported(target: Target) -> None:
    cid, data = chunk(b"precious" * 100)
    store_chunk(target, cid, CODEC_RAW, len(data), data)
    target.flush()
    [pack] = list((target.directory / "packs").rglob("*.pack"))
    raw = bytearray(pack.read_bytes())
    raw[-10] ^= 0xFF  # rot one stored byte
    pack.write_bytes(bytes(raw))
    with pytest.raises(Refused) as e:
        read_chunk(target, cid)
    assert code_of(e) == ErrorCode.DAMAGED
    raw[len(packs.FILE_MAGIC) + 10] ^= 0xFF  # and one header byte (inside the id)
    pack.write_bytes(bytes(raw))
    with pytest.raises(Refused) as e:
        read_chunk(target, cid)
    assert code_of(e) == ErrorCode.DAMAGED
    with pytest.raises(Refused) as e:
        read_chunk(target, chunk(b"never stored")[0])
    assert code_of(e) == ErrorCode.DAMAGED


CRASHER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import blake3
    from neotwist.chunking import DEFAULT_PARAMS
    from neotwist.server.repository import Repository
    from neotwist.wire.messages import Entry
    repo = Repository(Path(sys.argv[1]))
    t = repo.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
    a = b"A" * 5000
    aid = blake3.blake3(a).digest()
    t.store_chunks([(aid, 0, len(a), a)])
    push = t.begin_push("", True)
    push.add([Entry("a", "f", 0o644, 1, len(a), aid)])
    push.commit(10.0)
    b = b"B" * 7000
    t.store_chunks([(blake3.blake3(b).digest(), 0, len(b), b)])  # appended to the pack, never flushed
    push = t.begin_push("", True)
    push.add([Entry("b", "f", 0o644, 1, len(b), blake3.blake3(b).digest())])
    os._exit(9)  # killed: no flush, no commit, no close
    """
)


def test_crash_leaves_a_consistent_repository(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    subprocess.run([sys.executable, "-c", CRASHER, str(root)], check=False)
    r = Repository(root)
    t = r.find_target(1, "t")
    assert t is not None
    a, b = b"A" * 5000, b"B" * 7000
    aid, bid = blake3.blake3(a).digest(), blake3.blake3(b).digest()
    [pack] = list((t.directory / "packs").rglob("*.pack"))
    orphaned_size = pack.stat().st_size
    assert orphaned_size == len(packs.FILE_MAGIC) + 2 * packs.HEADER_SIZE + len(a) + len(b)
    assert t.missing([aid, bid]) == [False, True]  # the unflushed chunk counts as missing
    latest = t.latest()
    assert latest is not None and latest.id == 1
    assert list(view(t, 1)) == ["a"]
    assert read_chunk(t, aid) == (CODEC_RAW, len(a), a)
    # Storing again truncates the orphan and appends after the committed records.
    assert store_chunk(t, bid, CODEC_RAW, len(b), b) is True
    t.flush()
    assert pack.stat().st_size == orphaned_size
    assert read_chunk(t, bid) == (CODEC_RAW, len(b), b)
    assert sqlite3.connect(t.directory / "index.sqlite").execute("PRAGMA integrity_check").fetchone() == (
        "ok",
    )
    r.close()


# --- pushes and snapshots -----------------------------------------------------------------------------------


def test_push_commit_then_list_and_file_chunks(target: Target) -> None:
    assert target.latest() is None
    push = target.begin_push("", True)
    big = file_entry("docs/big.bin", b"1" * 4000, b"2" * 3000, b"1" * 4000, target=target)
    push.add([dir_entry(""), dir_entry("docs"), big])
    push.add([Entry("docs/link", "l", 0o777, 3, 0, link="big.bin"), file_entry("empty", target=target)])
    result = push.commit(1234.5)
    snap = result.snapshot
    assert (snap.id, snap.time, snap.files, snap.changed, snap.deleted) == (1, 1234.5, 3, 5, 0)
    assert snap.new_chunks == 2  # the repeated chunk counts once
    assert snap.new_bytes == result.stored_bytes == target.usage().stored_bytes
    assert target.latest() == snap == target.snapshot(1)
    assert target.snapshot(2) is None
    entries = listing(target, 1)
    assert [e.path for e in entries] == ["", "docs", "docs/big.bin", "docs/link", "empty"]
    assert entries[2] == big
    assert entries[3].link == "big.bin" and entries[3].kind == "l"
    assert file_chunks(target, 1, "docs/big.bin") == big.chunks
    assert file_chunks(target, 1, "docs") is None  # not a file
    assert file_chunks(target, 1, "nope") is None
    assert [e.path for e in target.list_entries(1, "docs", True)] == ["docs", "docs/big.bin", "docs/link"]
    assert [e.path for e in target.list_entries(1, "", False)] == ["", "docs", "empty"]
    assert [e.path for e in target.list_entries(1, "docs/big.bin", True)] == ["docs/big.bin"]
    usage = target.usage()
    assert (usage.files, usage.dirs, usage.chunks) == (3, 2, 2)


def test_list_errors_and_byte_order(target: Target) -> None:
    push = target.begin_push("", False)
    # 'a.txt' < 'a/x' < 'a0' in byte order ('.' < '/' < '0'): prefix queries must not leak siblings.
    push.add([dir_entry("a"), file_entry("a/x", target=target), file_entry("a.txt"), file_entry("a0")])
    push.add([file_entry("ab/y"), file_entry("é")])
    push.commit(1.0)
    assert [e.path for e in target.list_entries(1, "", True)] == ["a", "a.txt", "a/x", "a0", "ab/y", "é"]
    assert [e.path for e in target.list_entries(1, "a", True)] == ["a", "a/x"]
    # Nothing is stored at 'ab' itself, but something below it is.
    assert [e.path for e in target.list_entries(1, "ab", False)] == ["ab/y"]
    for path, code in [
        ("nope", ErrorCode.NO_SUCH_PATH),
        ("a/x/y", ErrorCode.NO_SUCH_PATH),
        ("../a", ErrorCode.BAD_PATH),
    ]:
        with pytest.raises(Refused) as e:
            target.list_entries(1, path, True)  # raised at the call, before iteration
        assert code_of(e) == code
    with pytest.raises(Refused) as e:
        target.list_entries(5, "", True)
    assert code_of(e) == ErrorCode.NO_SUCH_SNAPSHOT


def test_listing_pages_through_many_entries(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", sizes=StoreSizes(list_page=7))
    target = repo.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
    names = [f"d/f{i:03d}" for i in range(50)]
    push = target.begin_push("", False)
    push.add([dir_entry("d"), *(file_entry(n) for n in names)])
    push.commit(1.0)
    assert [e.path for e in target.list_entries(1, "d", True)] == ["d", *names]
    assert len(list(target.list_entries(1, "", False))) == 1
    repo.close()


def test_interval_model_over_three_snapshots(target: Target) -> None:
    a1 = file_entry("a", b"a version 1", target=target)
    b = file_entry("b", b"b forever", target=target)
    c = file_entry("c", b"c soon gone", target=target)
    push = target.begin_push("", False)
    push.add([a1, b, c])
    s1 = push.commit(10.0).snapshot
    assert (s1.changed, s1.deleted, s1.files) == (3, 0, 3)

    # 2: a changes, b unchanged, c not listed but delete=False: kept.
    a2 = file_entry("a", b"a version 2", target=target, mtime=2)
    push = target.begin_push("", False)
    push.add([a2, b])
    s2 = push.commit(20.0).snapshot
    assert (s2.id, s2.changed, s2.deleted, s2.files, s2.new_chunks) == (2, 1, 0, 3, 1)

    # 3: delete=True without c: c is deleted; nothing else changed.
    push = target.begin_push("", True)
    push.add([a2, b])
    s3 = push.commit(5.0).snapshot  # a clock that went back: time stays monotonic
    assert (s3.id, s3.time, s3.changed, s3.deleted, s3.files, s3.new_chunks) == (3, 20.0, 0, 1, 2, 0)

    assert view(target, 1) == {"a": a1, "b": b, "c": c}
    assert view(target, 2) == {"a": a2, "b": b, "c": c}
    assert view(target, 3) == {"a": a2, "b": b}
    assert file_chunks(target, 1, "a") == a1.chunks and file_chunks(target, 3, "a") == a2.chunks
    assert file_chunks(target, 3, "c") is None and file_chunks(target, 2, "c") == c.chunks

    # 4: nothing at all changed: still a snapshot.
    push = target.begin_push("", True)
    push.add([a2, b])
    s4 = push.commit(30.0).snapshot
    assert (s4.id, s4.changed, s4.deleted, s4.files) == (4, 0, 0, 2)

    # Unchanged files cost nothing per snapshot: one version row each for b and c, two for a.
    db = sqlite3.connect(target.directory / "index.sqlite")
    rows = db.execute("SELECT path, first, last FROM versions ORDER BY path, first").fetchall()
    assert rows == [("a", 1, 2), ("a", 2, None), ("b", 1, None), ("c", 1, 3)]
    db.close()


def test_push_under_a_sub_root(target: Target) -> None:
    push = target.begin_push("", False)
    push.add(
        [dir_entry("proj"), file_entry("proj/old", target=target), file_entry("proj/keep", target=target)]
    )
    push.add([file_entry("proj.txt"), file_entry("proj0"), file_entry("other/x")])
    push.commit(1.0)

    push = target.begin_push("proj", True)
    push.add([dir_entry(""), file_entry("keep"), file_entry("new", b"new file", target=target)])
    snap = push.commit(2.0).snapshot
    assert (snap.changed, snap.deleted) == (1, 1)
    assert list(view(target, 2)) == ["other/x", "proj", "proj.txt", "proj/keep", "proj/new", "proj0"]
    assert [e.path for e in target.list_entries(2, "proj", True)] == ["proj", "proj/keep", "proj/new"]

    # A push whose root is a single file.
    push = target.begin_push("proj/keep", True)
    push.add([file_entry("", b"replaced", target=target)])
    push.commit(3.0)
    assert file_chunks(target, 3, "proj/keep") == blake3.blake3(b"replaced").digest()
    assert len(view(target, 3)) == 6


def test_missing_chunks_refuse_the_commit(target: Target) -> None:
    push = target.begin_push("", True)
    push.add([file_entry("a", b"first", target=target)])
    first = push.commit(1.0).snapshot

    absent = b"not uploaded yet"
    push = target.begin_push("", True)
    push.add([file_entry("b", b"first", absent, b"also absent"), file_entry("a", b"first")])
    with pytest.raises(Refused) as e:
        push.commit(2.0)
    assert code_of(e) == ErrorCode.MISSING_CHUNKS
    assert e.value.message.startswith("2 chunks missing, e.g. ")
    assert target.latest() == first
    assert view(target, 1).keys() == {"a"}
    # The push stays open: upload what was missing and commit again.
    put(target, absent)
    put(target, b"also absent")
    second = push.commit(3.0).snapshot
    assert second.id == 2 and view(target, 2).keys() == {"a", "b"}


def test_plaintext_sizes_must_add_up(target: Target) -> None:
    ids = put(target, b"12345")
    push = target.begin_push("", False)
    push.add([Entry("f", "f", 0o644, 1, 6, ids), Entry("e", "f", 0o644, 1, 0)])
    with pytest.raises(Refused) as e:
        push.commit(1.0)
    assert code_of(e) == ErrorCode.BAD_MESSAGE
    with pytest.raises(Refused):
        push.commit(1.0)  # a failed push stays failed
    push.abort()
    assert target.latest() is None


def test_abort_leaves_nothing(target: Target) -> None:
    push = target.begin_push("", True)
    push.add([file_entry("a", b"kept", target=target)])
    first = push.commit(1.0).snapshot
    push = target.begin_push("", True)
    push.add([file_entry("b", b"dropped", target=target)])
    push.abort()
    push.abort()  # idempotent
    with pytest.raises(Refused) as e:
        push.add([file_entry("c")])
    assert code_of(e) == ErrorCode.PROTOCOL
    with pytest.raises(Refused):
        push.commit(2.0)
    assert target.latest() == first and view(target, 1).keys() == {"a"}
    db = sqlite3.connect(target.directory / "index.sqlite")
    assert db.execute("SELECT count(*) FROM versions").fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM snapshots").fetchone() == (1,)
    db.close()


def test_bad_entries_are_refused(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [
        ([file_entry("a"), file_entry("a")], ErrorCode.BAD_MESSAGE),  # duplicate in one batch
        ([Entry("../x", "f", 0, 0, 0)], ErrorCode.BAD_PATH),
        ([Entry("/abs", "f", 0, 0, 0)], ErrorCode.BAD_PATH),
        ([Entry("x", "f", 0, 0, 0, b"\0" * 33)], ErrorCode.BAD_MESSAGE),
        ([Entry("x", "d", 0, 0, 0, b"\0" * 32)], ErrorCode.BAD_MESSAGE),
        ([Entry("", "f", 0, 0, 0)], ErrorCode.BAD_MESSAGE),
    ]
    for entries, code in cases:
        push = target.begin_push("", False)
        with pytest.raises(Refused) as e:
            push.add(entries)
        assert code_of(e) == code, entries
        push.abort()
    push = target.begin_push("", False)
    push.add([file_entry("a")])
    with pytest.raises(Refused) as e:
        push.add([file_entry("a")])  # duplicate across batches
    assert code_of(e) == ErrorCode.BAD_MESSAGE
    push.abort()

    monkeypatch.setattr(bounds, "MAX_PUSH_ENTRIES", 3)
    push = target.begin_push("", False)
    push.add([file_entry("1"), file_entry("2")])
    with pytest.raises(Refused) as e:
        push.add([file_entry("3"), file_entry("4")])
    assert code_of(e) == ErrorCode.LIMIT_EXCEEDED
    push.abort()
    assert target.latest() is None


def test_continuation_records_round_trip(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_FILE_CHUNK_IDS", 4)
    datas = [f"piece {i}".encode() for i in range(10)]
    ids = [put(target, d) for d in datas]
    size = sum(map(len, datas))
    rec = [
        Entry("big", "f", 0o600, 9, size, b"".join(ids[0:4]), more=True),
        Entry("big", "f", 0o600, 9, size, b"".join(ids[4:8]), more=True),
        Entry("big", "f", 0o600, 9, size, b"".join(ids[8:10])),
    ]
    push = target.begin_push("", False)
    push.add([file_entry("a", target=target), rec[0]])  # continuation spans two add() calls
    push.add([*rec[1:], file_entry("z")])
    push.commit(1.0)
    assert file_chunks(target, 1, "big") == b"".join(ids)
    listed = [e for e in listing(target, 1) if e.path == "big"]
    assert listed == rec

    push = target.begin_push("", False)
    with pytest.raises(Refused) as e:
        push.add([rec[0], Entry("other", "f", 0o600, 9, 0)])
    assert code_of(e) == ErrorCode.BAD_MESSAGE
    push.abort()
    push = target.begin_push("", False)
    push.add([rec[0]])
    with pytest.raises(Refused) as e:
        push.commit(2.0)  # ended inside a continued file
    assert code_of(e) == ErrorCode.BAD_MESSAGE
    push.abort()

    monkeypatch.setattr(bounds, "MAX_CHUNKS_PER_FILE", 6)
    push = target.begin_push("", False)
    with pytest.raises(Refused) as e:
        push.add(rec)
    assert code_of(e) == ErrorCode.LIMIT_EXCEEDED
    push.abort()


def test_concurrent_pushes_to_one_target_both_land(target: Target) -> None:
    base = target.begin_push("", False)
    base.add([file_entry("shared", b"v1", target=target)])
    base.commit(1.0)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def push(name: str) -> None:
        try:
            datas = [f"{name} {i}".encode() * 50 for i in range(200)]
            entries = [file_entry(f"{name}/{i}", d, target=target) for i, d in enumerate(datas)]
            p = target.begin_push(name, True)
            barrier.wait()
            for start in range(0, len(entries), 20):
                p.add(
                    [
                        Entry(e.path.split("/", 1)[1], e.kind, e.mode, e.mtime_ns, e.size, e.chunks)
                        for e in entries[start : start + 20]
                    ]
                )
            p.commit(2.0)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=push, args=(n,)) for n in ("left", "right")]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    latest = target.latest()
    assert latest is not None and latest.id == 3 and latest.files == 401
    paths = view(target, 3).keys()
    assert "shared" in paths and len([p for p in paths if p.startswith("left/")]) == 200
    assert len([p for p in paths if p.startswith("right/")]) == 200
    # Each snapshot sees only what had been committed when it was made.
    assert {len(view(target, 2)), len(view(target, 3))} == {201, 401}


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    pytest.skip("no /proc/self/status")


def test_shrink_memory_returns_idle_page_caches_and_never_waits(repo: Repository) -> None:
    target = repo.create_target(1, "big", encrypted=False, chunker=DEFAULT_PARAMS)
    with target.index.writing() as db:
        db.execute("BEGIN")
        db.execute("CREATE TABLE filler (x BLOB)")
        db.executemany("INSERT INTO filler VALUES (?)", ((os.urandom(1000),) for _ in range(60_000)))
        db.execute("COMMIT")
    with target.index.writing() as db:
        assert db.execute("SELECT count(*), sum(length(x)) FROM filler").fetchone() == (60_000, 60_000_000)
    cached = _rss_kib()
    assert repo.shrink_memory() == 2  # both connections were idle
    assert _rss_kib() < cached - 20_000  # most of the ~60 MB the scan cached went back
    with target.index.writing():  # the writer is busy: its cache is left alone and the call does not wait for it
        done = threading.Event()
        threading.Thread(target=lambda: (target.shrink_memory(), done.set())).start()
        assert done.wait(5)
        assert target.shrink_memory() == 1
