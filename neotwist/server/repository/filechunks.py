"""Whether chunk ids belong to a stored file, without loading the file's chunk list.

A ``get`` names a file and chunk ids, and may only read chunks that file references (a grantee must not read
chunks of files outside its grant by naming their ids). A file's ids are one blob in its ``versions`` row, 32
bytes per chunk: up to 512 MiB for the largest file the protocol allows. Loading it, and building a set of its
ids, for every ``get`` cost a request for one id of a 2M-chunk file some 100 MiB; eight such requests at once
took 600 MiB. Here the blob is read through SQLite's incremental blob I/O, a window at a time, and ids are
searched at 32-byte-aligned positions:

- a client asks for ids in file order, so each id is looked for first right after the previous one, then
  forward from there, then (once) from the start: a ``get`` costs at most a pass or two over the blob, at C
  speed (``bytes.find``), and usually a few reads;
- ``hint`` (where the previous ``get`` on the file ended) makes a pull of a large file, ``get`` after ``get``,
  read only what it asks for;
- requests in any other order fall back, after a few passes, to one pass that checks every id of the file
  against the (at most ``MAX_IDS``) ids asked for: bounded time, and memory of a window plus the request.

A ``get_files`` names up to hundreds of small files: :func:`check_files_chunks` reads the chunk lists of those
whose list is short (``INLINE`` bytes) with one query per ``_IN_PATHS`` paths and checks them in memory; a query
and a blob opened per file were a third of the server's Python time in a full restore.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING

from neotwist.bounds import ID_SIZE
from neotwist.server.repository.index import VIEW

if TYPE_CHECKING:
    from neotwist.server.repository.target import Target

WINDOW = 1024 * 1024
"""Bytes of a chunk list read at once (a multiple of the id size, so no aligned id spans two windows)."""

INLINE = 64 * ID_SIZE
"""Chunk lists of at most this many bytes (64 chunks) are read whole by :func:`check_files_chunks`."""

_IN_PATHS = 500
"""Paths per query of :func:`check_files_chunks` (SQLite allows 32,766 parameters)."""

MAX_WRAPS = 4
"""Searches from the start of the list (ids asked out of file order) before the one-pass check."""

_ID = ID_SIZE


class _Blob:
    """Aligned searches in a chunk-id blob opened for reading."""

    def __init__(self, blob: sqlite3.Blob, length: int) -> None:
        self.blob = blob
        self.length = length - length % _ID

    def at(self, pos: int) -> bytes:
        self.blob.seek(pos)
        return self.blob.read(_ID)

    def find(self, cid: bytes, start: int, end: int) -> int:
        """The first aligned position of ``cid`` in [start, end), or -1."""
        pos = start
        end = min(end, self.length)
        while pos < end:
            self.blob.seek(pos)
            window = self.blob.read(min(WINDOW, end - pos))
            i = window.find(cid)
            while i >= 0:
                if i % _ID == 0:
                    return pos + i
                i = window.find(cid, i + 1)
            pos += len(window)
        return -1

    def first_absent(self, ids: Sequence[bytes]) -> bytes | None:
        """One pass over the list: the first of ``ids`` it does not hold, or None."""
        wanted = set(ids)
        pos = 0
        while wanted and pos < self.length:
            self.blob.seek(pos)
            window = self.blob.read(min(WINDOW, self.length - pos))
            for i in range(0, len(window), _ID):
                wanted.discard(window[i : i + _ID])
            pos += len(window)
        return next((cid for cid in ids if cid in wanted), None)


def check_file_chunks(
    target: Target, snapshot: int, path: str, ids: Sequence[bytes], hint: int = 0
) -> tuple[bytes | None, int] | None:
    """None if snapshot ``snapshot`` has no file at ``path``; else (the first of ``ids`` the file does not
    reference, or None when it references them all; where the search ended, the ``hint`` of the next call).
    Blocking."""
    with target.reading() as db:
        row = db.execute(
            f"SELECT rowid, length(chunks) FROM versions WHERE path = :p AND kind = 'f' AND {VIEW}",  # noqa: S608
            {"p": path, "s": snapshot},
        ).fetchone()
        if row is None:
            return None
        rowid, length = row
        with db.blobopen("versions", "chunks", rowid, readonly=True) as handle:
            blob = _Blob(handle, length)
            pos = hint if 0 <= hint < blob.length and hint % _ID == 0 else 0
            checked: set[bytes] = set()
            wraps = 0
            for k, cid in enumerate(ids):
                if cid in checked:
                    continue
                if pos + _ID <= blob.length and blob.at(pos) == cid:
                    found = pos
                else:
                    found = blob.find(cid, pos, blob.length)
                    if found < 0 and pos:
                        wraps += 1
                        if wraps > MAX_WRAPS:
                            return blob.first_absent(ids[k:]), 0
                        found = blob.find(cid, 0, pos + _ID)
                if found < 0:
                    return cid, 0
                checked.add(cid)
                pos = found + _ID
            return None, pos


def check_files_chunks(
    target: Target, snapshot: int, files: Sequence[tuple[str, Sequence[bytes], int]]
) -> list[tuple[bytes | None, int] | None]:
    """:func:`check_file_chunks` of each ``(path, ids, hint)``, in order. Blocking.

    The files whose chunk list is at most :data:`INLINE` bytes are looked up together (one query per
    ``_IN_PATHS`` paths, their lists read whole and checked in memory); the others as one file at a time."""
    paths = list(dict.fromkeys(path for path, _ids, _hint in files))
    found: dict[str, bytes | None] = {}  # path -> its short chunk list, or None when it is longer
    with target.reading() as db:
        for start in range(0, len(paths), _IN_PATHS):
            part = paths[start : start + _IN_PATHS]
            names = {f"p{i}": path for i, path in enumerate(part)}
            marks = ",".join(f":{name}" for name in names)
            rows = db.execute(
                f"SELECT path, CASE WHEN length(chunks) <= {INLINE} THEN chunks END FROM versions"  # noqa: S608
                f" WHERE path IN ({marks}) AND kind = 'f' AND {VIEW}",
                {**names, "s": snapshot},
            )
            for path, chunks in rows:
                found[path] = None if chunks is None else bytes(chunks)
    results: list[tuple[bytes | None, int] | None] = []
    for path, ids, hint in files:
        if path not in found:
            results.append(None)
            continue
        listed = found[path]
        if listed is None:
            results.append(check_file_chunks(target, snapshot, path, ids, hint))
            continue
        held = {listed[i : i + _ID] for i in range(0, len(listed) - len(listed) % _ID, _ID)}
        results.append((next((cid for cid in ids if cid not in held), None), 0))
    return results
