"""A target's chunk store seen through the public seams garbage collection and check use (repository/chunkstore.py):
the sweep holds off "present" answers, copies land in the current pack, and stray packs are found."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import blake3

from neotwist.chunking import DEFAULT_PARAMS
from neotwist.server.repository import Repository, StoreSizes
from neotwist.wire.messages import CODEC_RAW


def chunk(n: int) -> tuple[bytes, int, int, bytes]:
    data = os.urandom(n)
    return blake3.blake3(data).digest(), CODEC_RAW, n, data


def test_the_sweep_hands_out_the_protected_ids_and_holds_off_present_answers(repo: Repository) -> None:
    t = repo.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
    first = chunk(1000)
    t.store_chunks([first])
    push = t.begin_push("", False)  # an active push: what it is told is present stays protected
    assert t.missing([first[0]]) == [False]
    answered = threading.Event()
    with t.chunks.sweeping() as protected:
        assert first[0] in protected
        worker = threading.Thread(target=lambda: (t.missing([first[0]]), answered.set()), daemon=True)
        worker.start()
        assert not answered.wait(0.2)  # no "present" answer while the collector sweeps
    assert answered.wait(5)
    push.abort()


def test_copies_go_to_the_current_pack_and_a_stray_pack_is_named(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", sizes=StoreSizes(pack_bytes=4096))
    t = repo.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
    store = t.chunks
    for _ in range(4):
        t.store_chunks([chunk(3000)])  # one record per pack
    t.flush()
    numbers = store.packs.numbers()
    assert len(numbers) == 4 and all(store.pack_indexed(n) for n in numbers)
    cid, codec, size, data = chunk(100)
    [(pack, offset)] = store.append_records([(cid, codec, size, data)])
    assert pack == store.packs.position()[0] and store.read_at(cid, (pack, offset, len(data), codec, size)) == (
        codec,
        size,
        data,
    )
    stray = store.packs.path(2)
    with t.index.writing() as db:
        db.execute("DELETE FROM chunks WHERE pack = 2")
        db.execute("DELETE FROM packs WHERE id = 2")  # what a crash after a compaction's commit leaves
    assert stray.exists() and store.unindexed_packs() == [2]
    repo.close()
