"""An aborted push's chunks: kept for a resume, then reclaimed without a prune; at once when space is short;
and the free-space reserve refuses pushes and chunks with the numbers."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from repo_support import Refused, as_sent, commit, dir_entry, file_entry, put, read_file, view

from neotwist.chunking import DEFAULT_PARAMS
from neotwist.server.repository import Repository, Target, chunkstore
from neotwist.server.repository.space import Reserve, free_bytes
from neotwist.wire.errors import ErrorCode


def setup(tmp_path: Path) -> tuple[Repository, Target, bytes]:
    repo = Repository(tmp_path / "repo")
    t = repo.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
    kept = random.Random(1).randbytes(100_000)
    commit(t, [dir_entry(""), file_entry("kept.bin", kept, target=t)], 100.0)
    return repo, t, kept


def abandoned_push(t: Target, n: int = 3) -> list[bytes]:
    """A push that stores ``n`` new chunks, then aborts (its connection was lost)."""
    rng = random.Random(2)
    push = t.begin_push("", False)
    ids = [put(t, rng.randbytes(50_000), compress=False) for _ in range(n)]
    push.abort()
    return ids


def test_an_aborted_push_keeps_its_chunks_for_a_resume_then_they_are_reclaimed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, t, kept = setup(tmp_path)
    ids = abandoned_push(t)
    assert t.missing(ids) == [False] * 3  # a client that reconnects now resumes: nothing to upload again
    assert not t.reclaim_wanted() and t.reclaim() is None
    assert t.reclaim_wanted(now=10**9)  # once the grace is over

    monkeypatch.setattr(chunkstore, "ABANDONED_GRACE", 0.0)
    result = t.reclaim()
    assert result is not None and result.chunks_removed == 3 and result.stored_bytes_removed == 150_000
    assert t.missing(ids) == [True] * 3
    assert read_file(t, view(t, 1)["kept.bin"]) == kept
    assert t.check(verify_data=True).ok
    assert t.reclaim() is None  # nothing left to do
    repo.close()


def test_a_committed_push_leaves_nothing_to_reclaim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunkstore, "ABANDONED_GRACE", 0.0)
    repo, t, kept = setup(tmp_path)
    data = random.Random(3).randbytes(80_000)
    commit(t, [dir_entry(""), file_entry("kept.bin", kept), file_entry("new.bin", data, target=t)], 200.0)
    assert not t.reclaim_wanted()
    repo.close()


def test_when_space_is_short_an_aborted_push_is_reclaimed_at_once(tmp_path: Path) -> None:
    repo, t, kept = setup(tmp_path)
    push = t.begin_push("", False)
    ids = [put(t, random.Random(4).randbytes(50_000), compress=False)]
    t.reserve = Reserve(size=free_bytes(t.directory) // 2 + 1)  # less than twice the reserve is free: tight
    push.abort()
    assert t.missing(ids) == [True]
    assert read_file(t, view(t, 1)["kept.bin"]) == kept
    repo.close()


def test_the_reserve_refuses_a_push_and_new_chunks_with_the_numbers(tmp_path: Path) -> None:
    repo, t, kept = setup(tmp_path)
    free = free_bytes(t.directory)
    t.reserve = Reserve(size=free + 10**9)
    with pytest.raises(Refused) as refused:
        t.begin_push("", False)
    assert as_sent(refused.value).code == ErrorCode.DISK_FULL
    assert "the server's disk is full" in refused.value.message and "kept free" in refused.value.message

    t.reserve = Reserve(size=0)
    push = t.begin_push("", False)
    t.reserve = Reserve(size=free - 1000)  # a 50 kB chunk would pass below it
    with pytest.raises(Refused) as refused:
        put(t, random.Random(5).randbytes(50_000), compress=False)
    assert as_sent(refused.value).code == ErrorCode.DISK_FULL
    put(t, kept, compress=False)  # a chunk already stored costs nothing: accepted
    push.abort()
    repo.close()


@pytest.mark.parametrize(
    ("text", "reserve"),
    [("2%", Reserve(fraction=0.02)), ("0", Reserve(size=0)), ("10GiB", Reserve(size=10 * 1024**3))],
)
def test_min_free_forms(text: str, reserve: Reserve) -> None:
    assert Reserve.parse(text) == reserve
    with pytest.raises(ValueError, match="percentage"):
        Reserve.parse("100%")
