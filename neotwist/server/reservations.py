"""Bytes being stored right now, per account charged: so concurrent uploads cannot all fit a quota on their own.

An upload batch checks the owner's quota before it stores: its new bytes must fit what the owner's usage leaves.
Usage counts what is stored; batches of other connections (or other batches of the same push, which run in
parallel) that are storing at the same moment are not in it yet, so each could pass alone and together pass the
quota by many batches. A batch therefore holds a reservation of its size while it stores, and measures the
owner's usage, plus every reservation held by others, under the owner's lock: a batch whose store finished
released its reservation only once its bytes were in the store (and in usage), so nothing is counted by
neither. Thread-safe (batches store in worker threads).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Reservations:
    """Per account: bytes reserved by uploads storing now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[int, threading.Lock] = {}
        self._held: dict[int, int] = {}

    def _owner_lock(self, owner_id: int) -> threading.Lock:
        with self._lock:
            lock = self._locks.get(owner_id)
            if lock is None:
                lock = self._locks[owner_id] = threading.Lock()
            return lock

    def held(self, owner_id: int) -> int:
        """Bytes reserved for ``owner_id`` now."""
        with self._lock:
            return self._held.get(owner_id, 0)

    @contextmanager
    def hold(self, owner_id: int, size: int, measure: Callable[[], int]) -> Iterator[int]:
        """Reserve ``size`` bytes for ``owner_id`` while the block runs; yield the bytes already spoken for:
        ``measure()`` (the owner's usage, read under the owner's lock) plus what others hold reserved."""
        with self._owner_lock(owner_id):
            used = measure()
            with self._lock:
                others = self._held.get(owner_id, 0)
                self._held[owner_id] = others + size
        try:
            yield used + others
        finally:
            with self._lock:
                left = self._held[owner_id] - size
                if left:
                    self._held[owner_id] = left
                else:
                    del self._held[owner_id]
