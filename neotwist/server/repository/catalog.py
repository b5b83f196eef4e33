"""The repository root: the catalog of targets and the bounded cache of open targets.

A target is known by a numeric id and lives in ``ROOT/t<id>``: the account and target names a client sends are
only ever data in ``catalog.sqlite``, never part of a file-system path.

An open target costs file descriptors (two SQLite connections to its index with their WAL and shared-memory
files, its pack writer and up to 64 pack readers) and memory (each connection's page cache), so the cache is
bounded: whoever uses a target holds it (:meth:`Repository.find_target` and the others return it held, and
:meth:`Repository.release` lets go), and a target nobody holds is closed once more than ``max_open`` targets
are open (least recently used first) or once it has been idle for ``idle`` seconds (:meth:`Repository.close_idle`,
which the server calls now and then). A held target is never closed under its holder: a push, pull, check,
collection or removal holds the target it works on.

What a target nobody holds keeps in memory is bounded too (:meth:`Repository.settle`, which the server calls
about once a second): its page caches are given back soon after its last holder lets go, so an open target
nobody uses costs its connections' schema and prepared statements only (``IDLE_TARGET_MEMORY``), and a server
with no connection at all keeps no target open: it closes them and hands the freed heap back to the system.
"""

# ruff: noqa: S608  (SQL text is built only from constants and generated table names; values are bound)

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

from neotwist.atomicfile import fsync_dir
from neotwist.paths import check_name
from neotwist.runtime import release_free_memory
from neotwist.server import descriptors
from neotwist.server.changes import ChangeCounter
from neotwist.server.repository import index
from neotwist.server.repository.chunkstore import DEFAULT_SIZES, StoreSizes
from neotwist.server.repository.errors import ReadOnly
from neotwist.server.repository.packs import make_dirs
from neotwist.server.repository.records import Chunker, ChunkerSettings, TargetMeta, TargetSummary
from neotwist.server.repository.space import Ballast, Reserve
from neotwist.server.repository.target import Target

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
"""Targets removed: the record that makes removal crash-safe and keeps ids from being reused."""

_NEXT_ID = (
    "(SELECT max(coalesce((SELECT max(id) FROM targets), 0), coalesce((SELECT max(id) FROM removed_targets), 0)) + 1)"
)
"""A new target's id: above every id ever used, so a removed target's leftover directory is never a new one's."""


MAX_OPEN_TARGETS = 64
"""Targets kept open when nobody holds them, by default (``twistd neophytos --max-open-targets``)."""

TARGET_IDLE = 300.0
"""Seconds a target nobody holds stays open, by default (``twistd neophytos --target-idle``), while the server
has connections: one with none closes every target nobody holds (:meth:`Repository.settle`)."""

IDLE_TARGET_MEMORY = 1024 * 1024
"""What an open target nobody holds keeps in memory once :meth:`Repository.settle` has shrunk it, at most (its two
index connections' schema, lookaside and prepared statements; measured: about 0.5 MiB). In use, each connection's
page cache may grow to ``index.CACHE_BYTES``."""


@dataclasses.dataclass(eq=False)
class _Open:
    """An open target: how many hold it, and since when nobody has (a clock reading)."""

    target: Target
    holders: int = 0
    idle_since: float = 0.0
    removed: bool = False  # removed from the catalog: closed once nobody holds it
    unsettled: bool = False  # let go of since the last settle(): its page caches are still to be given back


def _meta(row: tuple) -> TargetMeta:
    tid, account_id, name, encrypted, algorithm, lo, avg, hi, seed, created, keep, key_check = row
    return TargetMeta(
        id=tid,
        account_id=account_id,
        name=name,
        encrypted=bool(encrypted),
        chunker=Chunker(algorithm, lo, avg, hi, seed),
        created=created,
        keep_history=bool(keep),
        key_check=bytes(key_check),
    )


class Repository:
    """All targets under ``root`` (DATA/repo). Thread-safe; every method may block on disk, except
    :meth:`release`.

    A target is open at most once at a time and shared by every session (its own locks make that safe), so two
    sessions pushing to one target see each other's pending chunks and never open a pack twice. Methods that
    return a target return it *held*: the caller calls :meth:`release` once it is done with it (a session, when
    its handle closes). Targets nobody holds are closed by the bound ``max_open`` (least recently used first,
    checked whenever a target is opened) and by :meth:`close_idle` after ``idle`` seconds (measured on
    ``clock``). ``on_close_error(target, error)`` hears of a target whose closing failed (its flush of chunks
    no snapshot refers to yet, say): its files are released all the same.

    ``read_only`` opens an existing repository for inspection beside the server that owns it (``neo-admin
    check``): the catalog and every target are opened read-only, nothing is created or written, and
    :meth:`create_target` and :meth:`set_keep_history` raise ReadOnly.
    """

    def __init__(
        self,
        root: Path,
        *,
        read_only: bool = False,
        reserve: Reserve | None = None,
        max_open: int = MAX_OPEN_TARGETS,
        idle: float = TARGET_IDLE,
        clock: Callable[[], float] = time.monotonic,
        on_close_error: Callable[[Target, Exception], None] | None = None,
        sizes: StoreSizes = DEFAULT_SIZES,
    ) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be at least 1, not {max_open}")
        self.root = root
        self.read_only = read_only
        self.max_open = max_open
        self.idle = idle
        self._clock = clock
        self._on_close_error = on_close_error
        self.reserve = reserve
        self.sizes = sizes  # pack size, flush threshold, listing page of every target it opens
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
        self._lock = threading.Lock()  # the catalog connection; opening and closing targets
        self._changes = ChangeCounter(root / "catalog.sqlite")
        # Held by release() too, so never held during disk work: it guards only the two collections below.
        self._open_lock = threading.Lock()
        self._open: OrderedDict[int, _Open] = OrderedDict()  # by target id, least recently used first
        self._leaving: list[_Open] = []  # removed targets still held: closed once nobody holds them
        self._closed = False
        if not read_only:
            self._catalog.execute(_REMOVED_SCHEMA)
            self._sweep_removed()

    # --- holding and closing targets ----------------------------------------------------------------------

    def _hold(self, meta: TargetMeta) -> Target:
        """The shared Target for ``meta``, held (opened if it is not open); called with the lock held."""
        with self._open_lock:
            entry = self._open.get(meta.id)
            if entry is not None:
                entry.holders += 1
                self._open.move_to_end(meta.id)
                return entry.target
            if self._closed:
                raise RuntimeError("repository is closed")
        self._close_entries(self._evict(room=1))  # before opening: its files may need the descriptors
        try:
            target = self._new_target(meta)
        except Exception as e:
            if not descriptors.out_of_fds(e):
                raise
            # Out of descriptors (too many connections, say): close every target nobody holds, and try again.
            victims = self._evict(room=self.max_open, keep_leftovers=False)
            if not victims:
                raise
            self._close_entries(victims)
            target = self._new_target(meta)
        with self._open_lock:
            self._open[meta.id] = _Open(target, holders=1)
        return target

    def _new_target(self, meta: TargetMeta) -> Target:
        return Target(
            meta, self.root / f"t{meta.id}", read_only=self.read_only, reserve=self.reserve, sizes=self.sizes
        )

    def release(self, target: Target) -> None:
        """Let go of a target a method of this repository returned (once per time it was returned). Never
        blocks on disk: the target is closed later, if at all (when over ``max_open``, or idle, or removed)."""
        with self._open_lock:
            entry = self._open.get(target.meta.id)
            if entry is None or entry.target is not target:
                entry = next((e for e in self._leaving if e.target is target), None)
                if entry is None:  # the repository was closed meanwhile
                    return
            if entry.holders <= 0:
                raise RuntimeError(f"{target!r} released more often than it was held")
            entry.holders -= 1
            if entry.holders == 0:
                entry.idle_since = self._clock()
                entry.unsettled = True
                if self._open.get(target.meta.id) is entry:
                    self._open.move_to_end(target.meta.id)

    def hold(self, meta: TargetMeta) -> Target | None:
        """The target ``meta`` names (as the catalog has it now), held; None if it was removed."""
        with self._lock:
            row = self._catalog.execute(f"SELECT {self._columns} FROM targets WHERE id = ?", (meta.id,)).fetchone()
            return None if row is None else self._hold(_meta(row))

    def each_target(self, account_id: int | None = None) -> Iterator[Target]:
        """The account's targets (every account's when None), sorted by name (by account id, then name): each
        is held only while the loop body runs, so going through many targets keeps few of them open. Targets
        removed meanwhile are skipped."""
        for meta in self.target_metas(account_id):
            target = self.hold(meta)
            if target is None:
                continue
            try:
                yield target
            finally:
                self.release(target)

    def _evict(self, room: int = 0, *, keep_leftovers: bool = True) -> list[_Open]:
        """Take out of the cache what is to be closed: removed targets nobody holds any more, then the least
        recently used targets nobody holds while more than ``max_open - room`` are open. A target whose aborted
        pushes left chunks for :meth:`maintain` to reclaim stays open until then (``keep_leftovers``): closed,
        it would keep them until the next prune."""
        with self._open_lock:
            victims = [e for e in self._leaving if e.holders == 0]
            self._leaving = [e for e in self._leaving if e.holders > 0]
            excess = len(self._open) - (self.max_open - room)
            if excess > 0:
                for tid, entry in list(self._open.items()):
                    if excess <= 0:
                        break
                    if entry.holders == 0 and not (keep_leftovers and entry.target.awaiting_reclaim):
                        del self._open[tid]
                        victims.append(entry)
                        excess -= 1
        return victims

    def _close_entries(self, entries: list[_Open]) -> None:
        """Close targets taken out of the cache; called with the lock held, so none is opened again before it
        is closed (two Target objects for one directory would each append to its packs)."""
        for entry in entries:
            try:
                entry.target.close()
            except Exception as e:  # its files are closed all the same (Target.close)
                if self._on_close_error is not None and not entry.removed:  # a removed one keeps nothing
                    self._on_close_error(entry.target, e)

    def close_idle(self, now: float | None = None, *, idle: float | None = None) -> int:
        """Close every target nobody has held for ``idle`` seconds or more (default: the repository's ``idle``;
        at ``now``, a reading of the clock; default: the clock now), and removed targets nobody holds any more;
        return how many were closed. The server calls this now and then."""
        moment = self._clock() if now is None else now
        idle = self.idle if idle is None else idle
        with self._lock:
            victims = self._evict()
            with self._open_lock:
                for tid, entry in list(self._open.items()):
                    leftovers = entry.target.awaiting_reclaim
                    if entry.holders == 0 and moment - entry.idle_since >= idle and not leftovers:
                        del self._open[tid]
                        victims.append(entry)
            self._close_entries(victims)
        return len(victims)

    # --- the catalog ------------------------------------------------------------------------------------------

    def _find_meta(self, account_id: int, name: str) -> TargetMeta | None:
        row = self._catalog.execute(
            f"SELECT {self._columns} FROM targets WHERE account_id = ? AND name = ?", (account_id, name)
        ).fetchone()
        return None if row is None else _meta(row)

    def find_target(self, account_id: int, name: str) -> Target | None:
        """The account's target of that name, held (see :meth:`release`); None if there is none."""
        with self._lock:
            meta = self._find_meta(account_id, name)
            return None if meta is None else self._hold(meta)

    def create_target(
        self,
        account_id: int,
        name: str,
        *,
        encrypted: bool,
        chunker: ChunkerSettings,
        keep_history: bool = True,
        key_check: bytes = b"",
    ) -> Target:
        """Create a target, or return the existing one of that name, held (whatever its settings: the caller
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
            return self._hold(meta)

    def set_keep_history(self, account_id: int, name: str, keep: bool) -> Target | None:
        """Switch a target's history on or off; return it, held (None if there is no such target).

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
            target = self._hold(meta)
            target.meta = dataclasses.replace(target.meta, keep_history=keep)
            return target

    def target_metas(self, account_id: int | None = None) -> list[TargetMeta]:
        """What the catalog says of the account's targets (every account's when None), sorted by name (by
        account id, then name); no target is opened."""
        with self._lock:
            return self._meta_rows(account_id)

    def _meta_rows(self, account_id: int | None) -> list[TargetMeta]:
        """:meth:`target_metas`, with the lock held."""
        if account_id is None:
            rows = self._catalog.execute(f"SELECT {self._columns} FROM targets ORDER BY account_id, name")
        else:
            rows = self._catalog.execute(
                f"SELECT {self._columns} FROM targets WHERE account_id = ? ORDER BY name", (account_id,)
            )
        return [_meta(row) for row in rows.fetchall()]

    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnly(f"the repository {self.root} is open read-only")

    def list_targets(self, account_id: int) -> list[TargetSummary]:
        """The account's targets with their latest snapshot and size, sorted by name."""
        return [target_summary(target) for target in self.each_target(account_id)]

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
           session checks :meth:`is_current` whenever :meth:`generation` moved on, and its own removal set;
           it is closed once the last of them releases it);
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
                with self._open_lock:
                    entry = self._open.pop(meta.id, None)
                    if entry is not None:
                        entry.removed = True
                        self._leaving.append(entry)
            # The Target object is not closed here: a read running on another thread keeps its open files (the
            # directory entries are gone) until its holders let go of it.
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

    def unsettled(self) -> bool:
        """Whether :meth:`settle` has work: a target was let go of since it last ran. Never blocks on disk."""
        with self._open_lock:
            return any(entry.unsettled for entry in self._open.values())

    def settle(self, quiet: bool) -> tuple[int, int]:
        """Give back what targets nobody holds keep: shrink the page caches of those let go of since the last
        call, and when ``quiet`` (the server has no connection) close every target nobody holds (not those whose
        aborted pushes left chunks for :meth:`maintain` to reclaim), then hand the freed heap back to the
        system if anything was freed. Returns (connections shrunk, targets closed). Blocking.

        Without it a target kept its page caches (up to ``index.CACHE_BYTES`` per connection) until the next
        periodic :meth:`shrink_memory`, and every target a burst of clients pushed to stayed open for ``idle``
        seconds: 16 targets just pushed to held 8 MiB of SQLite memory after the shrink."""
        closed = self.close_idle(idle=0.0) if quiet else 0
        with self._open_lock:
            released = [e for e in self._open.values() if e.unsettled and e.holders == 0]
            for entry in released:
                entry.unsettled = False
        shrunk = sum(entry.target.shrink_memory() for entry in released)
        if shrunk or closed:
            release_free_memory()
        return shrunk, closed

    def shrink_memory(self) -> int:
        """:meth:`Target.shrink_memory` on every open target, then the freed memory goes back to the system;
        the number of connections shrunk."""
        with self._open_lock:
            targets = [entry.target for entry in self._open.values()]
        shrunk = sum(target.shrink_memory() for target in targets)
        release_free_memory()
        return shrunk

    def maintain(self) -> list[str]:
        """The server's periodic care: reclaim what aborted pushes left (see :meth:`Target.reclaim`), close the
        targets idle for ``idle`` seconds (:meth:`close_idle`), and keep or release the emergency space (see
        :mod:`.space`). Returns what is worth logging."""
        with self._open_lock:  # held for the reclaim, without making them recently used
            entries = list(self._open.values())
            for entry in entries:
                entry.holders += 1
        try:
            for entry in entries:
                entry.target.reclaim()
        finally:
            with self._open_lock:
                for entry in entries:
                    entry.holders -= 1
        self.close_idle()
        notes = []
        if self.ballast is not None and self.reserve is not None:
            note = self.ballast.keep(self.reserve)
            if note:
                notes.append(note)
        return notes

    def close(self) -> None:
        """Flush and close every open target, held or not, then the catalog. Idempotent."""
        with self._lock:
            with self._open_lock:
                if self._closed:
                    return
                self._closed = True
                entries = [*self._open.values(), *self._leaving]
                self._open, self._leaving = OrderedDict(), []
        try:
            for entry in entries:
                entry.target.close()
        finally:
            self._changes.close()
            self._catalog.close()


def target_summary(target: Target) -> TargetSummary:
    """How a listing shows a whole target (blocking)."""
    latest = target.latest()
    usage = target.usage()
    return TargetSummary(
        name=target.meta.name,
        encrypted=target.meta.encrypted,
        snapshots=target.snapshot_count(),
        latest=None if latest is None else latest.id,
        latest_time=None if latest is None else latest.time,
        files=usage.files,
        stored_bytes=usage.stored_bytes,
    )
