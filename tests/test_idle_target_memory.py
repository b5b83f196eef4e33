"""What the server keeps once it is not being used: a target let go of gives its page caches back (an open target
nobody holds costs at most ``IDLE_TARGET_MEMORY``), a server with no connection keeps no target open, and idle
worker threads end (taking their thread-local state with them). Real repositories on disk; SQLite's own count of
the memory it holds."""

from __future__ import annotations

import _sqlite3
import ctypes
import threading
import time
from pathlib import Path

from repo_support import commit, dir_entry, open_targets, put
from twisted.python.threadpool import ThreadPool

from neotwist.chunking import DEFAULT_PARAMS
from neotwist.runtime import retire_idle_workers
from neotwist.server.repository import Repository
from neotwist.server.repository.catalog import IDLE_TARGET_MEMORY
from neotwist.wire.messages import Entry

MiB = 1024 * 1024
ENTRIES = 20_000  # a listing of these touches about 4 MiB of index pages per connection


def sqlite_memory() -> int:
    """Bytes SQLite holds in this process now, every connection's (``sqlite3_memory_used``)."""
    lib = ctypes.CDLL(_sqlite3.__file__)  # symbols are looked up in the libraries it links too
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    return int(lib.sqlite3_memory_used())


def fill(repo: Repository, name: str) -> None:
    """A target with a snapshot of ENTRIES files, listed in full (its reader's page cache fills), let go of."""
    target = repo.create_target(1, name, encrypted=False, chunker=DEFAULT_PARAMS)
    try:
        chunk = put(target, b"same content")
        entries = [dir_entry("")] + [Entry(f"d{i // 1000}/f{i}", "f", 0o644, 1, 12, chunk) for i in range(ENTRIES)]
        entries[1:1] = [dir_entry(f"d{j}") for j in range(ENTRIES // 1000)]
        snapshot = commit(target, entries, 100.0)
        assert sum(1 for _ in target.list_entries(snapshot, "", True)) == len(entries)
    finally:
        repo.release(target)


def test_a_target_let_go_of_gives_its_page_caches_back(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    try:
        before = sqlite_memory()
        fill(repo, "t")
        assert sqlite_memory() - before > 2 * MiB  # the push and the listing filled the caches
        assert repo.unsettled()
        assert repo.settle(quiet=False) == (2, 0)  # both connections shrunk; nothing closed
        assert open_targets(repo) == (1, 0)  # still open, for the next client
        assert sqlite_memory() - before < IDLE_TARGET_MEMORY
        assert not repo.unsettled() and repo.settle(quiet=False) == (0, 0)  # nothing let go of since
    finally:
        repo.close()


def test_a_quiet_server_closes_every_target_nobody_holds(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", idle=300.0)
    try:
        before = sqlite_memory()
        fill(repo, "a")
        fill(repo, "b")
        held = repo.find_target(1, "b")
        assert held is not None
        assert repo.settle(quiet=True) == (0, 1)  # a closed at once, not after the idle time; b is in use
        assert open_targets(repo) == (1, 1)
        repo.release(held)
        assert repo.settle(quiet=True) == (0, 1)
        assert open_targets(repo) == (0, 0)
        assert sqlite_memory() - before < MiB // 4  # the catalog's connections only
        a = repo.find_target(1, "a")  # opened again on demand
        assert a is not None and a.latest() is not None
        repo.release(a)
    finally:
        repo.close()


def test_idle_workers_end_and_the_pool_starts_new_ones(tmp_path: Path) -> None:
    pool = ThreadPool(0, 4)
    pool.start()
    try:
        started = threading.Barrier(4, timeout=10)
        done = threading.Semaphore(0)

        def job() -> None:
            started.wait()  # four at once: four workers
            done.release()

        for _ in range(4):
            pool.callInThread(job)
        for _ in range(4):
            assert done.acquire(timeout=10)
        deadline = time.monotonic() + 10
        while len(pool.waiters) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        workers = [t for t in pool.threads if t.is_alive()]
        assert len(workers) == 4
        assert retire_idle_workers(pool) == 4
        for t in workers:
            t.join(10)
            assert not t.is_alive()
        ran = threading.Event()
        pool.callInThread(ran.set)
        assert ran.wait(10)  # new work gets a new worker
        assert retire_idle_workers(pool) <= 1 and len(pool.threads) <= 1  # ended threads are forgotten
    finally:
        pool.stop()
