"""Noticing that an SQLite file shared with other processes changed, without reading it: a change counter.

The server re-checks a handle's access on every request so that a revoke, a grant re-pointed elsewhere or a
target removed (by ``neo-share`` on another connection, or ``neo-admin`` in another process) stops the very next
request. Looking the grant up again each time costs a fresh connection to the account store per request (a
pull of 100k small files: 100k connects), and a catalog query under the repository's lock. A
:class:`ChangeCounter` lets the session keep what it resolved and look again only when the file may have
changed: its value moves on after every commit to the file, by any connection of any process, and only then.

How: each thread keeps one connection to the file that never writes and never holds a transaction open, and
reads ``PRAGMA data_version`` on it, which SQLite changes whenever another connection (of this process or any
other) has committed since the last read. A thread that sees a new value (or reads for the first time, so it
cannot know what happened before) moves the shared counter on. So for every commit C, any :meth:`current`
that starts after C returns a value greater than any taken before C: a result cached with a value read
before it was computed is stale exactly when the value is no longer current. :meth:`bump` moves the counter
on at once for this process's own writes, so those never depend on SQLite's change detection.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from pathlib import Path


class _Own:
    """One thread's connection, and the data_version it last read there (None: not read yet)."""

    __slots__ = ("__weakref__", "db", "seen")

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.seen: int | None = None


class ChangeCounter:
    """A number that grows after every commit to the SQLite file at ``path`` (see the module docstring).
    Thread-safe; :meth:`current` is one ``PRAGMA`` on a per-thread connection (no file is opened after a
    thread's first call)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._value = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []  # every live thread's, to close them all
        self._closed = False

    def current(self) -> int:
        """The counter now: greater than any value read before the latest commit to the file (blocking, cheap)."""
        if self._closed:
            raise RuntimeError(f"the change counter of {self.path} is closed")
        own: _Own | None = getattr(self._local, "own", None)
        if own is None:
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            with self._lock:
                if self._closed:
                    db.close()
                    raise RuntimeError(f"the change counter of {self.path} is closed")
                self._connections.append(db)
            own = self._local.own = _Own(db)
            # The thread's local data goes when the thread ends (the server retires idle worker threads): its
            # connection goes with it, rather than staying open for a thread that will never use it again.
            weakref.finalize(own, self._forget, db)
        # fetchall() steps the statement to its end, so no read transaction stays open on this connection (one
        # would pin its view of the file: later reads would not see new commits, and checkpoints would stall).
        version = own.db.execute("PRAGMA data_version").fetchall()[0][0]
        with self._lock:
            if version != own.seen:
                own.seen = version
                self._value += 1
            return self._value

    def _forget(self, db: sqlite3.Connection) -> None:
        """Close the connection of a thread that has ended."""
        with self._lock:
            if db not in self._connections:  # closed with the counter
                return
            self._connections.remove(db)
        db.close()

    def open_connections(self) -> int:
        """How many threads' connections are open."""
        with self._lock:
            return len(self._connections)

    def bump(self) -> None:
        """Move the counter on: this process changed the file (called after its commit)."""
        with self._lock:
            self._value += 1

    def close(self) -> None:
        """Close every thread's connection; :meth:`current` raises RuntimeError afterwards. Idempotent."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for db in connections:
            db.close()
