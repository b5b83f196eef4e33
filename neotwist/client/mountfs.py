"""The filesystem neo-mount serves (the command is :mod:`neotwist.client.mount`): every snapshot of a
target, read-only, listed when entered and read on demand.

Layout::

    snapshots/<ID>/...          each kept snapshot (ids as neo-ls --snapshots shows them)
    snapshots/latest -> <ID>    the newest
    by-time/<TIME> -> ../snapshots/<ID>   the same, named by the snapshot's time (as neo-ls shows it)
    tags/<TAG>/<ID> -> ../../snapshots/<ID>   the snapshots that have each tag (neo-push --tag)
    latest -> snapshots/latest

The snapshot list is asked for again when ``snapshots/`` is listed after :data:`REFRESH_S` (or a newer id is
named), so pushes made while mounted appear. A snapshot's tree is listed (and for an encrypted target
decrypted and authenticated) the first time it is entered, never when its directory is only stat-ed; the
:data:`MAX_TREES` most recently used trees are kept. A file's chunks are fetched when read, a ``get`` at a time
with read-ahead, each checked against its id (and seal) before any of its bytes is returned; decoded chunks
are kept in a :class:`ChunkCache` of ``--cache-size`` bytes shared by all files (the same chunk in many
snapshots is fetched once). Chunk lengths are not in the listing: a file's chunk boundaries are learned as it
is read (and kept per file version, :class:`Boundaries`), so a read far into a large file never read before
fetches the chunks before that point once; sequential readers (cp, rsync, sha256sum) pay nothing extra.

Owners, modes, mtimes, xattrs (ACLs included) and special files are shown as stored; without
``default_permissions`` only the user who mounted can enter the mount, and modes do not restrict that user.
The operations run in libfuse's threads; ``call`` runs a coroutine on the reactor and waits for it.
"""

from __future__ import annotations

import bisect
import errno
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from neotwist.client.history import ID, BrowseError, History, Tree, extra_of
from neotwist.client.metadata import EMPTY, Extra
from neotwist.client.timespec import format_time
from neotwist.wire.messages import Entry, SnapshotRecord

MAX_TREES = 4
"""Snapshot trees kept listed at once (least recently used first out)."""
REFRESH_S = 30.0
"""Seconds after which listing ``snapshots/`` asks the server for its snapshots again."""
READ_AHEAD = 4 * 1024 * 1024
"""Bytes a read fetches beyond what it was asked for (by the file's average chunk size)."""
FETCH_IDS = 256
"""Chunk ids one ``get`` asks for."""
MAX_BOUNDARIES = 256
"""File versions whose learned chunk boundaries are kept after they are closed (8 bytes per chunk each)."""


@dataclass
class Listed:
    """A snapshot's tree with its directories' children."""

    tree: Tree
    children: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, tree: Tree) -> Listed:
        out = cls(tree)
        for path, e in tree.entries.items():
            if e.kind == "d":
                out.children.setdefault(path, [])
            if path:
                out.children.setdefault(path.rpartition("/")[0], []).append(path.rpartition("/")[2])
        return out


class ChunkCache:
    """Decoded chunks by id, at most ``limit`` bytes, least recently used first out (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, cid: bytes) -> bytes | None:
        with self._lock:
            raw = self._items.get(cid)
            if raw is None:
                self.misses += 1
                return None
            self._items.move_to_end(cid)
            self.hits += 1
            return raw

    def put(self, cid: bytes, raw: bytes) -> None:
        if len(raw) > self.limit:
            return
        with self._lock:
            if cid in self._items:
                return
            self._items[cid] = raw
            self.size += len(raw)
            while self.size > self.limit:
                _, old = self._items.popitem(last=False)
                self.size -= len(old)


class OpenFile:
    """One opened file version: its chunk ids, the chunk boundaries learned so far (``ends``, shared by every
    open of the same version: see :class:`Boundaries`), a lock for its reads."""

    def __init__(self, listed: Listed, entry: Entry, learned: tuple[list[int], threading.Lock]) -> None:
        self.listed = listed
        self.entry = entry
        self.ids = [entry.chunks[i : i + ID] for i in range(0, len(entry.chunks), ID)]
        self.ends, self.lock = learned  # end offset of chunk k for the chunks read so far (a prefix); its lock
        n = max(1, len(self.ids))
        self.ahead = max(1, min(FETCH_IDS, READ_AHEAD * n // max(1, entry.size)))


class Boundaries:
    """The chunk boundaries learned for the :data:`MAX_BOUNDARIES` file versions most recently opened, by their
    chunk lists: a file opened again (``file`` then ``cp``, or the same version in another snapshot) does not
    learn them again. Only a prefix is ever learned, and it only grows (under the file's read lock)."""

    def __init__(self) -> None:
        self._known: OrderedDict[tuple[bytes, int], tuple[list[int], threading.Lock]] = OrderedDict()
        self._lock = threading.Lock()

    def of(self, entry: Entry) -> tuple[list[int], threading.Lock]:
        """(the boundaries learned so far, the lock every read of this version learns them under)."""
        key = (entry.chunks, entry.size)
        with self._lock:
            learned = self._known.get(key)
            if learned is None:
                learned = self._known[key] = ([], threading.Lock())
                while len(self._known) > MAX_BOUNDARIES:
                    self._known.popitem(last=False)
            self._known.move_to_end(key)
            return learned


class SnapshotFS:
    """The filesystem's operations (mfusepy calls them from its threads); ``call`` runs a coroutine function on
    the reactor and waits for its result."""

    use_ns = True

    def __init__(
        self, history: History, call: Callable[..., Any], cache_bytes: int, log: Callable[[str], None]
    ) -> None:
        self.history = history
        self.call = call
        self.cache = ChunkCache(cache_bytes)
        self.log = log
        self.uid, self.gid = os.getuid(), os.getgid()
        self.started = time.time()
        self.records: list[SnapshotRecord] = []
        self.refreshed = 0.0
        self.trees: OrderedDict[int, Listed] = OrderedDict()
        self._lock = threading.Lock()  # snapshots and trees
        self._tree_locks: dict[int, threading.Lock] = {}
        self.files: dict[int, OpenFile] = {}
        self.boundaries = Boundaries()
        self._next_fh = 1
        self.bytes_fetched = 0
        self.trees_listed = 0
        self._tags: dict[str, list[int]] = {}
        self._tags_of: list[SnapshotRecord] | None = None
        self.ready: Callable[[], None] | None = None

    # --- helpers --------------------------------------------------------------------------------------------

    def _errno(self, err: int) -> Exception:
        import mfusepy

        return mfusepy.FuseOSError(err)

    def refresh(self, force: bool = False) -> list[SnapshotRecord]:
        with self._lock:
            if force or not self.records or time.monotonic() - self.refreshed > REFRESH_S:
                self.records = self.call(self.history.snapshots, True)
                self.refreshed = time.monotonic()
            return self.records

    def _record(self, name: str) -> SnapshotRecord | None:
        records = self.records or self.refresh()
        if name == "latest":
            return records[-1] if records else None
        if not name.isdigit():
            return None
        found = next((r for r in records if r.id == int(name)), None)
        if found is None and int(name) > (records[-1].id if records else 0):
            found = next((r for r in self.refresh(force=True) if r.id == int(name)), None)
        return found

    def _listed(self, record: SnapshotRecord) -> Listed:
        with self._lock:
            got = self.trees.get(record.id)
            if got is not None:
                self.trees.move_to_end(record.id)
                return got
            lock = self._tree_locks.setdefault(record.id, threading.Lock())
        with lock:  # one listing per snapshot, however many threads ask
            with self._lock:
                got = self.trees.get(record.id)
            if got is None:
                tree = self.call(self.history.tree, record.id)
                self.trees_listed += 1
                for text in tree.errors:
                    self.log(f"snapshot {record.id}: not shown: {text}")
                got = Listed.of(tree)
                with self._lock:
                    self.trees[record.id] = got
                    while len(self.trees) > MAX_TREES:
                        self.trees.popitem(last=False)
            return got

    def _resolve(self, path: str, enter: bool = True) -> tuple[str, Any]:
        """What ``path`` names: ('root'|'snapshots'|'by-time', None), ('link', target text), ('snapshot',
        SnapshotRecord) for a snapshot's own directory unless ``enter``, or ('entry', (Listed, relative path,
        Entry)). A snapshot is listed only when entered: ``ls -l snapshots/`` stats its directories, which must
        not list every snapshot."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            return "root", None
        top = parts[0]
        if top == "latest" and len(parts) == 1:
            return "link", "snapshots/latest"
        if top == "by-time":
            if len(parts) == 1:
                return "by-time", None
            found = _time_names(self.records or self.refresh()).get(parts[1]) if len(parts) == 2 else None
            if found is None:
                raise self._errno(errno.ENOENT)
            return "link", f"../snapshots/{found}"
        if top == "tags":
            index = self._tag_index()
            if len(parts) == 1:
                return "tags", None
            ids = index.get(parts[1])
            if ids is None or len(parts) > 3:
                raise self._errno(errno.ENOENT)
            if len(parts) == 2:
                return "tag", ids
            if not parts[2].isdigit() or int(parts[2]) not in ids:
                raise self._errno(errno.ENOENT)
            return "link", f"../../snapshots/{parts[2]}"
        if top != "snapshots":
            raise self._errno(errno.ENOENT)
        if len(parts) == 1:
            return "snapshots", None
        if parts[1] == "latest" and len(parts) == 2:
            records = self.records or self.refresh()
            if not records:
                raise self._errno(errno.ENOENT)
            return "link", str(records[-1].id)
        record = self._record(parts[1])
        if record is None:
            raise self._errno(errno.ENOENT)
        if len(parts) == 2 and not enter:
            return "snapshot", record
        listed = self._listed(record)
        rel = "/".join(parts[2:])
        entry = listed.tree.entries.get(rel)
        if entry is None:
            if rel in listed.children:  # a directory the listing implies (its own record is not shown)
                return "entry", (listed, rel, Entry(rel, "d", 0o555, int(record.time * 1e9), 0))
            raise self._errno(errno.ENOENT)
        return "entry", (listed, rel, entry)

    def _tag_index(self) -> dict[str, list[int]]:
        """tags/ names -> the ids of the snapshots that have that tag (computed again when the snapshot list
        is). A tag that cannot be a file name is left out."""
        records = self.records or self.refresh()
        with self._lock:
            if self._tags_of is not records:
                index: dict[str, list[int]] = {}
                for sid, tags in self.history.tags(records).items():
                    for tag in tags:
                        if tag not in ("", ".", "..") and "/" not in tag and "\0" not in tag:
                            index.setdefault(tag, []).append(sid)
                self._tags, self._tags_of = index, records
            return self._tags

    def _dir_attrs(self, mtime_ns: int | None = None) -> dict[str, Any]:
        t = int(self.started * 1e9) if mtime_ns is None else mtime_ns
        return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2, "st_uid": self.uid, "st_gid": self.gid,
                "st_mtime": t, "st_ctime": t, "st_atime": t}  # fmt: skip

    # --- operations -------------------------------------------------------------------------------------------

    def init(self, path: str) -> None:
        if self.ready is not None:
            self.ready()

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        what, value = self._guard(self._resolve, path, False)
        if what in ("root", "snapshots", "by-time", "tags", "tag"):
            return self._dir_attrs()
        if what == "snapshot":
            return self._dir_attrs(int(value.time * 1e9))
        if what == "link":
            t = int(self.started * 1e9)
            return {"st_mode": stat.S_IFLNK | 0o777, "st_nlink": 1, "st_size": len(value), "st_uid": self.uid,
                    "st_gid": self.gid, "st_mtime": t, "st_ctime": t, "st_atime": t}  # fmt: skip
        _, _, e = value
        x = extra_of(e) or EMPTY
        bits = {"f": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK}[e.kind]
        bits = {"p": stat.S_IFIFO, "c": stat.S_IFCHR, "b": stat.S_IFBLK}.get(x.special, bits)
        size = e.size if e.kind == "f" else len(e.link.encode("utf-8", "surrogateescape")) if e.kind == "l" else 0
        return {
            "st_mode": bits | (0o777 if e.kind == "l" else e.mode), "st_nlink": 2 if e.kind == "d" else 1,
            "st_size": size, "st_blocks": (size + 511) // 512,
            "st_uid": x.uid if x.uid is not None else self.uid, "st_gid": x.gid if x.gid is not None else self.gid,
            "st_mtime": e.mtime_ns, "st_ctime": e.mtime_ns, "st_atime": e.mtime_ns, "st_rdev": x.rdev,
        }  # fmt: skip

    def readlink(self, path: str) -> str:
        what, value = self._guard(self._resolve, path)
        if what == "link":
            return str(value)
        if what == "entry" and value[2].kind == "l":
            return str(value[2].link)
        raise self._errno(errno.EINVAL)

    def readdir(self, path: str, fh: int) -> list[str]:
        what, value = self._guard(self._resolve, path)
        if what == "root":
            return [".", "..", "snapshots", "by-time", "tags", "latest"]
        if what == "snapshots":
            records = self._guard(self.refresh)
            return [".", "..", *(str(r.id) for r in records), *(["latest"] if records else [])]
        if what == "by-time":
            return [".", "..", *_time_names(self.records or self._guard(self.refresh))]
        if what == "tags":
            return [".", "..", *sorted(self._guard(self._tag_index))]
        if what == "tag":
            return [".", "..", *(str(i) for i in value)]
        if what != "entry" or value[2].kind != "d":
            raise self._errno(errno.ENOTDIR)
        listed, rel, _ = value
        return [".", "..", *listed.children.get(rel, [])]

    def listxattr(self, path: str) -> list[str]:
        what, value = self._guard(self._resolve, path, False)
        if what != "entry":
            return []
        x = extra_of(value[2]) or EMPTY
        return [name for name, _ in x.xattrs]

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        what, value = self._guard(self._resolve, path, False)
        x: Extra = (extra_of(value[2]) or EMPTY) if what == "entry" else EMPTY
        for key, data in x.xattrs:
            if key == name:
                return bytes(data)
        raise self._errno(errno.ENODATA)

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise self._errno(errno.EROFS)
        what, value = self._guard(self._resolve, path)
        if what != "entry":
            raise self._errno(errno.EISDIR)
        listed, _, e = value
        if e.kind == "d":
            raise self._errno(errno.EISDIR)
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self.files[fh] = OpenFile(listed, e, self.boundaries.of(e))
        return fh

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            self.files.pop(fh, None)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        f = self.files.get(fh)
        if f is None:
            raise self._errno(errno.EBADF)
        return bytes(self._guard(self._read, f, size, offset))

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 0, "f_bfree": 0, "f_bavail": 0, "f_namemax": 255}

    # --- reading ------------------------------------------------------------------------------------------------

    def _read(self, f: OpenFile, size: int, offset: int) -> bytes:
        end = min(offset + size, f.entry.size)
        if offset >= end:
            return b""
        with f.lock:
            n = len(f.ids)
            while (f.ends[-1] if f.ends else 0) < end and len(f.ends) < n:  # learn boundaries up to ``end``
                k = len(f.ends)
                for raw in self._chunks(f, k, min(n, k + f.ahead)):
                    f.ends.append((f.ends[-1] if f.ends else 0) + len(raw))
                if len(f.ends) == n and f.ends[-1] != f.entry.size:
                    bad = f.ends[-1]
                    f.ends.clear()  # learned wrong: every read of this version fails until unmounted
                    raise BrowseError(f"{f.entry.path}: its chunks hold {bad} bytes, not {f.entry.size}")
            first = bisect.bisect_right(f.ends, offset)
            last = bisect.bisect_left(f.ends, end)
            stop = min(n, max(last + 1, first + 1))
            # read ahead: the next chunks after this read (fetched in the same request when missing)
            raws = self._chunks(f, first, stop, ahead=min(n, stop + f.ahead) if stop < n else stop)
            start = f.ends[first - 1] if first else 0
            data = b"".join(raws)
            return data[offset - start : end - start]

    def _chunks(self, f: OpenFile, lo: int, hi: int, ahead: int | None = None) -> list[bytes]:
        """Chunks ``lo``..``hi`` of ``f`` (decoded, verified), from the cache or fetched; chunks up to ``ahead``
        that are missing are fetched along (into the cache)."""
        upto = max(hi, ahead or hi)
        want = f.ids[lo:upto]
        got: dict[bytes, bytes] = {}
        missing: list[bytes] = []
        for k, cid in enumerate(want):
            raw = self.cache.get(cid)
            if raw is not None:
                got[cid] = raw
            elif cid not in missing and (lo + k < hi or len(missing) < FETCH_IDS):
                missing.append(cid)
        n = max(1, len(f.ids))
        for start in range(0, len(missing), FETCH_IDS):
            batch = missing[start : start + FETCH_IDS]
            expected = f.entry.size * len(batch) // n + 1
            replies = self.call(self.history.fetch, f.listed.tree, f.entry.path, batch, expected)
            for reply in replies:
                raw = self.history.decode(f.entry.path, reply)
                got[reply.id] = raw
                self.cache.put(reply.id, raw)
            with self._lock:
                self.bytes_fetched += sum(len(got[r.id]) for r in replies)
        return [got[cid] for cid in f.ids[lo:hi]]

    def _guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn``; what goes wrong reaching the server becomes EIO with one line on stderr."""
        import mfusepy

        try:
            return fn(*args)
        except mfusepy.FuseOSError:
            raise
        except Exception as e:
            from neotwist.client.push import describe_error

            self.log(describe_error(e))
            raise self._errno(errno.EIO) from None


def _time_names(records: list[SnapshotRecord]) -> dict[str, int]:
    """by-time/ names -> snapshot ids: each snapshot's time as neo-ls shows it; snapshots taken within the
    same second get their id after it (``2026-11-23T14:30:05+01:00_12``)."""
    counts: dict[str, int] = {}
    for r in records:
        counts[format_time(r.time)] = counts.get(format_time(r.time), 0) + 1
    return {(t if counts[t] == 1 else f"{t}_{r.id}"): r.id for r in records for t in (format_time(r.time),)}
