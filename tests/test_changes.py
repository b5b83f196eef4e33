"""The change counter the session relies on to keep a handle's resolved access: after a commit to the file, by
any connection, every thread's next reading is past every reading taken before it; it holds no read transaction
open (that would freeze its view and stall checkpoints)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from neotwist.server.changes import ChangeCounter


def _db(tmp_path: Path) -> Path:
    path = tmp_path / "x.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (a)")
    db.close()
    return path


def _commit(path: Path) -> None:
    """A commit by a connection of its own, as another process (neo-admin) makes it."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("INSERT INTO t VALUES (1)")
    db.close()


def _on_thread(f: Callable[[], int]) -> Callable[[], int]:
    """``f`` run on one long-lived thread of its own, as a worker of the reactor's pool runs jobs."""
    pool = ThreadPoolExecutor(max_workers=1)
    return lambda: pool.submit(f).result(timeout=10)


def test_every_thread_sees_a_commit_made_elsewhere(tmp_path: Path) -> None:
    path = _db(tmp_path)
    counter = ChangeCounter(path)
    a, b = _on_thread(counter.current), _on_thread(counter.current)
    before = max(a(), b(), counter.current())
    assert max(a(), b(), counter.current()) == before  # nothing changed: the value holds on every thread
    _commit(path)
    assert a() > before and b() > before and counter.current() > before
    settled = counter.current()
    assert a() == b() == counter.current() == settled
    counter.bump()  # this process's own change: at once, without SQLite
    assert a() > settled
    counter.close()


def test_a_new_thread_moves_the_counter_on(tmp_path: Path) -> None:
    """A thread reading for the first time cannot know what was committed before: it counts as a change."""
    counter = ChangeCounter(_db(tmp_path))
    before = counter.current()
    assert _on_thread(counter.current)() > before
    counter.close()


def test_no_read_transaction_stays_open(tmp_path: Path) -> None:
    path = _db(tmp_path)
    counter = ChangeCounter(path)
    counter.current()
    _commit(path)
    db = sqlite3.connect(path, isolation_level=None)
    busy, _frames, _checkpointed = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0  # a reader holding a snapshot would keep the checkpoint from finishing
    db.close()
    counter.close()
    with pytest.raises(RuntimeError, match="closed"):
        counter.current()


def test_a_thread_s_connection_closes_when_the_thread_ends(tmp_path: Path) -> None:
    """The server ends its idle worker threads: each one's connection must not stay open after it (a file
    descriptor and SQLite's memory per thread that ever ran, for as long as the server runs)."""
    counter = ChangeCounter(_db(tmp_path))
    counter.current()
    threads = [threading.Thread(target=counter.current) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.open_connections() == 1  # this thread's only
    before = counter.current()
    assert _on_thread(counter.current)() > before  # the counter still works for new threads
    counter.close()
    assert counter.open_connections() == 0
