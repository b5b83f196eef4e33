"""The repository root: the catalog of targets and the cache of open targets.

A target is known by a numeric id and lives in ``ROOT/t<id>``: the account and target names a client sends are
only ever data in ``catalog.sqlite``, never part of a file-system path.
"""

# ruff: noqa: S608  (SQL text is built only from constants and generated table names; values are bound)

from __future__ import annotations

import threading
import time
from pathlib import Path

from neotwist.paths import check_name
from neotwist.server.repository import index
from neotwist.server.repository.packs import make_dirs
from neotwist.server.repository.records import TargetMeta
from neotwist.server.repository.target import Target
from neotwist.wire.messages import ChunkerParams, TargetInfo

_TARGET_COLUMNS = (
    "id, account_id, name, encrypted, chunker_algorithm, chunker_min, chunker_avg, chunker_max, chunker_seed,"
    " created, keep_history, key_check"
)


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
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        make_dirs(root)
        self._catalog = index.connect(root / "catalog.sqlite", index.CATALOG_SCHEMA, index.CATALOG_MIGRATIONS)
        self._lock = threading.Lock()
        self._targets: dict[int, Target] = {}
        self._closed = False

    def _open(self, meta: TargetMeta) -> Target:
        """The shared Target for ``meta``; called with the lock held."""
        target = self._targets.get(meta.id)
        if target is None:
            if self._closed:
                raise RuntimeError("repository is closed")
            target = self._targets[meta.id] = Target(meta, self.root / f"t{meta.id}")
        return target

    def _find_meta(self, account_id: int, name: str) -> TargetMeta | None:
        row = self._catalog.execute(
            f"SELECT {_TARGET_COLUMNS} FROM targets WHERE account_id = ? AND name = ?", (account_id, name)
        ).fetchone()
        return None if row is None else _meta(row)

    def find_target(self, account_id: int, name: str) -> Target | None:
        with self._lock:
            meta = self._find_meta(account_id, name)
            return None if meta is None else self._open(meta)

    def create_target(
        self, account_id: int, name: str, *, encrypted: bool, chunker: ChunkerParams, key_check: bytes = b""
    ) -> Target:
        """Create a target, or return the existing one of that name (whatever its settings: the caller
        compares ``meta.encrypted`` and ``meta.chunker``). Safe against a concurrent create, in this process
        or another. ``key_check`` is an encrypted target's key-check record, stored as given."""
        check_name(name, "target name")
        with self._lock:
            self._catalog.execute(
                "INSERT INTO targets (account_id, name, created, encrypted, chunker_algorithm, chunker_min,"
                " chunker_avg, chunker_max, chunker_seed, key_check) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
                    key_check,
                ),
            )
            meta = self._find_meta(account_id, name)
            assert meta is not None
            return self._open(meta)

    def list_targets(self, account_id: int) -> list[TargetInfo]:
        """The account's targets with their latest snapshot and size, sorted by name."""
        with self._lock:
            rows = self._catalog.execute(
                f"SELECT {_TARGET_COLUMNS} FROM targets WHERE account_id = ? ORDER BY name", (account_id,)
            ).fetchall()
            targets = [self._open(_meta(row)) for row in rows]
        infos = []
        for target in targets:
            latest = target.latest()
            usage = target.usage()
            infos.append(
                TargetInfo(
                    name=target.meta.name,
                    encrypted=target.meta.encrypted,
                    snapshots=target.snapshot_count(),
                    latest=None if latest is None else latest.id,
                    latest_time=None if latest is None else latest.time,
                    files=usage.files,
                    stored_bytes=usage.stored_bytes,
                )
            )
        return infos

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
            self._catalog.close()
