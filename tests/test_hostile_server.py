"""A hostile server cannot make neo-pull hold more memory than its budgets, whatever it lists.

The real pull code runs against :class:`fakeserver.FakeServer` in memory; memory is measured with
tracemalloc (the fake answers a get one chunk per step, so what is held is the client's).
"""

from __future__ import annotations

import os
import stat
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from fakeserver import FakeServer, run_client

from neotwist.chunking import DEFAULT_PARAMS, Chunker
from neotwist.client import pull as pullmod
from neotwist.client import stash
from neotwist.client.pull import PullError, PullIncomplete, PullOptions, pull
from neotwist.codec import compute_id
from neotwist.wire.errors import ErrorCode, RemoteError
from neotwist.wire.messages import CODEC_RAW, ChunkReply, Entry, Error, Get, GetFiles, Ok, VersionRecord

MiB = 1024 * 1024
BLOCK = os.urandom(256 * 1024)


def _ids(n: int) -> bytes:
    return os.urandom(32 * n)


def _chunks(get: Get) -> Any:
    for cid in get.ids:
        yield ChunkReply(rid=0, id=cid, codec=CODEC_RAW, size=len(BLOCK), data=BLOCK)


def _pull(fake: FakeServer, dest: Path) -> Any:
    async def client(reactor: Any, peer: Any) -> Any:
        return await pull(reactor, peer, "t", "", str(dest), PullOptions(workers=2))

    tracemalloc.start()
    try:
        try:
            run_client(fake, client)
        except BaseException as e:
            error: BaseException | None = e
        else:
            error = None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return error, peak


def test_a_file_listed_as_one_byte_gets_no_more_than_one_byte(tmp_path: Path) -> None:
    """The budget charged the listed size: a file listed at 1 byte with 64 chunks of 256 KiB had all 16 MiB
    held at once. Now more data than the listed size makes the file damaged at the first chunk."""
    fake = FakeServer([[Entry("", "d", 0o755, 1, 0), Entry("liar", "f", 0o644, 1, 1, _ids(64))]], _chunks)
    error, peak = _pull(fake, tmp_path / "dest")
    assert peak < 4 * MiB, peak
    assert isinstance(error, PullIncomplete), error
    assert "liar: the server sent more data than the file's listed size" in str(error)
    assert not (tmp_path / "dest" / "liar").exists()


def test_chunk_data_past_the_budget_ends_the_pull(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing whose sizes add up, but whose first segment carries the whole file: what arrives is charged,
    and past twice the budget the pull stops (here the budget is 4 MiB; the file 16 MiB)."""
    monkeypatch.setattr(pullmod, "FETCH_BYTES", 4 * MiB)
    fake = FakeServer([[Entry("", "d", 0o755, 1, 0), Entry("skewed", "f", 0o644, 1, 16 * MiB, _ids(256))]], _chunks)
    error, peak = _pull(fake, tmp_path / "dest")
    assert peak < 16 * MiB, peak
    assert isinstance(error, PullError), error
    assert "the server sent far more chunk data than the listed sizes announce" in str(error)


def test_a_listing_carries_a_bounded_number_of_chunk_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Continuation records had no byte bound (1.5 GiB of ids held); now the listing stops at its bound
    (patched to 4 MiB here; 1 GiB in use) as it arrives."""
    monkeypatch.setattr(stash, "LISTING_ID_BYTES", 4 * MiB, raising=False)
    records = [Entry("big", "f", 0o644, 1, 1 << 40, _ids(65536), more=i < 15) for i in range(16)]  # 32 MiB
    fake = FakeServer([[Entry("", "d", 0o755, 1, 0)], *([r] for r in records)])
    error, peak = _pull(fake, tmp_path / "dest")
    assert peak < 16 * MiB, peak
    assert isinstance(error, PullError), error
    assert "more than 4 MiB of chunk ids" in str(error) and "pull a sub-path" in str(error)


def _one_file(data: bytes, mode: int, root_mode: int = 0o777) -> FakeServer:
    cid = compute_id(data)

    def chunks(get: Get) -> Any:
        for _ in get.ids:
            yield ChunkReply(rid=0, id=cid, codec=CODEC_RAW, size=len(data), data=data)

    return FakeServer([[Entry("", "d", root_mode, 1, 0), Entry("prog", "f", mode, 1, len(data), cid)]], chunks)


def _pull_with(fake: FakeServer, dest: Path, **options: Any) -> None:
    async def client(reactor: Any, peer: Any) -> Any:
        peer.features = frozenset(fake.features)  # as the real client notes them from the server's welcome
        return await pull(reactor, peer, "t", "", str(dest), PullOptions(workers=2, **options))

    run_client(fake, client)


def test_the_mode_of_an_existing_destination_is_left_alone(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    _pull_with(_one_file(b"#!/bin/sh\n", 0o755, root_mode=0o777), dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert (dest / "prog").read_bytes() == b"#!/bin/sh\n"
    # A destination the pull creates takes the stored mode.
    fresh = tmp_path / "fresh"
    _pull_with(_one_file(b"#!/bin/sh\n", 0o755, root_mode=0o750), fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o750


def test_setuid_and_setgid_are_dropped_unless_asked_or_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    _pull_with(_one_file(b"x", 0o6755), tmp_path / "a")
    assert stat.S_IMODE((tmp_path / "a" / "prog").stat().st_mode) == 0o755
    _pull_with(_one_file(b"x", 0o6755), tmp_path / "b", preserve_special_bits=True)
    assert stat.S_IMODE((tmp_path / "b" / "prog").stat().st_mode) == 0o6755
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    _pull_with(_one_file(b"x", 0o6755), tmp_path / "c")
    assert stat.S_IMODE((tmp_path / "c" / "prog").stat().st_mode) == 0o6755


def test_a_fifo_listed_set_id_is_made_without_those_bits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FIFOs and device nodes get their mode through the same rule as files: set-id bits only when asked."""
    from neotwist.client.localfs import SafeDest

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for special_bits, wanted in ((False, 0o755), (True, 0o6755)):
        dest = SafeDest(str(tmp_path / f"d{wanted:o}"), special_bits=special_bits)
        try:
            dest.make_special("pipe", "p", 0, 0o6755, 1_000_000_000, None)
        finally:
            dest.close()
        st = (tmp_path / f"d{wanted:o}" / "pipe").lstat()
        assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == wanted


def _probe(
    tmp_path: Path, *, vouched: bool = False, batches: bool = False, **options: Any
) -> tuple[bytes, list[bytes]]:
    """A local file, and a listing of its path with one of its chunk ids among 30 random ones: the id it
    holds, and the ids the client asked for. ``vouched``: the server lists a version of that path with the
    local file's size and mtime (a version the target holds). ``batches``: the server offers get_files (the
    file is small: it is examined and fetched with a batch)."""
    dest = tmp_path / "dest"
    dest.mkdir()
    secret = os.urandom(100_000)
    (dest / "diary").write_bytes(secret)
    st = (dest / "diary").stat()
    held = next(iter(Chunker(DEFAULT_PARAMS).cut_bytes(secret)))[0].id
    ids = [os.urandom(32) for _ in range(30)]
    ids[7] = held

    def chunks(get: Get) -> Any:
        for cid in get.ids:
            yield ChunkReply(rid=0, id=cid, codec=CODEC_RAW, size=1, data=b"x")

    listing = [Entry("", "d", 0o755, 1, 0), Entry("diary", "f", 0o644, 1, 30, b"".join(ids))]
    versions = [VersionRecord(1, 2, 1.0, "f", 0o644, st.st_mtime_ns, st.st_size)] if vouched else []
    fake = FakeServer([listing], chunks, versions=versions, batches=batches)
    with pytest.raises(PullIncomplete):  # the made-up chunks do not match their ids: what counts is the asking
        _pull_with(fake, dest, **options)
    asked = [cid for m in fake.requests if isinstance(m, Get) for cid in m.ids]
    asked += [cid for m in fake.requests if isinstance(m, GetFiles) for f in m.files for cid in f.ids]
    assert batches == any(isinstance(m, GetFiles) for m in fake.requests)
    return held, asked


@pytest.mark.parametrize("batches", [False, True])
def test_a_server_cannot_learn_which_chunks_a_local_file_holds(tmp_path: Path, batches: bool) -> None:
    held, asked = _probe(tmp_path, batches=batches)
    assert held in asked and len(asked) == 30  # all asked for: the server learns nothing from an omission


@pytest.mark.parametrize("batches", [False, True])
def test_a_local_file_that_is_a_version_the_target_holds_is_reused(tmp_path: Path, batches: bool) -> None:
    held, asked = _probe(tmp_path, vouched=True, batches=batches)
    assert held not in asked and len(asked) == 29


@pytest.mark.parametrize("batches", [False, True])
def test_reuse_any_reuses_any_local_file(tmp_path: Path, batches: bool) -> None:
    held, asked = _probe(tmp_path, reuse_any=True, batches=batches)
    assert held not in asked and len(asked) == 29


def _stale_tree(dest: Path, n: int, current: bool = False) -> tuple[list[Entry], dict[bytes, bytes]]:
    """n small files the server lists; ``dest`` holds another version of each (other bytes and mtime; with
    ``current``, every other one holds the listed bytes already, under another mtime)."""
    entries = [Entry("", "d", 0o755, 1, 0)]
    data: dict[bytes, bytes] = {}
    dest.mkdir()
    for i in range(n):
        new = f"new {i}\n".encode() * 10
        cid = compute_id(new)
        data[cid] = new
        entries.append(Entry(f"f{i:04}", "f", 0o644, 2_000_000_000_000_000_000, len(new), cid))
        (dest / f"f{i:04}").write_bytes(new if current and i % 2 == 0 else f"old {i}\n".encode() * 10)
    return entries, data


def _serving(data: dict[bytes, bytes]) -> Any:
    """Answers a get with the chunks of ``data`` (id -> bytes) it names, as stored (raw)."""

    def chunks(get: Get) -> Any:
        for cid in get.ids:
            yield ChunkReply(rid=0, id=cid, codec=CODEC_RAW, size=len(data[cid]), data=data[cid])

    return chunks


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_files_a_damaged_batch_delivered_are_fetched_again_whole(tmp_path: Path) -> None:
    """The server sends two files of a get_files, then reports damage (as it does when a later read group
    fails): each file is fetched again on its own, and what the batch delivered of it counts for nothing."""
    dest = tmp_path / "dest"
    entries, data = _stale_tree(dest, 5)

    chunks = _serving(data)

    def batch(message: GetFiles) -> Any:
        for f in message.files[:2]:
            yield from chunks(Get(rid=0, handle=1, snapshot=1, path=f.path, ids=f.ids))
        yield Error(rid=0, code=ErrorCode.DAMAGED, message="a chunk is damaged", path="elsewhere")

    fake = FakeServer([entries], chunks, batches=True, get_files=batch)
    _pull_with(fake, dest)
    for e in entries[1:]:
        assert (dest / e.path).read_bytes() == data[e.chunks]


@pytest.mark.parametrize("how", ["ok", "refused", "not-a-chunk", "damaged"])
def test_a_stale_copy_pulled_in_batches_keeps_no_descriptor(tmp_path: Path, how: str) -> None:
    """700 stale files (11 examined batches, half with a chunk to reuse) end with every descriptor closed and
    no temporary file left, whether the server answers, refuses, answers nonsense or reports damage."""
    dest = tmp_path / "dest"
    entries, data = _stale_tree(dest, 700, current=True)

    def chunks(get: Get) -> Any:
        if how == "refused":
            yield Error(rid=0, code=ErrorCode.LIMIT_EXCEEDED, message="no")
        elif how == "not-a-chunk":
            yield Ok(rid=0)
        elif how == "damaged":
            yield Error(rid=0, code=ErrorCode.DAMAGED, message="rot")
        else:
            yield from _serving(data)(get)

    fake = FakeServer([entries], chunks, batches=True)
    before = _open_fds()
    try:
        _pull_with(fake, dest, reuse_any=True)
    except (PullError, PullIncomplete, RemoteError):  # a refusal ends the pull as it ends a push: RemoteError
        assert how != "ok"
    else:
        assert how == "ok"
        assert all((dest / e.path).read_bytes() == data[e.chunks] for e in entries[1:])
    assert _open_fds() <= before + 2  # (a descriptor or two of the test's own machinery may come and go)
    assert not [n for n in os.listdir(dest) if ".neotmp." in n]


def test_a_local_version_nothing_is_taken_from_may_change_while_the_pull_runs(tmp_path: Path) -> None:
    """A stale local file none of whose chunks the new version has is not held open: the user may write to it
    while the batch is fetched, and the new version still replaces it (it was only refused when its chunks
    were being copied)."""
    dest = tmp_path / "dest"
    entries, data = _stale_tree(dest, 3)

    chunks = _serving(data)

    def batch(message: GetFiles) -> Any:
        with open(dest / "f0001", "ab") as f:
            f.write(b"written by the user meanwhile\n")
        for f in message.files:
            yield from chunks(Get(rid=0, handle=1, snapshot=1, path=f.path, ids=f.ids))

    fake = FakeServer([entries], chunks, batches=True, get_files=batch)
    _pull_with(fake, dest)
    for e in entries[1:]:
        assert (dest / e.path).read_bytes() == data[e.chunks]


def test_versions_asked_about_stale_files_are_few_at_a_time(tmp_path: Path) -> None:
    """Whether a stale file's chunks may be reused is asked with ``versions``, whose answer is held whole: at
    most VERSIONS_IN_FLIGHT are outstanding, however many files and batches are in flight."""
    from neotwist.wire.messages import ListVersions, VersionList

    dest = tmp_path / "dest"
    entries, data = _stale_tree(dest, 400, current=True)

    chunks = _serving(data)

    fake = FakeServer([entries], chunks, batches=True)
    waiting: list[tuple[Any, int]] = []
    most = [0]
    answer, step = fake.message_received, fake.step

    def message_received(peer: Any, message: Any) -> Any:
        if isinstance(message, ListVersions):
            waiting.append((peer, message.rid))  # answered at the next step, with every other one waiting
            return None
        return answer(peer, message)

    def stepped() -> bool:
        most[0] = max(most[0], len(waiting))
        for peer, rid in waiting:
            peer.send(VersionList(rid=rid, versions=[], done=True))
        answered = bool(waiting)
        waiting.clear()
        return step() or answered

    fake.message_received = message_received  # type: ignore[method-assign]
    fake.step = stepped  # type: ignore[method-assign]
    _pull_with(fake, dest)
    assert all((dest / e.path).read_bytes() == data[e.chunks] for e in entries[1:])
    assert 1 < most[0] <= pullmod.VERSIONS_IN_FLIGHT, most[0]
