"""Where the sub-pieces of recently signed base chunks end, so that ``put_delta`` does not cut them again.

A delta push asks the server to ``sign`` the previous version of each changed chunk, then sends deltas whose ops
name those bases' sub-pieces by index: rebuilding needs each base's piece boundaries, which the server found
moments before, when it signed it. Cutting a base again cost as much as signing it had (FastCDC over the base,
a Python object per piece). The boundaries of a chunk follow from its bytes alone, and a chunk id names its
bytes, so they are kept here by id: process-wide, least recently used first out, bounded by pieces held (4
bytes each). A wrong or stale entry could only make a rebuild fail its id check, never store wrong bytes.
"""

from __future__ import annotations

import threading
from array import array
from collections import OrderedDict

MOST_PIECES = 1 << 20
"""Piece boundaries held at most (4 MiB): about 2,000 signed bases of the largest chunk, 16,000 of the
default 32 KiB average; a push's bases are taken within a few jobs of being signed."""


class BaseCuts:
    """Thread-safe LRU of chunk id -> end offsets of its sub-pieces (signing and rebuilding run in workers)."""

    def __init__(self, most_pieces: int = MOST_PIECES) -> None:
        self._most = most_pieces
        self._held = 0
        self._ends: OrderedDict[bytes, array[int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ends)

    def clear(self) -> None:
        with self._lock:
            self._ends.clear()
            self._held = 0

    def put(self, cid: bytes, ends: array[int]) -> None:
        if len(ends) > self._most:
            return
        with self._lock:
            old = self._ends.pop(cid, None)
            if old is not None:
                self._held -= len(old)
            self._ends[cid] = ends
            self._held += len(ends)
            while self._held > self._most:
                _cid, gone = self._ends.popitem(last=False)
                self._held -= len(gone)

    def get(self, cid: bytes) -> array[int] | None:
        with self._lock:
            ends = self._ends.get(cid)
            if ends is not None:
                self._ends.move_to_end(cid)
            return ends


CUTS = BaseCuts()
"""The server process's cache (one per process: chunk ids name their bytes whatever the target)."""
