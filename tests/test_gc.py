"""Garbage collection and pack compaction on a real repository: disk reclaimed (measured), data intact,
crash points, concurrent pushes protected, pulls follow moved chunks, targets without history."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import blake3
import pytest
from repo_support import Refused, as_sent, commit, dir_entry, file_entry, ids_of, pack_bytes, put, read_file, view

from neotwist.chunking import DEFAULT_PARAMS
from neotwist.server.repository import Repository, StoreSizes, Target, gc, packs
from neotwist.server.repository.chunkstore import ChunkStore
from neotwist.wire.errors import ErrorCode
from neotwist.wire.messages import Entry

PIECE = 256 * 1024
SMALL_PACK = 1024 * 1024


def pieces(seed: int, n: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(PIECE) for _ in range(n)]


def chunk_rows(target: Target) -> int:
    return sqlite3.connect(target.directory / "index.sqlite").execute("SELECT count(*) FROM chunks").fetchone()[0]


def two_snapshots(t: Target) -> tuple[list[bytes], dict[str, bytes]]:
    """Snapshot 1: u.bin (6 MiB only it holds) and s.bin (2 MiB); snapshot 2: s.bin and n.bin (1 MiB).
    Returns u.bin's pieces and the kept files' contents."""
    unique, shared, new = pieces(1, 24), pieces(2, 8), pieces(3, 4)
    root = dir_entry("")
    s = Entry("s.bin", "f", 0o644, 1, len(shared) * PIECE, b"".join(put(t, d, compress=False) for d in shared))
    u = Entry("u.bin", "f", 0o644, 1, len(unique) * PIECE, b"".join(put(t, d, compress=False) for d in unique))
    assert commit(t, [root, u, s], 100.0) == 1
    n = Entry("n.bin", "f", 0o644, 1, len(new) * PIECE, b"".join(put(t, d, compress=False) for d in new))
    assert commit(t, [root, s, n], 200.0) == 2
    return unique, {"s.bin": b"".join(shared), "n.bin": b"".join(new)}


def assert_files(t: Target, snapshot: int, files: dict[str, bytes]) -> None:
    entries = view(t, snapshot)
    assert sorted(p for p, e in entries.items() if e.kind == "f") == sorted(files)
    for path, data in files.items():
        assert read_file(t, entries[path]) == data


@pytest.mark.parametrize("pack_size", [SMALL_PACK, packs.PACK_SIZE], ids=["1MiB-packs", "64MiB-packs"])
def test_gc_reclaims_the_space_of_pruned_data(tmp_path: Path, pack_size: int) -> None:
    repo = Repository(tmp_path / "repo", sizes=StoreSizes(pack_bytes=pack_size))
    t = repo.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
    unique, kept = two_snapshots(t)
    t.flush()
    usage = t.usage()
    assert t.collect_garbage().chunks_removed == 0  # nothing is garbage while snapshot 1 is kept
    assert t.prune([1]).versions_removed == 1

    before = pack_bytes(t)
    result = t.collect_garbage()
    after = pack_bytes(t)
    unique_records = len(unique) * (PIECE + packs.HEADER_SIZE)
    assert (result.disk_bytes_before, result.disk_bytes_after) == (before, after)
    assert (result.chunks_removed, result.stored_bytes_removed) == (len(unique), len(unique) * PIECE)
    # The pack files shrank by the records only u.bin used (plus the 8-byte magic of each deleted pack).
    assert unique_records <= before - after <= unique_records + len(packs.FILE_MAGIC) * result.packs_deleted
    assert result.packs_deleted >= 1 and not result.problems
    assert t.usage().stored_bytes == usage.stored_bytes - len(unique) * PIECE
    assert t.usage().chunks == usage.chunks - len(unique) == chunk_rows(t)
    assert_files(t, 2, kept)
    report = t.check(verify_data=True)
    assert report.ok and report.unreferenced_chunks == 0, report

    # Idempotent, survives a reopen, and pushing goes on where it left off.
    again = t.collect_garbage()
    assert (again.chunks_removed, again.packs_deleted, again.disk_bytes_after) == (0, 0, after)
    repo.close()
    repo = Repository(tmp_path / "repo")
    t = repo.find_target(1, "t")
    assert t is not None
    assert_files(t, 2, kept)
    more = pieces(4, 3)
    entry = Entry("m.bin", "f", 0o644, 1, 3 * PIECE, b"".join(put(t, d, compress=False) for d in more))
    assert commit(t, [dir_entry(""), *(e for e in view(t, 2).values() if e.path), entry], 300.0) == 3
    assert_files(t, 3, {**kept, "m.bin": b"".join(more)})
    assert t.check(verify_data=True).ok
    repo.close()


def test_a_reader_follows_a_chunk_that_compaction_moved(repo: Repository) -> None:
    repo.sizes = StoreSizes(pack_bytes=SMALL_PACK)
    t = repo.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
    _unique, kept = two_snapshots(t)
    t.flush()
    shared = ids_of(view(t, 2)["s.bin"])
    located = t.locate(shared)  # a pull looked these up ...
    t.prune([1])
    result = t.collect_garbage()  # ... then compaction moved some and deleted their packs
    assert result.packs_rewritten >= 1
    moved = [cid for cid in shared if t.locate([cid])[cid] != located[cid]]
    assert moved, "the test needs a compaction that moves a chunk the pull located"
    for cid in moved:
        assert not t.chunks.packs.path(located[cid][0]).exists()
    data = b"".join(t.read_located(cid, located[cid])[2] for cid in shared)  # raw codec: stored bytes are the plaintext
    assert data == kept["s.bin"]


# --- pushes running during a collection ---------------------------------------------------------------------


def garbage_chunk(t: Target, content: bytes) -> bytes:
    """A chunk that only snapshot 1 references; snapshot 2 (latest) does not."""
    commit(t, [dir_entry(""), file_entry("f", content, target=t)], 100.0)
    commit(t, [dir_entry("")], 200.0)
    t.flush()
    return blake3.blake3(content).digest()


def test_a_chunk_reported_present_survives_a_collection(repo: Repository) -> None:
    t = repo.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
    content = b"reused by the next push " * 100
    x = garbage_chunk(t, content)
    push = t.begin_push("", True)
    assert t.missing([x]) == [False]  # the client will not upload it
    t.prune([1])
    assert t.collect_garbage().chunks_removed == 0
    push.add([dir_entry(""), file_entry("again", content)])
    assert push.commit(300.0).snapshot.id == 3
    assert read_file(t, view(t, 3)["again"]) == content
    # Once the push ended, its chunk is protected by being referenced.
    t.prune([2])
    assert t.collect_garbage().chunks_removed == 0 and t.locate([x])


def test_without_a_push_the_same_chunk_is_collected(repo: Repository) -> None:
    t = repo.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
    x = garbage_chunk(t, b"nobody wants me " * 100)
    assert t.missing([x]) == [False]  # asked outside any push: nothing relies on the answer
    t.prune([1])
    result = t.collect_garbage()
    assert result.chunks_removed == 1 and t.locate([x]) == {} and t.missing([x]) == [True]


def test_chunks_uploaded_or_found_by_a_push_survive(repo: Repository) -> None:
    t = repo.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
    old = b"old content " * 200
    x = garbage_chunk(t, old)
    push = t.begin_push("", True)
    fresh = b"fresh upload " * 300
    y = put(t, fresh)  # uploaded, then indexed by the collection's flush, referenced by nothing yet
    assert t.store_chunks([(x, 0, len(old), old)]) == 0  # already stored: found present, not appended
    t.prune([1])
    assert t.collect_garbage().chunks_removed == 0
    push.add([dir_entry(""), file_entry("x", old), file_entry("y", fresh)])
    sid = push.commit(300.0).snapshot.id
    assert read_file(t, view(t, sid)["x"]) == old and read_file(t, view(t, sid)["y"]) == fresh
    # An aborted push's uploads are garbage once no push is running.
    push = t.begin_push("", True)
    z = put(t, b"abandoned " * 100)
    push.abort()
    assert t.collect_garbage().chunks_removed == 1 and t.locate([z]) == {}
    assert t.locate([x, y]).keys() == {x, y}


def test_a_commit_between_mark_and_sweep_keeps_its_chunks(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    t = repo.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
    content = b"committed while the collector was marking " * 50
    x = garbage_chunk(t, content)
    t.prune([1])
    real_sweep = gc._sweep

    def sweep_after_a_commit(store: ChunkStore, db: sqlite3.Connection, s0: int) -> tuple[int, int]:
        # The mark has run (x was not in it); a whole push commits before the sweep: it is no longer active,
        # so only the sweep's re-check of versions newer than the mark keeps x.
        push = t.begin_push("", True)
        assert t.missing([x]) == [False]
        push.add([dir_entry(""), file_entry("late", content)])
        push.commit(300.0)
        return real_sweep(store, db, s0)

    monkeypatch.setattr(gc, "_sweep", sweep_after_a_commit)
    assert t.collect_garbage().chunks_removed == 0
    assert read_file(t, view(t, 3)["late"]) == content


def test_pushes_and_collections_in_parallel_threads(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """One thread pushes (have, upload what is missing, commit) file sets drawn from a small pool, so it keeps
    reusing chunks that the other thread's prune + collect has just made garbage. No commit may fail."""
    repo.sizes = StoreSizes(pack_bytes=256 * 1024)
    t = repo.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
    pool = [os.urandom(20_000) for _ in range(24)]
    ids = [blake3.blake3(d).digest() for d in pool]
    rng = random.Random(7)
    commits: list[tuple[int, dict[str, bytes]]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def pusher() -> None:
        try:
            for i in range(40):
                picks = rng.sample(range(len(pool)), 6)
                push = t.begin_push("", True)
                need = t.missing([ids[k] for k in picks])
                t.store_chunks([(ids[k], 0, len(pool[k]), pool[k]) for k, m in zip(picks, need, strict=True) if m])
                files = {f"f{k}": pool[k] for k in picks}
                push.add([dir_entry(""), *(file_entry(p, d) for p, d in files.items())])
                commits.append((push.commit(1000.0 + i).snapshot.id, files))
        except BaseException as e:
            errors.append(e)
        finally:
            done.set()

    def collector() -> None:
        try:
            while not done.is_set():
                older = [s.id for s in t.snapshots()][:-1]
                t.prune(older)
                t.collect_garbage()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=pusher), threading.Thread(target=collector)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    assert len(commits) == 40
    sid, files = commits[-1]
    assert_files(t, sid, files)
    t.prune([s.id for s in t.snapshots()][:-1])
    t.collect_garbage()
    assert t.usage().chunks == len(files) and t.check(verify_data=True).ok


# --- crash points ---------------------------------------------------------------------------------------------

CRASH = textwrap.dedent(
    """
    import os, random, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from neotwist.chunking import DEFAULT_PARAMS
    from neotwist.server.repository import Repository, StoreSizes, gc
    import test_gc
    repo = Repository(Path(sys.argv[1]), sizes=StoreSizes(pack_bytes=test_gc.SMALL_PACK))
    t = repo.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
    test_gc.two_snapshots(t)
    t.prune([1])
    t.flush()
    point = sys.argv[2]
    if point == "copying":  # records copied into the current pack, not yet fsynced nor indexed
        real_copy = gc._copy
        def copy(*args):
            real_copy(*args)
            os._exit(9)
        gc._copy = copy
    elif point == "copied":  # copies durable and their pack sizes committed; rows not yet moved
        def switch(*args):
            os._exit(9)
        gc._switch = switch
    elif point == "switched":  # rows moved and old packs' rows deleted; old files not yet unlinked
        real_switch = gc._switch
        def switch(*args):
            real_switch(*args)
            os._exit(9)
        gc._switch = switch
    t.collect_garbage()
    os._exit(3)  # not reached
    """
)


@pytest.mark.parametrize("point", ["copying", "copied", "switched"])
def test_a_collection_killed_at_each_step_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    small = StoreSizes(pack_bytes=SMALL_PACK)
    root = tmp_path / "repo"
    proc = subprocess.run(
        [sys.executable, "-c", CRASH, str(root), point, str(Path(__file__).parent)], capture_output=True, text=True
    )
    assert proc.returncode == 9, proc.stderr
    reference = Repository(tmp_path / "reference", sizes=small)  # the same history, collected without a crash
    ref = reference.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
    _unique, kept = two_snapshots(ref)
    ref.prune([1])
    clean = ref.collect_garbage()
    reference.close()

    repo = Repository(root, sizes=small)
    t = repo.find_target(1, "t")
    assert t is not None
    assert_files(t, 2, kept)  # everything the kept snapshot needs reads back
    named = {r[0] for r in sqlite3.connect(t.directory / "index.sqlite").execute("SELECT id FROM packs")}
    strays = [n for n in t.chunks.packs.numbers() if n < max(named) and n not in named]
    report = t.check(verify_data=True)
    assert report.ok, report
    if point == "switched":
        assert strays and any("no longer in the index" in note for note in report.notes)
    else:
        assert not strays
    crashed_disk = pack_bytes(t)
    result = t.collect_garbage()  # a later collection finishes the job
    assert result.leftovers_removed == len(strays)
    assert_files(t, 2, kept)
    assert t.check(verify_data=True).ok
    # Space: everything u.bin held is gone, as after the clean run; a dead copy left by the crash may remain
    # in the current pack (below the compaction threshold).
    assert pack_bytes(t) <= clean.disk_bytes_after + SMALL_PACK * gc.DEAD_FRACTION
    assert pack_bytes(t) <= crashed_disk
    assert t.usage().stored_bytes == sum(len(d) for d in kept.values())
    repo.close()


# --- targets without history ----------------------------------------------------------------------------------


def test_a_target_without_history_keeps_only_its_latest_snapshot(repo: Repository) -> None:
    t = repo.create_target(1, "nh", encrypted=False, chunker=DEFAULT_PARAMS, keep_history=False)
    assert t.meta.keep_history is False
    shared = file_entry("same.txt", b"unchanged " * 100, target=t)
    sizes = []
    for n in range(4):
        big = pieces(10 + n, 8)  # 2 MiB that only this snapshot holds
        entry = Entry("big.bin", "f", 0o644, n, 8 * PIECE, b"".join(put(t, d, compress=False) for d in big))
        sid = commit(t, [dir_entry(""), shared, entry], 100.0 + n)
        result = t.apply_no_history()
        assert [s.id for s in t.snapshots()] == [sid]
        assert [v.first for v in t.versions("big.bin")] == [sid]  # nothing older is listable
        if n:
            assert result is not None and result.chunks_removed == 8
        assert read_file(t, view(t, sid)["big.bin"]) == b"".join(big)
        sizes.append(pack_bytes(t))
    # The disk holds about one version of big.bin, not four.
    assert max(sizes) - min(sizes) < 8 * PIECE and sizes[-1] < 2 * 8 * (PIECE + packs.HEADER_SIZE)
    # Nothing changed: nothing to collect.
    commit(t, [dir_entry(""), shared, entry], 200.0)
    assert t.apply_no_history() is None and len(t.snapshots()) == 1


def test_history_can_be_switched_off_and_on(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    t = repo.create_target(1, "home", encrypted=False, chunker=DEFAULT_PARAMS)
    for n in range(3):
        commit(t, [dir_entry(""), file_entry("f", b"version %d" % n, target=t)], 100.0 + n)
    assert t.apply_no_history() is None and len(t.snapshots()) == 3  # keeps history: untouched
    assert repo.set_keep_history(1, "home", False) is t and t.meta.keep_history is False
    assert repo.set_keep_history(1, "nope", False) is None
    assert t.apply_no_history() is not None
    assert [s.id for s in t.snapshots()] == [3] and t.usage().chunks == 1
    repo.close()
    repo = Repository(tmp_path / "repo")
    t2 = repo.find_target(1, "home")
    assert t2 is not None and t2.meta.keep_history is False
    repo.set_keep_history(1, "home", True)
    commit(t2, [dir_entry(""), file_entry("f", b"version 4", target=t2)], 200.0)
    assert t2.apply_no_history() is None and len(t2.snapshots()) == 2
    assert [m.name for m in repo.target_metas(1)] == ["home"] and repo.target_metas(2) == []
    repo.close()


def test_prune_and_collect_refused_on_a_read_only_repository(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    t = repo.create_target(1, "home", encrypted=False, chunker=DEFAULT_PARAMS)
    commit(t, [dir_entry(""), file_entry("f", b"x", target=t)], 1.0)
    ro = Repository(tmp_path / "repo", read_only=True)
    rt = ro.find_target(1, "home")
    assert rt is not None and rt.read_only
    for call in (
        lambda: rt.prune([1]),
        rt.collect_garbage,
        lambda: rt.begin_push("", False),
        lambda: ro.create_target(1, "x", encrypted=False, chunker=DEFAULT_PARAMS),
    ):
        with pytest.raises(Refused) as e:
            call()
        assert as_sent(e.value).code == ErrorCode.PERMISSION_DENIED
    assert [s.id for s in rt.snapshots()] == [1]
    ro.close()
    repo.close()
