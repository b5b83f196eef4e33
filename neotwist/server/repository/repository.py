"""The repository root: the catalog of targets and the cache of open targets.

A target is known by a numeric id and lives in ``ROOT/t<id>``: the account and target names a client sends are
only ever data in ``catalog.sqlite``, never part of a file-system path.
"""

# ruff: noqa: S608  (SQL text is built only from constants and generated table names; values are bound)

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from neotwist.atomicfile import fsync_dir
from neotwist.paths import check_name
from neotwist.runtime import release_free_memory
from neotwist.server.changes import ChangeCounter
from neotwist.server.repository import index
from neotwist.server.repository.packs import make_dirs
from neotwist.server.repository.records import TargetMeta
from neotwist.server.repository.space import Ballast, Reserve
from neotwist.server.repository.target import Target
from neotwist.wire.errors import ErrorCode, NeoError
from neotwist.wire.messages import ChunkerParams, TargetInfo

_TARGET_COLUMNS = (
    "id, account_id, name, encrypted, chunker_algorithm, chunker_min, chunker_avg, chunker_max, chunker_seed,"
    " created, keep_history, key_check"
)


_REMOVED_SCHEMA = """
CREATE TABLE IF NOT EXISTS removed_targets (
    id INTEGER PRIMARY KEY,     -- the removed target's id: never given to a new target
    account_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    removed REAL NOT NULL
)"""
"""Targets removed (issue 5): the record that makes removal crash-safe and keeps ids from being reused."""

_NEXT_ID = (
    "(SELECT max(coalesce((SELECT max(id) FROM targets), 0), coalesce((SELECT max(id) FROM removed_targets), 0)) + 1)"
)
"""A new target's id: above every id ever used, so a removed target's leftover directory is never a new one's."""


def _meta(row: tuple) -> TargetMeta:
    tid, account_id, name, encrypted, algorithm, lo, avg, hi, seed, created, keep, key_check = row
    return TargetMeta(
        id=tid,
        account_id=account_id,
        name=name,
        encrypted=bool(encrypted),
        chunker=ChunkerParams(algorithm, lo, avg, hi, seed),
        created=created,
        keep_history=bool(keep),
        key_check=bytes(key_check),
    )


class Repository:
    """All targets under ``root`` (DATA/repo). Thread-safe; every method may block on disk.

    Targets are opened once and shared by every session (their own locks make that safe), so two sessions
    pushing to one target see each other's pending chunks and never open a pack twice.

    ``read_only`` opens an existing repository for inspection beside the server that owns it (``neo-admin
    check``): the catalog and every target are opened read-only, nothing is created or written, and
    :meth:`create_target` and :meth:`set_keep_history` raise NeoError(PERMISSION_DENIED).
    """

    def __init__(self, root: Path, *, read_only: bool = False, reserve: Reserve | None = None) -> None:
        self.root = root
        self.read_only = read_only
        self.reserve = reserve
        self.ballast: Ballast | None = None
        self.space_notes: list[str] = []
        """What :meth:`keep_space` did at start-up, for the server's log."""
        if reserve is not None and not read_only:
            make_dirs(root)
            self.ballast = Ballast(root)
            note = self.ballast.keep(reserve)  # before any index is opened: a full disk may need the room
            if note:
                self.space_notes.append(note)
        self._columns = _TARGET_COLUMNS
        if read_only:
            self._catalog = index.connect_read_only(root / "catalog.sqlite")
            # a catalog the server has not migrated yet (schema 1) is read as it is: no key-check records
            if "key_check" not in {row[1] for row in self._catalog.execute("PRAGMA table_info(targets)")}:
                self._columns = _TARGET_COLUMNS.replace("key_check", "x'' AS key_check")
        else:
            make_dirs(root)
            self._catalog = index.connect(root / "catalog.sqlite", index.CATALOG_SCHEMA, index.CATALOG_MIGRATIONS)
        self._lock = threading.Lock()
        self._changes = ChangeCounter(root / "catalog.sqlite")
        self._targets: dict[int, Target] = {}
        self._closed = False
        if not read_only:
            self._catalog.execute(_REMOVED_SCHEMA)
            self._sweep_removed()

    def _open(self, meta: TargetMeta) -> Target:
        """The shared Target for ``meta``; called with the lock held."""
        target = self._targets.get(meta.id)
        if target is None:
            if self._closed:
                raise RuntimeError("repository is closed")
            target = self._targets[meta.id] = Target(
                meta, self.root / f"t{meta.id}", read_only=self.read_only, reserve=self.reserve
            )
        return target

    def _find_meta(self, account_id: int, name: str) -> TargetMeta | None:
        row = self._catalog.execute(
            f"SELECT {self._columns} FROM targets WHERE account_id = ? AND name = ?", (account_id, name)
        ).fetchone()
        return None if row is None else _meta(row)

    def find_target(self, account_id: int, name: str) -> Target | None:
        with self._lock:
            meta = self._find_meta(account_id, name)
            return None if meta is None else self._open(meta)

    def create_target(
        self,
        account_id: int,
        name: str,
        *,
        encrypted: bool,
        chunker: ChunkerParams,
        keep_history: bool = True,
        key_check: bytes = b"",
    ) -> Target:
        """Create a target, or return the existing one of that name (whatever its settings: the caller
        compares ``meta.encrypted`` and ``meta.chunker``; ``keep_history`` only applies to a new target, see
        :meth:`set_keep_history`). Safe against a concurrent create, in this process or another. ``key_check``
        is an encrypted target's key-check record, stored as given."""
        check_name(name, "target name")
        self._writable()
        with self._lock:
            self._catalog.execute(
                "INSERT INTO targets (id, account_id, name, created, encrypted, chunker_algorithm, chunker_min,"
                f" chunker_avg, chunker_max, chunker_seed, keep_history, key_check) VALUES ({_NEXT_ID}, ?, ?, ?, ?, ?,"
                " ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (account_id, name) DO NOTHING",
                (
                    account_id,
                    name,
                    time.time(),
                    int(encrypted),
                    chunker.algorithm,
                    chunker.min_size,
                    chunker.avg_size,
                    chunker.max_size,
                    chunker.seed,
                    int(keep_history),
                    key_check,
                ),
            )
            self._changes.bump()
            meta = self._find_meta(account_id, name)
            assert meta is not None
            return self._open(meta)

    def set_keep_history(self, account_id: int, name: str, keep: bool) -> Target | None:
        """Switch a target's history on or off; return it (None if there is no such target).

        Switching it off does not prune by itself: :meth:`Target.apply_no_history` does (the session calls it
        after each commit to such a target; call it at once to reclaim the space now).
        """
        self._writable()
        with self._lock:
            cur = self._catalog.execute(
                "UPDATE targets SET keep_history = ? WHERE account_id = ? AND name = ?",
                (int(keep), account_id, name),
            )
            if cur.rowcount == 0:
                return None
            self._changes.bump()
            meta = self._find_meta(account_id, name)
            assert meta is not None
            target = self._open(meta)
            target.meta = dataclasses.replace(target.meta, keep_history=keep)
            return target

    def targets_of(self, account_id: int) -> list[Target]:
        """The account's targets (opened, shared), sorted by name."""
        with self._lock:
            rows = self._catalog.execute(
                f"SELECT {self._columns} FROM targets WHERE account_id = ? ORDER BY name", (account_id,)
            ).fetchall()
            return [self._open(_meta(row)) for row in rows]

    def all_targets(self) -> list[Target]:
        """Every target of every account (opened, shared), by account id then name."""
        with self._lock:
            rows = self._catalog.execute(f"SELECT {self._columns} FROM targets ORDER BY account_id, name").fetchall()
            return [self._open(_meta(row)) for row in rows]

    def _writable(self) -> None:
        if self.read_only:
            raise NeoError(ErrorCode.PERMISSION_DENIED, f"the repository {self.root} is open read-only")

    def list_targets(self, account_id: int) -> list[TargetInfo]:
        """The account's targets with their latest snapshot and size, sorted by name."""
        return [target_info(target) for target in self.targets_of(account_id)]

    # --- target removal and liveness ---------------------------------------------------------------------

    def generation(self) -> int:
        """A number that grows after every change to the catalog (a target created, changed or removed), by this
        process or another (``neo-admin target remove``): while it keeps the value it had before an
        :meth:`is_current` check, the answer still holds. Cheap, and takes no lock the repository's other work
        waits for (:class:`~neotwist.server.changes.ChangeCounter`)."""
        return self._changes.current()

    def is_current(self, target: Target) -> bool:
        """True while ``target`` is still in the catalog (False once removed, also by another process)."""
        with self._lock:
            row = self._catalog.execute("SELECT 1 FROM targets WHERE id = ?", (target.meta.id,)).fetchone()
        return row is not None

    def remove_target(self, target: Target) -> None:
        """Remove a target with all its snapshots and chunks. Crash-safe, in this order:

        1. one catalog transaction deletes its row and records its id in ``removed_targets`` (from then on
           nothing finds it, and its id is never given to a new target);
        2. it leaves the cache of open targets (handles still holding it fail at their next request: the
           session checks :meth:`is_current` whenever :meth:`generation` moved on, and its own removal set);
        3. its directory ``t<id>`` is deleted. A crash before this step ends leaves a directory that
           ``removed_targets`` names: the next :class:`Repository` to open the root deletes it.

        The caller makes sure no push is running on it (the session refuses removal during a push).
        """
        meta = target.meta
        self._writable()
        with target.maintenance():  # a collection or check running on it finishes first; none starts meanwhile
            with self._lock:
                with index.transaction(self._catalog):
                    self._catalog.execute("DELETE FROM targets WHERE id = ?", (meta.id,))
                    self._catalog.execute(
                        "INSERT OR REPLACE INTO removed_targets (id, account_id, name, removed) VALUES (?, ?, ?, ?)",
                        (meta.id, meta.account_id, meta.name, time.time()),
                    )
                self._changes.bump()
                self._targets.pop(meta.id, None)
            # The Target object is not closed here: a read running on another thread keeps its open files (the
            # directory entries are gone) until its handles let go of it.
            self._delete_directory(meta.id)

    def _delete_directory(self, target_id: int) -> None:
        directory = self.root / f"t{target_id}"
        for _ in range(3):  # another process (neo-admin, or the server) may be deleting it at the same time
            if not directory.exists():
                break
            try:
                shutil.rmtree(directory)
            except FileNotFoundError:
                continue
        fsync_dir(self.root)

    def _sweep_removed(self) -> None:
        """Finish removals a crash interrupted: delete the directories of removed targets that still exist."""
        for (target_id,) in self._catalog.execute("SELECT id FROM removed_targets").fetchall():
            if (self.root / f"t{target_id}").exists():
                self._delete_directory(int(target_id))

    def shrink_memory(self) -> int:
        """:meth:`Target.shrink_memory` on every open target, then the freed memory goes back to the system;
        the number of connections shrunk."""
        with self._lock:
            targets = list(self._targets.values())
        shrunk = sum(target.shrink_memory() for target in targets)
        release_free_memory()
        return shrunk

    def maintain(self) -> list[str]:
        """The server's periodic care: reclaim what aborted pushes left (see :meth:`Target.reclaim`), and keep
        or release the emergency space (see :mod:`.space`). Returns what is worth logging."""
        with self._lock:
            targets = list(self._targets.values())
        for target in targets:
            target.reclaim()
        notes = []
        if self.ballast is not None and self.reserve is not None:
            note = self.ballast.keep(self.reserve)
            if note:
                notes.append(note)
        return notes

    def close(self) -> None:
        """Flush and close every open target, then the catalog. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            targets, self._targets = list(self._targets.values()), {}
        try:
            for target in targets:
                target.close()
        finally:
            self._changes.close()
            self._catalog.close()


def target_info(target: Target, name: str | None = None, **extra: Any) -> TargetInfo:
    """How ``targets`` shows a whole target (blocking): under ``name`` (default: its own), with ``extra`` fields."""
    latest = target.latest()
    usage = target.usage()
    return TargetInfo(
        name=target.meta.name if name is None else name,
        encrypted=target.meta.encrypted,
        snapshots=target.snapshot_count(),
        latest=None if latest is None else latest.id,
        latest_time=None if latest is None else latest.time,
        files=usage.files,
        stored_bytes=usage.stored_bytes,
        **extra,
    )
