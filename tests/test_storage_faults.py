"""Running out of disk, failing writes and a locked index never damage a committed snapshot.

Faults are injected where a target really touches the disk: the pack store's ``write``, ``fsync``,
``ftruncate`` and pack creation fail with ENOSPC or EIO (a failing write first writes half its bytes, as a
real short write before ENOSPC does), and the index gets real SQLite failures: ``PRAGMA max_page_count``
makes SQLite answer SQLITE_FULL exactly as on a full disk (and roll the transaction back itself), and a
second connection holding the write lock makes it answer "database is locked". After each failed operation
every committed snapshot must read back byte-identical, ``check --verify-data`` must be clean, the same
must hold after the target is closed and opened again (a restart), and the next push must work.
"""

from __future__ import annotations

import errno
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import blake3
import pytest
from repo_support import Refused, as_sent, dir_entry, read_chunk, view

from neotwist import atomicfile
from neotwist.chunking import DEFAULT_PARAMS
from neotwist.codec import raw_bytes
from neotwist.server.repository import Repository, StoreSizes, Target, index, packs
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode
from neotwist.wire.messages import CODEC_RAW, Entry

PIECE = 16 * 1024
STORAGE_CODES = (ErrorCode.STORAGE, ErrorCode.DISK_FULL)


class Faults:
    """What the pack store sees as ``os``, with at most one planned fault: the ``n``-th call of ``op`` (write or
    writev, fsync, ftruncate, create) runs ``action`` instead of (or, for a write, after half of) the real call."""

    def __init__(self) -> None:
        self._plan: tuple[str, int, Callable[[], None]] | None = None
        self.fired = False

    def arm(self, op: str, n: int, action: Callable[[], None]) -> None:
        self._plan, self.fired = (op, n, action), False

    def disarm(self) -> None:
        self._plan = None

    def _hit(self, op: str) -> Callable[[], None] | None:
        if self._plan is None or self._plan[0] != op:
            return None
        name, n, action = self._plan
        if n > 1:
            self._plan = (name, n - 1, action)
            return None
        self._plan, self.fired = None, True
        return action

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        action = self._hit("write")
        if action is None:
            return os.write(fd, data)
        try:
            action()
        except OSError:
            os.write(fd, bytes(data)[: len(data) // 2])  # torn: half the record reached the file
            raise
        return os.write(fd, data)

    def writev(self, fd: int, buffers: Any) -> int:
        """Records are appended a batch at a time: a planned write fault hits the whole batch (half of it reaches
        the file, torn)."""
        action = self._hit("write")
        if action is None:
            return os.writev(fd, buffers)
        try:
            action()
        except OSError:
            data = b"".join(bytes(b) for b in buffers)
            os.write(fd, data[: len(data) // 2])
            raise
        return os.writev(fd, buffers)

    def fsync(self, fd: int) -> None:
        action = self._hit("fsync")
        if action is not None:
            action()
        os.fsync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        action = self._hit("ftruncate")
        if action is not None:
            action()
        os.ftruncate(fd, length)

    def open(self, path: Any, flags: int, mode: int = 0o777) -> int:
        action = self._hit("create") if flags & os.O_CREAT else None
        if action is not None:
            action()
        return os.open(path, flags, mode)


class Index:
    """Real SQLite failures on a target's index: a full disk (``max_page_count`` on every connection the
    target or its collector opens) or a write lock held by another connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.connections: list[sqlite3.Connection] = []
        self._locker: sqlite3.Connection | None = None
        self.full = False

    def track(self, db: sqlite3.Connection) -> sqlite3.Connection:
        self.connections.append(db)
        if self.full:
            self._cap(db)
        return db

    def _cap(self, db: sqlite3.Connection) -> None:
        try:
            (pages,) = db.execute("PRAGMA page_count").fetchone()
            db.execute(f"PRAGMA max_page_count={pages}")
        except sqlite3.ProgrammingError:  # closed
            pass

    def fill(self) -> None:
        self.full = True
        for db in self.connections:
            self._cap(db)

    def lock(self) -> None:
        self._locker = sqlite3.connect(self.path, isolation_level=None, timeout=0)
        self._locker.execute("BEGIN IMMEDIATE")

    def clear(self) -> None:
        self.full = False
        for db in self.connections:
            try:
                db.execute("PRAGMA max_page_count=4294967294")
            except sqlite3.ProgrammingError:
                pass
        if self._locker is not None:
            self._locker.execute("ROLLBACK")
            self._locker.close()
            self._locker = None


SMALL = StoreSizes(pack_bytes=96 * 1024, auto_flush=64 * 1024)
"""Small packs and flushes: rotations and auto-flushes happen in a small test."""


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> StoreSizes:
    """SMALL sizes for the repositories a test opens, and short lock waits."""
    monkeypatch.setattr(index, "BUSY_TIMEOUT", 0.05)
    return SMALL


@contextmanager
def faulty(monkeypatch: pytest.MonkeyPatch, db_path: Path) -> Iterator[tuple[Faults, Index]]:
    faults = Faults()
    sql = Index(db_path)
    real_connect = index.connect
    real_fsync_dir = atomicfile.fsync_dir

    def connect(path: Path, schema: str | None, migrations: tuple[str, ...] = ()) -> sqlite3.Connection:
        return sql.track(real_connect(path, schema, migrations))

    def fsync_dir(path: Path | str) -> None:
        action = faults._hit("fsync")
        if action is not None:
            action()
        real_fsync_dir(path)

    monkeypatch.setattr(packs, "os", faults)
    monkeypatch.setattr(packs, "fsync_dir", fsync_dir)
    monkeypatch.setattr(index, "connect", connect)
    yield faults, sql


def chunks_of(data: bytes) -> list[bytes]:
    return [data[i : i + PIECE] for i in range(0, len(data), PIECE)] or [b""]


def push(t: Target, files: dict[str, bytes], now: float) -> int:
    """Store the files' chunks and commit them (and the root) as one snapshot; the snapshot id."""
    entries = [dir_entry("")]
    for path, data in sorted(files.items()):
        pieces = [p for p in chunks_of(data) if p]
        ids = [blake3.blake3(p).digest() for p in pieces]
        t.store_chunks([(cid, CODEC_RAW, len(p), p) for cid, p in zip(ids, pieces, strict=True)])
        entries.append(Entry(path, "f", 0o644, 1, len(data), b"".join(ids)))
    p = t.begin_push("", True)
    try:
        p.add(entries)
        return p.commit(now).snapshot.id
    finally:
        p.abort()  # no-op once committed; a failed push is dropped, as the session does


def read_back(t: Target, entry: Entry) -> bytes:
    out = bytearray()
    for i in range(0, len(entry.chunks), limits.ID_SIZE):
        cid = entry.chunks[i : i + limits.ID_SIZE]
        codec, size, data = read_chunk(t, cid)
        out += raw_bytes(codec, size, data)
    return bytes(out)


def assert_intact(t: Target, model: dict[int, dict[str, bytes]]) -> None:
    report = t.check(verify_data=True)
    assert report.ok, report
    assert sorted(s.id for s in t.snapshots()) == sorted(model)
    for sid, files in model.items():
        entries = {p: e for p, e in view(t, sid).items() if e.kind == "f"}
        assert sorted(entries) == sorted(files)
        for path, data in files.items():
            assert read_back(t, entries[path]) == data, (sid, path)


def reopen(repo_dir: Path, repo: Repository) -> tuple[Repository, Target]:
    repo.close()
    repo = Repository(repo_dir, sizes=SMALL)
    t = repo.find_target(1, "t")
    assert t is not None
    return repo, t


def test_a_failed_index_write_after_the_packs_synced_keeps_the_snapshot_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: StoreSizes
) -> None:
    """The reported loss: a push whose chunk index transaction fails (disk full, or the index locked too
    long) after its pack was fsynced, then the same push again, then a restart. The retry used to commit
    chunk rows past the pack end the index recorded, and the restart truncated those records away."""
    with faulty(monkeypatch, tmp_path / "repo" / "t1" / "index.sqlite") as (_faults, sql):
        repo = Repository(tmp_path / "repo", sizes=small)
        t = repo.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
        rng = random.Random(7)
        a = {f"a{i}.txt": rng.randbytes(50_000) for i in range(3)}
        model = {push(t, a, 100.0): a}
        b = {**a, "big.bin": rng.randbytes(2_000_000)}
        for fault in (sql.fill, sql.lock):
            fault()
            with pytest.raises(Refused) as failed:
                push(t, b, 200.0)
            assert as_sent(failed.value).code in STORAGE_CODES
            assert "no transaction is active" not in failed.value.message
            if fault == sql.fill:
                assert as_sent(failed.value).code == ErrorCode.DISK_FULL
                assert "the server's disk is full" in failed.value.message
            else:
                assert "locked" in failed.value.message
            sql.clear()
            assert_intact(t, model)
            repo, t = reopen(tmp_path / "repo", repo)
            assert_intact(t, model)
        model[push(t, b, 200.0)] = b
        repo, t = reopen(tmp_path / "repo", repo)
        model[push(t, {**b, "c.txt": b"c"}, 300.0)] = {**b, "c.txt": b"c"}
        assert_intact(t, model)
        repo.close()


def _actions(rng: random.Random, sql: Index) -> tuple[str, Callable[[], None]]:
    def os_error(code: int) -> Callable[[], None]:
        def fail() -> None:
            raise OSError(code, os.strerror(code))

        return fail

    kind = rng.choice(["ENOSPC", "EIO", "sqlite-full", "sqlite-locked"])
    if kind == "ENOSPC":
        return kind, os_error(errno.ENOSPC)
    if kind == "EIO":
        return kind, os_error(errno.EIO)
    if kind == "sqlite-full":
        return kind, sql.fill
    return kind, sql.lock


@pytest.mark.parametrize("seed", range(12))
def test_seeded_faults_in_push_commit_prune_and_collection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: StoreSizes, seed: int
) -> None:
    rng = random.Random(seed)
    repo_dir = tmp_path / "repo"
    with faulty(monkeypatch, repo_dir / "t1" / "index.sqlite") as (faults, sql):
        repo = Repository(repo_dir, sizes=small)
        t = repo.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
        pool = [rng.randbytes(rng.randrange(1, 120_000)) for _ in range(10)]
        model: dict[int, dict[str, bytes]] = {}
        now = 100.0
        failures = 0
        for _step in range(10):
            now += 10
            op = rng.choice(["push", "push", "push", "prune", "collect"])
            files = {f"f{i}": rng.choice(pool) + bytes([i]) for i in rng.sample(range(8), rng.randrange(1, 6))}
            kept = sorted(model)
            victim = rng.choice(kept[:-1]) if len(kept) > 1 else None
            armed = rng.random() < 0.8
            if armed:
                kind, action = _actions(rng, sql)
                where = rng.choice(["write", "fsync", "ftruncate", "create"])
                if kind.startswith("sqlite") and rng.random() < 0.3:
                    action()  # failing from the operation's first index write
                else:
                    faults.arm(where, rng.randrange(1, 6), action)
            try:
                if op == "push":
                    model[push(t, files, now)] = files
                elif op == "prune" and victim is not None:
                    t.prune([victim])
                    del model[victim]
                elif op == "collect":
                    t.collect_garbage()
            except Refused as e:
                assert as_sent(e).code in STORAGE_CODES, e
                assert "no transaction is active" not in e.message
                failures += 1
            finally:
                faults.disarm()
                sql.clear()
            assert_intact(t, model)
            if rng.random() < 0.5:
                repo, t = reopen(repo_dir, repo)
                assert_intact(t, model)
        # After all that, a fault-free push of everything still works and a restart agrees.
        model[push(t, dict(enumerate_files(pool)), now + 10)] = dict(enumerate_files(pool))
        repo, t = reopen(repo_dir, repo)
        assert_intact(t, model)
        repo.close()


def enumerate_files(pool: list[bytes]) -> Iterator[tuple[str, bytes]]:
    for i, data in enumerate(pool):
        yield f"p{i}", data


def test_a_copy_skipped_as_stored_is_checked_if_the_stored_one_was_discarded_meanwhile(tmp_path: Path) -> None:
    """A put of a chunk the target holds is dropped unread (no decompression). If a failed write discards the
    pending original between that look and the store, the copy must be checked before it is stored: a forged
    copy never gets in under the id."""
    import threading

    from neotwist.server.repository.errors import ChunkRejected

    repo = Repository(tmp_path / "repo")
    t = repo.create_target(1, "t", encrypted=False, chunker=DEFAULT_PARAMS)
    real = b"the real chunk " * 100
    cid = blake3.blake3(real).digest()
    t.store_chunks([(cid, CODEC_RAW, len(real), real)])  # pending, not yet indexed
    forged = b"X" * len(real)
    outcome: list[BaseException | int] = []
    t.chunks._gc_lock.acquire()  # the store below looks (sees it pending, skips the check), then waits for this lock
    worker = threading.Thread(
        target=lambda: outcome.append(_store(t, [(cid, CODEC_RAW, len(forged), forged)])), daemon=True
    )
    worker.start()
    deadline = time.monotonic() + 10
    while not any(f.f_code.co_name == "store_chunks_sized" for f in _frames(worker)) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    with t.chunks._store_lock:  # what a failed write elsewhere does: every uncommitted chunk is forgotten
        t.chunks._pending.clear()
        t.chunks._pending_bytes = 0
        t.chunks.packs.discard()
    t.chunks._gc_lock.release()
    worker.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], ChunkRejected), outcome
    assert t.missing([cid]) == [True]
    t.store_chunks([(cid, CODEC_RAW, len(real), real)])
    assert read_chunk(t, cid)[2] == real
    repo.close()


def _store(t: Target, chunks: list[tuple[bytes, int, int, bytes]]) -> BaseException | int:
    try:
        return t.store_chunks(chunks)
    except BaseException as e:
        return e


def _frames(thread: object) -> Iterator[Any]:
    import sys

    frame = sys._current_frames().get(getattr(thread, "ident", None) or -1)
    while frame is not None:
        yield frame
        frame = frame.f_back
