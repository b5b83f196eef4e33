"""neo-push's pipeline: scan, skip unchanged files, chunk and hash the rest, upload missing chunks, commit.

The reactor thread only moves messages. Everything that touches the disk or the CPU runs in a small thread
pool (pyfastcdc, blake3 and zstandard release the GIL, so the workers really run in parallel):

1. the walk (:mod:`~neotwist.client.scan`) runs in a worker, a batch of records at a time, with the files
   cache (:mod:`~neotwist.client.filescache`) consulted there: unchanged files are never opened;
2. changed files are cut and hashed in workers, small files grouped into one job to save thread hops;
   a small file's bytes are kept until its chunks are sent, a big file is re-read later with ``os.pread``;
3. each batch's new chunk ids (deduplicated over the whole push) go to the server in ``have`` requests of up
   to MAX_IDS ids; several batches are in flight at once, so there is no round trip per file;
4. missing chunks are read, re-verified and compressed in workers, then posted as ``put`` messages, awaiting
   :meth:`Peer.drain` so at most a window of frames is queued;
5. entries (every scanned item, the root included) are posted in ``entries`` messages of up to MAX_ENTRIES as
   batches finish; ``commit`` is the barrier that makes it all one snapshot. When the files cache says what the
   last push sent and the snapshot it committed is still the target's latest, only the entries that differ
   from what was sent then are posted, and (with ``--delete``) the paths that are gone are named
   (``push_begin.parent``): a push of an unchanged tree lists nothing. If another snapshot came in between,
   the server refuses the commit and the push is made again listing everything.

When the commit says chunks are missing (the cache named chunks the server no longer has, or the server found
chunks damaged and asks for them again, or one was marked damaged while this push ran), the push is aborted and
run again once, *verifying* the cache: the chunk ids of the files it vouches for are asked about with ``have``
too, and only the files with a chunk the server lacks are read again (and their chunks sent); the others still
cost no read. A push that ran without the cache simply runs again.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import blake3
import msgspec
import zstandard
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, ensureDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from neotwist import paths
from neotwist.chunking import Chunker
from neotwist.client import deep
from neotwist.client.deltapush import DeltaPlanner, Made, Plan, delta_messages, drop, make_delta
from neotwist.client.encryption import Crypt, KeySource, plain_errors
from neotwist.client.filescache import CacheBroken, FilesCache
from neotwist.client.filters import Filter
from neotwist.client.gather import gather
from neotwist.client.labels import commit_fields
from neotwist.client.metadata import Capture, link_fields
from neotwist.client.meter import Meter
from neotwist.client.pins import TargetPin
from neotwist.client.problems import MAX_KEPT, Problem, problems_json, shown
from neotwist.client.progress import Progress
from neotwist.client.reading import cut_fd
from neotwist.client.remotetarget import Access, RemoteTarget
from neotwist.client.scan import SameDir, ScanRecord, ScanStats, plain_names_only, scan, walk
from neotwist.client.workers import WorkerPool
from neotwist.codec import DEFAULT_LEVEL, PLAIN, ChunkCodec
from neotwist.runtime import tune_malloc
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, NeoError, RemoteError
from neotwist.wire.label import SnapshotLabel
from neotwist.wire.messages import (
    Abort,
    ChunkerParams,
    Codec,
    Commit,
    Committed,
    Entry,
    Have,
    Missing,
    PushBegin,
    PushDeleted,
    PushEntries,
    Put,
)
from neotwist.wire.peer import Peer

log = Logger()

ID = limits.ID_SIZE

BATCH_ITEMS = 4096
"""Scan records per batch: about one ``have`` per batch of small files."""
BATCH_BYTES = 8 * 1024 * 1024
"""Bytes of changed files per batch (a bigger file makes a batch of its own)."""
BATCHES_IN_FLIGHT = 2
"""Batches being hashed, asked about or uploaded at once: overlaps disk, CPU and network."""
HAVES_IN_FLIGHT = 8
"""``have`` requests of one batch in flight at once."""
JOB_BYTES = 4 * 1024 * 1024
"""Bytes of small files hashed, or chunks compressed, per worker job (amortizes the thread hop)."""
JOB_FILES = 256
JOBS_AHEAD = 2
"""Compression jobs of one batch running or done ahead of the one being put (each about JOB_BYTES)."""
KEEP_BYTES = 1024 * 1024
"""Files up to this size are read whole and kept in memory until their missing chunks are sent."""
ENTRIES_MESSAGE_BYTES = 1024 * 1024
"""Approximate encoded bytes per ``entries`` message."""

SEEN_MOST = 65_536
"""Chunk ids a push remembers having asked about or sent, per generation (two generations: up to twice this,
about 12 MB): enough to catch duplicates among nearby files, bounded whatever the tree's size. A duplicate
older than that is asked about again; the server answers that it has it (or, if its upload is still in
flight, takes the copy and keeps one)."""


class RecentIds:
    """The ids added lately, in two generations of up to ``most`` each: when the newer one is full the older
    is dropped. A set with a memory bound, for remembering what a push has already dealt with."""

    def __init__(self, most: int = SEEN_MOST) -> None:
        self._most = most
        self._new: set[bytes] = set()
        self._old: set[bytes] = set()

    def __contains__(self, cid: object) -> bool:
        return cid in self._new or cid in self._old

    def __len__(self) -> int:
        return len(self._new) + len(self._old)

    def add(self, cid: bytes) -> None:
        self._new.add(cid)
        if len(self._new) >= self._most:
            self._old, self._new = self._new, set()

    def discard(self, cid: bytes) -> None:
        self._new.discard(cid)
        self._old.discard(cid)


class PushError(Exception):
    """The push failed; the message is one line fit for the terminal."""


@dataclass
class PushOptions:
    """What neo-push's command line decides about a push."""

    filter: Filter | None = None
    cache: FilesCache | None = None  # None: no files cache
    workers: int = 3
    compress_level: int = DEFAULT_LEVEL
    delete: bool = False  # record files missing locally as deleted (they stay in earlier snapshots)
    keep_history: bool | None = None  # False: the target keeps only its latest snapshot; None: leave as is
    progress: Progress | None = None
    warn: Callable[[str], None] | None = None
    keys: KeySource | None = None  # the key, for encrypted targets (asked for only when one is met)
    encrypt: bool = False  # --encrypt: a target this push creates is encrypted
    grant_root: str = ""  # --grant-root: the plaintext sub-path an encrypted target's grant gives
    pin: TargetPin | None = None  # this target's encryption pin (None: pins are not used)
    require_encryption: bool = False  # --require-encryption: refuse a plaintext target
    byte_names: bool = True  # the server stores any name (welcome.features); else odd names are skipped, named
    label: SnapshotLabel | None = None  # host, source and --tag of the snapshot (its warnings are added at commit)

    @property
    def access(self) -> Access:
        return Access(self.keys, self.pin, self.require_encryption, self.grant_root)


@dataclass
class PushSummary:
    """What --json prints (and the human summary is made of)."""

    files_scanned: int = 0  # every scanned item (files, directories, symlinks, the root)
    files: int = 0  # regular files among them
    files_changed: int = 0  # files read and hashed (not taken from the files cache)
    files_skipped: int = 0  # specials, unreadable or vanished items, names that cannot be stored
    files_filtered: int = 0
    bytes_read: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    chunks_sent: int = 0
    chunks_sent_as_deltas: int = 0  # of chunks_sent: sent as a delta against a stored chunk (only what changed)
    chunk_bytes_sent: int = 0  # raw bytes of the chunks sent (before compression)
    new_chunks: int = 0  # what the server stored anew (from committed)
    new_bytes: int = 0
    deleted: int = 0  # paths the snapshot recorded as deleted (--delete)
    snapshot: int | None = None
    elapsed_s: float = 0.0
    retried_without_cache: bool = False  # the commit asked for chunks; the push ran again (see files_reread)
    files_reread: int = 0  # files the cache vouched for that were read again: the server lacked a chunk of theirs
    encrypted: bool = False
    warnings: list[Problem] = field(default_factory=list)  # what was not stored (or only in part), and why
    warnings_count: int = 0

    def as_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        del out["warnings_count"]  # it is the ``warnings`` key
        out.update(problems_json(self.warnings, self.warnings_count))
        out["elapsed_s"] = round(self.elapsed_s, 3)
        return out


@dataclass(slots=True)
class _Hashed:
    """A changed file after hashing (in a worker)."""

    rec: ScanRecord
    ids: bytes = b""
    offsets: list[tuple[int, int]] = field(default_factory=list)
    data: bytes | None = None  # the whole file, when small
    stable: bool = True  # unchanged while read: safe to cache
    error: str | None = None  # why it is not stored
    warning: str | None = None  # stored, but with this caveat
    entries: list[Entry] = field(default_factory=list)  # its entry records (built in the worker)
    previous: bytes | None = None  # the chunk ids the last push stored for it (set while it waits to be sent)


# --- worker-thread side ----------------------------------------------------------------------------------

_local = threading.local()


def _chunker(params: ChunkerParams, id_key: bytes | None = None) -> Chunker:
    chunker: Chunker | None = getattr(_local, "chunker", None)
    if chunker is None or chunker.params != params or chunker.id_key != id_key:
        chunker = Chunker(params, id_key)
        _local.chunker = chunker
    return chunker


def _compressor(level: int) -> zstandard.ZstdCompressor:
    comp: zstandard.ZstdCompressor | None = getattr(_local, "zstd", None)
    if comp is None or getattr(_local, "zstd_level", None) != level:
        comp = zstandard.ZstdCompressor(level=level)
        _local.zstd = comp
        _local.zstd_level = level
    return comp


def _read_all(fd: int, size: int, offset: int = 0) -> bytes:
    """Up to ``size`` bytes from ``offset`` (one read for nearly every file); a file that grew is marked
    unstable later."""
    data = os.pread(fd, size, offset)
    if len(data) >= size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        block = os.pread(fd, size - got, offset + got)
        if not block:
            break
        parts.append(block)
        got += len(block)
    return b"".join(parts)


READ_ATTEMPTS = 3
"""Times a file that changes while it is read is read; after that it is stored as last read, with a warning."""


def _hash_file(root: str, rec: ScanRecord, params: ChunkerParams, id_key: bytes | None = None) -> _Hashed:
    """Read and cut one file, again (up to READ_ATTEMPTS times) if it changed meanwhile. Never maps it: a file
    truncated or failing with EIO while read is a warning naming it, not a SIGBUS."""
    try:
        fd = deep.open_below(root, rec.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        return _Hashed(rec, error=f"not stored: cannot open it ({e.strerror})")
    try:
        for _attempt in range(READ_ATTEMPTS):
            out = _hash_once(fd, rec, params, id_key)
            if out.error is not None or out.stable:
                return out
        out.warning = f"changed while it was read ({READ_ATTEMPTS} times); stored as last read"
        return out
    except OSError as e:
        return _Hashed(rec, error=f"not stored: cannot read it ({e.strerror})")
    finally:
        os.close(fd)


def _hash_once(fd: int, rec: ScanRecord, params: ChunkerParams, id_key: bytes | None) -> _Hashed:
    out = _Hashed(rec)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        out.error = "not stored: it is no longer a regular file"
        return out
    chunker = _chunker(params, id_key)
    offsets = out.offsets
    if st.st_size <= KEEP_BYTES:
        ids: list[bytes] = []
        data = _read_all(fd, st.st_size, 0)
        if data:
            for piece, _view in chunker.cut_bytes(data):
                ids.append(piece.id)
                offsets.append((piece.offset, piece.length))
        out.data = data
        size = len(data)
    else:
        cut = cut_fd(chunker, fd, st.st_size, st.st_blocks)
        ids, out.offsets, size = cut.ids, cut.offsets, cut.size
    after = os.fstat(fd)
    out.stable = (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
    ) and size == st.st_size
    out.ids = b"".join(ids)
    # The entry describes what was read: its size is the sum of its chunks, its times those seen at open.
    out.rec = ScanRecord(
        rec.path, "f", stat.S_IMODE(st.st_mode), st.st_mtime_ns, size, st.st_ino, st.st_ctime_ns, "", rec.extra
    )
    return out


_Item = TypeVar("_Item")


def _jobs(items: list[_Item], size: Callable[[_Item], int], most: int | None = None) -> list[list[_Item]]:
    """``items`` in order, grouped into worker jobs of about JOB_BYTES (by ``size``) and at most ``most`` items:
    a thread hop per job, not per small file or chunk."""
    jobs: list[list[_Item]] = []
    group: list[_Item] = []
    group_bytes = 0
    for item in items:
        group.append(item)
        group_bytes += size(item)
        if group_bytes >= JOB_BYTES or (most is not None and len(group) >= most):
            jobs.append(group)
            group, group_bytes = [], 0
    if group:
        jobs.append(group)
    return jobs


_UNKNOWN: tuple[None, None] = (None, None)
"""What a push without a files cache knows of a file: nothing (it is read)."""

EntryMaker = Callable[[ScanRecord, bytes], list[Entry]]
"""Builds an item's entry records from its scan record and chunk ids (plaintext, or encrypted)."""


def _hash_job(
    root: str, recs: list[ScanRecord], params: ChunkerParams, id_key: bytes | None, make_entries: EntryMaker
) -> list[_Hashed]:
    out = [_hash_file(root, rec, params, id_key) for rec in recs]
    for h in out:
        if h.error is None:
            h.entries = make_entries(h.rec, h.ids)
    return out


_Source = tuple[bytes, str, bytes | None, int, int]
"""A chunk to send: (id, path, file data when kept in memory, offset, length)."""

_Ready = tuple[bytes, int, int, bytes, int]
"""A chunk ready to put: (id, codec, size as sent, payload, raw size)."""


def _compress_job(
    root: str,
    sources: list[_Source],
    level: int,
    crypt: Crypt | None = None,
    plans: dict[bytes, Plan] | None = None,
    deltas: list[Made] | None = None,
) -> tuple[list[_Ready], dict[str, str]]:
    """Read (re-verifying re-read data against its id), compress (and seal, for an encrypted target) and
    return the chunks of ``sources``, and the files that could not give theirs (changed since they were cut, or
    unreadable now) with the reason: their entries are withheld, the rest of the push goes on. A chunk with a
    plan in ``plans`` that is smaller as a delta goes to ``deltas`` (with its raw size) instead."""
    comp = _compressor(level)
    chunk_codec = PLAIN if crypt is None else ChunkCodec(crypt.sealer)
    out: list[_Ready] = []
    failed: dict[str, str] = {}
    fds: dict[str, int] = {}
    try:
        for cid, path, data, offset, length in sources:
            if data is not None:
                raw = data[offset : offset + length]
            else:
                if path in failed:
                    continue
                try:
                    fd = fds.get(path)
                    if fd is None:
                        fd = fds[path] = deep.open_below(root, path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                    raw = _read_all(fd, length, offset)
                except OSError as e:
                    failed[path] = f"cannot read it again ({e.strerror})"
                    continue
                if len(raw) != length or not chunk_codec.matches(raw, cid):
                    failed[path] = "changed while it was pushed"
                    continue
            codec, size, payload = chunk_codec.encode(cid, raw, comp)
            plan = plans.get(cid) if plans else None
            if plan is not None and deltas is not None:
                delta = make_delta(cid, bytes(raw), plan, len(payload), comp)
                if delta is not None:
                    deltas.append((delta, length, sum(sig.size for sig in plan[1])))
                    continue
            out.append((cid, codec, size, payload, length))
    finally:
        for fd in fds.values():
            os.close(fd)
    return out, failed


@dataclass(slots=True)
class _Batch:
    """One step of the walk: files to read, and the entries that need no reading."""

    items: int = 0
    changed: list[ScanRecord] = field(default_factory=list)
    ready: list[Entry] = field(default_factory=list)
    cached_files: int = 0
    cached_bytes: int = 0
    vouched: list[tuple[ScanRecord, bytes, list[Entry]]] = field(default_factory=list)  # verify mode: cache hits
    previous: dict[str, bytes] = field(default_factory=dict)  # changed files: the chunk ids the last push stored


class _Scanner:
    """The walk, advanced a batch at a time from worker threads (never two at once)."""

    def __init__(
        self,
        root: str,
        options: PushOptions,
        stats: ScanStats,
        use_cache: bool,
        make_entries: EntryMaker,
        verify: bool = False,
        listing_changes: bool = False,
        previous: bool = False,
    ) -> None:
        self._cache = options.cache if use_cache else None
        self._previous = previous  # keep the last push's chunk ids of changed files (the bases of deltas)
        known = self._cache.lookup_extra if self._cache is not None else None
        same_dir = None
        if options.cache is not None:
            # Every directory's signature is remembered for the next push. A directory the last push remembered
            # whole and that is as it was then is taken from the cache without a record per item, when only the
            # changes since the last push are listed (its entries are then the snapshot's already) and the cache
            # is trusted (a verifying retry asks about every cached file's chunks).
            take = self._cache is not None and listing_changes and not verify
            see_dir = options.cache.see_dir
            same_dir = lambda summary: see_dir(summary, take)  # noqa: E731
        self._it: Iterator[ScanRecord | SameDir] = walk(
            root, options.filter, stats, capture=Capture(known), same_dir=same_dir
        )
        if not options.byte_names:
            self._it = plain_names_only(self._it, stats)
        self._make_entries = make_entries
        self._remember = options.cache  # remembered into even when not consulted, to rebuild it
        self._verify = verify  # cache hits go to batch.vouched, to be asked about before they are trusted

    def next_batch(self) -> _Batch:
        """The next records, split into files to read and the ready entries of everything else (directories,
        symlinks, and files the cache vouches for, which are remembered for the next push here, in the
        worker, so the reactor thread does no per-file work for them)."""
        batch = _Batch()
        changed_bytes = 0
        cache = self._cache
        find = cache.find if cache is not None else None
        remember = self._remember.remember if self._remember is not None else None
        ready, changed, previous = batch.ready, batch.changed, batch.previous
        want_previous = self._previous
        make_entries = self._make_entries
        n = 0
        for rec in self._it:
            if type(rec) is SameDir:  # every item as the last push left it: nothing to read, list or remember
                n += rec.items
                batch.cached_files += rec.files
                batch.cached_bytes += rec.size
                if n >= BATCH_ITEMS:
                    break
                continue
            assert type(rec) is ScanRecord
            n += 1
            if rec.kind == "f":
                ids, before = find(rec.path, rec.size, rec.mtime_ns, rec.inode, rec.ctime_ns) if find else _UNKNOWN
                if ids is None:
                    changed.append(rec)
                    changed_bytes += rec.size
                    if before is not None and want_previous:
                        previous[rec.path] = before
                else:
                    if remember is not None:
                        remember(rec.path, rec.size, rec.mtime_ns, rec.inode, rec.ctime_ns, ids, rec.extra)
                    if self._verify:
                        batch.vouched.append((rec, ids, make_entries(rec, ids)))
                    else:
                        ready.extend(make_entries(rec, ids))
                    batch.cached_files += 1
                    batch.cached_bytes += rec.size
            else:
                ready.extend(make_entries(rec, b""))
            if n >= BATCH_ITEMS or changed_bytes >= BATCH_BYTES:
                break
        batch.items = n
        return batch


def take_entry_messages(entries: list[Entry], force: bool) -> list[list[Entry]]:
    """Remove from ``entries`` and return the contents of full ``entries`` messages (at most MAX_ENTRIES
    entries, about ENTRIES_MESSAGE_BYTES each: a file's chunk-id list can be 2 MiB, so counting entries
    alone could overflow MAX_FRAME); with ``force`` the remainder too."""
    out: list[list[Entry]] = []
    while entries:
        size = n = 0
        for e in entries:
            if n >= limits.MAX_ENTRIES:
                break
            one = 64 + 4 * (len(e.path) + len(e.link)) + len(e.chunks) + len(e.meta)  # bytes, at most
            if n and size + one > ENTRIES_MESSAGE_BYTES:
                break
            size += one
            n += 1
        if n == len(entries) and not force and n < limits.MAX_ENTRIES and size < ENTRIES_MESSAGE_BYTES:
            break  # not a full message yet
        out.append(entries[:n])
        del entries[:n]
    return out


def entry_digest(records: list[Entry]) -> bytes:
    """What the files cache remembers of an item's entry records: 16 bytes of BLAKE3 over their encoding."""
    return blake3.blake3(_entry_encoder.encode(records)).digest(16)


_entry_encoder = msgspec.msgpack.Encoder()


def _encrypted_entries(crypt: Crypt) -> EntryMaker:
    """Entry records for an encrypted target: encrypted path, blank visible fields, sealed metadata."""
    encrypt = crypt.tree.encrypt_entries

    def make(rec: ScanRecord, ids: bytes) -> list[Entry]:
        kind = "f" if rec.kind == "s" else rec.kind
        link, extra = link_fields(rec.link, rec.extra) if rec.link else ("", rec.extra)
        return encrypt(rec.path, kind, rec.mode, rec.mtime_ns, rec.size, ids, link, extra)  # type: ignore[arg-type]

    return make


def _entries_for(rec: ScanRecord, ids: bytes) -> list[Entry]:
    """The entry records of one item (a file with many chunks continues over several records); paths in their
    wire text (:func:`neotwist.paths.to_wire`)."""
    path = paths.to_wire(rec.path)
    if rec.kind != "f":
        kind = "f" if rec.kind == "s" else rec.kind  # a FIFO or device: an empty file and its extra record
        link, extra = link_fields(rec.link, rec.extra) if rec.link else ("", rec.extra)
        return [Entry(path, kind, rec.mode, rec.mtime_ns, rec.size, b"", link, extra)]  # type: ignore[arg-type]
    step = limits.MAX_FILE_CHUNK_IDS * ID
    if len(ids) <= step:
        return [Entry(path, "f", rec.mode, rec.mtime_ns, rec.size, ids, "", rec.extra)]
    out = []
    for start in range(0, len(ids), step):
        part = ids[start : start + step]
        meta = rec.extra if not start else b""
        out.append(Entry(path, "f", rec.mode, rec.mtime_ns, rec.size, part, "", meta, more=start + step < len(ids)))
    return out


# --- reactor side ----------------------------------------------------------------------------------------


class _PushRun:
    """One attempt at a push on an open handle."""

    def __init__(
        self,
        reactor: Any,
        pool: ThreadPool,
        peer: Peer,
        handle: int,
        params: ChunkerParams,
        root: str,
        options: PushOptions,
        summary: PushSummary,
        use_cache: bool,
        crypt: Crypt | None = None,
        verify: bool = False,
        parent: int | None = None,
    ) -> None:
        self.reactor = reactor
        self.parent = parent  # list only the changes since this snapshot (see the module docstring)
        self.outgoing: list[Entry] = []  # entries to post
        self.verify = verify  # ask about the chunks of the files the cache vouches for (a retry)
        self.asked = RecentIds()  # ids of vouched files already asked about
        self.crypt = crypt
        self.id_key = crypt.id_key if crypt is not None else None
        self.make_entries: EntryMaker = _entries_for if crypt is None else _encrypted_entries(crypt)
        self.pool = pool
        self.peer = peer
        self.handle = handle
        self.params = params
        self.root = root
        self.options = options
        self.summary = summary
        self.use_cache = use_cache and options.cache is not None
        self.cache = options.cache  # remembered into even when not consulted, to rebuild it
        self.seen = RecentIds()  # ids already asked about or sent in this push (the latest ones)
        self.entries: list[Entry] = []
        self.stats = ScanStats()
        self.progress = options.progress
        self.retry: list[ScanRecord] = []  # files that changed while pushed, to be read again
        self.retry_previous: dict[str, bytes] = {}  # their chunk ids of the last push: still their deltas' bases
        self.attempts: dict[str, int] = {}
        # deltas inside changed chunks, against their previous version's (needs the files cache's old ids)
        self.deltas = (
            DeltaPlanner(peer, handle)
            if self.cache is not None and DeltaPlanner.usable(peer, crypt is not None)
            else None
        )

    def _thread(self, f: Callable[..., Any], *args: Any) -> Any:
        return deferToThreadPool(self.reactor, self.pool, f, *args)

    async def run(self) -> Committed:
        await self.peer.request(PushBegin(rid=0, handle=self.handle, delete=self.options.delete, parent=self.parent))
        await self.walk()
        fields = commit_fields(
            self.options.label, self.summary.warnings_count, None if self.crypt is None else self.crypt.keys
        )
        try:
            reply = await self.peer.request(Commit(rid=0, handle=self.handle, **fields))
        except RemoteError as e:
            if e.code == ErrorCode.CONFLICT and self.parent is not None:
                raise _ListEverything() from None  # another snapshot came in since the last push
            raise
        if not isinstance(reply, Committed):
            raise PushError(f"the server answered commit with {type(reply).__name__}")
        return reply

    async def walk(self) -> None:
        """Scan, hash, ask and send everything; the entries are posted, the commit is the caller's."""
        peer = self.peer
        if self.cache is not None:
            self.cache.begin()
        scanner = _Scanner(
            self.root, self.options, self.stats, self.use_cache, self.make_entries, self.verify,
            listing_changes=self.parent is not None, previous=self.deltas is not None,
        )  # fmt: skip
        slots = DeferredSemaphore(BATCHES_IN_FLIGHT)
        running: list[Any] = []
        failure: list[BaseException] = []

        def done(result: object) -> object:
            slots.release()
            return result

        def failed(f: Any) -> None:
            failure.append(f.value)

        while not failure:
            await slots.acquire()
            if failure:
                slots.release()
                break
            try:
                batch = await self._thread(scanner.next_batch)
            except FileNotFoundError as e:
                raise PushError(f"{self.root} does not exist") from e
            except OSError as e:
                raise PushError(f"cannot read {self.root}: {e.strerror}") from e
            for problem in self.stats.take():
                self._report(problem)
            if not batch.items:
                slots.release()
                break
            d = ensureDeferred(self._batch(batch))
            d.addBoth(done)
            d.addErrback(failed)
            running.append(d)
            running = [r for r in running if not r.called]
        await DeferredList(running)
        if failure:
            raise failure[0]
        while self.retry:
            again, self.retry = self.retry, []
            previous, self.retry_previous = self.retry_previous, {}
            await self._batch(_Batch(changed=again, previous=previous))
        self._flush_entries(force=True)
        if self.parent is not None and self.options.delete and self.cache is not None:
            try:
                self._post_deleted(self.cache.gone())
            except CacheBroken:
                raise _ListEverything() from None
        await peer.drain()
        self.summary.files_skipped += self.stats.skipped
        self.summary.files_filtered += self.stats.filtered

    def _flush_entries(self, force: bool = False) -> None:
        if self.cache is not None:
            self._note_entries()
        else:
            self.outgoing.extend(self.entries)
            self.entries.clear()
        for part in take_entry_messages(self.outgoing, force):
            self.peer.post(PushEntries(rid=0, handle=self.handle, entries=part))

    def _note_entries(self) -> None:
        """Move the pending entries to ``outgoing``, remembering each item's digest for the next push; with a
        parent, an item whose records are those the last push sent stays out."""
        assert self.cache is not None
        pending = self.entries[:]
        self.entries.clear()
        cache = self.cache
        groups: list[tuple[list[Entry], bytes]] = []
        i = 0
        while i < len(pending):
            j = i + 1
            while pending[j - 1].more and j < len(pending):
                j += 1
            group = pending[i:j]
            digest = entry_digest(group)
            cache.note_entry(group[0].path, digest)
            groups.append((group, digest))
            i = j
        out = self.outgoing
        if self.parent is None:
            for group, _digest in groups:
                out.extend(group)
            return
        olds = cache.old_entries([group[0].path for group, _digest in groups])
        for (group, digest), old in zip(groups, olds, strict=True):
            if old != digest:
                out.extend(group)

    def _post_deleted(self, gone: Iterator[str]) -> None:
        """Name the paths the last push sent that this one did not (a push with a parent and --delete)."""
        part: list[str] = []
        size = 0
        for path in gone:
            if part and (len(part) >= limits.MAX_ENTRIES or size + len(path) * 4 > ENTRIES_MESSAGE_BYTES):
                self.peer.post(PushDeleted(rid=0, handle=self.handle, paths=part))
                part, size = [], 0
            part.append(path)
            size += len(path) * 4 + 8
        if part:
            self.peer.post(PushDeleted(rid=0, handle=self.handle, paths=part))

    async def _missing(self, ids: list[bytes]) -> set[bytes]:
        return await ask_missing(self.peer, self.handle, ids)

    async def _check_vouched(self, batch: _Batch) -> None:
        """Verify mode: the files the cache vouches for keep their cached entries unless the server lacks one of
        their chunks; those are read again (moved to ``batch.changed``), so their chunks are sent."""
        step = ID
        asked = self.asked
        ask = []
        for _rec, ids, _entries in batch.vouched:
            for i in range(0, len(ids), step):
                cid = ids[i : i + step]
                if cid not in asked:
                    asked.add(cid)
                    ask.append(cid)
        lacking = await self._missing(ask)
        for rec, ids, entries in batch.vouched:
            if lacking and any(ids[i : i + step] in lacking for i in range(0, len(ids), step)):
                batch.changed.append(rec)
                batch.cached_files -= 1
                batch.cached_bytes -= rec.size
                self.summary.files_reread += 1
            else:
                batch.ready.extend(entries)
        batch.vouched = []

    async def _batch(self, batch: _Batch) -> None:
        summary = self.summary
        params = self.params
        if batch.vouched:
            await self._check_vouched(batch)
        # 1. hash the changed files, small ones grouped per job
        jobs = _jobs(batch.changed, lambda rec: rec.size, JOB_FILES)
        results = (
            await gather(
                [self._thread(_hash_job, self.root, job, params, self.id_key, self.make_entries) for job in jobs]
            )
            if jobs
            else []
        )

        # 2. entries, the cache and the new ids
        summary.files_scanned += batch.items
        summary.files += batch.cached_files
        self.entries.extend(batch.ready)
        sources, held, changed_bytes = self._take_hashed(results, batch.previous)
        progress = self.progress
        if progress is not None:
            progress.files(batch.items)
            progress.bytes(batch.cached_bytes + changed_bytes)
        await self.peer.drain()
        self._flush_entries()
        failed: dict[str, str] = {}
        try:
            await self._send(sources, failed)
        finally:
            self._release(held, failed)

    def _take_hashed(
        self, results: list[list[_Hashed]], previous: dict[str, bytes]
    ) -> tuple[list[_Source], dict[str, _Hashed], int]:
        """The hashed files of a batch: (chunks not yet seen in this push, to be asked about and sent; files
        re-read from disk to be sent, whose entries wait until their chunks are; bytes of changed files). The
        others go into the snapshot now; those that could not be read are named. ``previous``: the chunk ids
        the last push stored for the files (where their new chunks likely grew from)."""
        summary = self.summary
        seen = self.seen
        sources: list[_Source] = []
        changed_bytes = 0
        held: dict[str, _Hashed] = {}
        for files in results:
            for h in files:
                rec = h.rec
                if h.error is not None:
                    summary.files_skipped += 1
                    summary.files_scanned -= 1
                    self._warn(rec.path, h.error)
                    continue
                if h.warning is not None:
                    self._warn(rec.path, h.warning)
                changed_bytes += rec.size
                ids = h.ids
                data = h.data
                n_sources = len(sources)
                if self.deltas is not None:
                    self.deltas.note(previous.get(rec.path), ids, seen)
                for i, (offset, length) in enumerate(h.offsets):
                    cid = ids[i * ID : (i + 1) * ID]
                    if cid not in seen:
                        seen.add(cid)
                        sources.append((cid, rec.path, data, offset, length))
                if data is None and len(sources) > n_sources:
                    h.previous = previous.get(rec.path)  # if it changes meanwhile, its next reading grew from them
                    held[rec.path] = h
                else:
                    self._accept(h)
        return sources, held, changed_bytes

    def _accept(self, h: _Hashed) -> None:
        """A read file goes into the snapshot (and the files cache, when it was stable while read)."""
        rec = h.rec
        summary = self.summary
        summary.files += 1
        summary.files_changed += 1
        summary.bytes_read += rec.size
        if self.cache is not None and h.stable:
            self.cache.remember(rec.path, rec.size, rec.mtime_ns, rec.inode, rec.ctime_ns, h.ids, rec.extra)
        self.entries.extend(h.entries)

    def _release(self, held: dict[str, _Hashed], failed: dict[str, str]) -> None:
        """Entries of files whose chunks were all sent go in; a file that changed since it was cut is read
        again in a later round (up to READ_ATTEMPTS), then named as not stored."""
        for path, h in held.items():
            why = failed.get(path)
            if why is None:
                self._accept(h)
                continue
            tries = self.attempts[path] = self.attempts.get(path, 0) + 1
            if tries < READ_ATTEMPTS:
                self.retry.append(h.rec)
                if h.previous is not None:
                    self.retry_previous[path] = h.previous
            else:
                self.summary.files_skipped += 1
                self.summary.files_scanned -= 1
                self._warn(path, f"not stored: {why} ({tries} times); earlier snapshots keep its earlier version")
        self._flush_entries()

    async def _send(self, sources: list[_Source], failed: dict[str, str]) -> None:
        """Ask which of ``sources`` the server lacks and put those; files that could not give their chunks are
        added to ``failed``."""
        if not sources:
            return

        # 3. which of the new ids does the server lack? With deltas, the bases of the first compression job's
        # chunks are signed at the same time (see DeltaPlanner.ahead): no round trip between the two.
        planner = self.deltas
        first = [src[0] for src in _jobs(sources, lambda src: src[4])[0]]
        early = planner.ahead(first) if planner is not None else None
        try:
            lacking = await self._missing([src[0] for src in sources])
        except BaseException:
            drop(early)
            raise
        if planner is not None:
            planner.forget([src[0] for src in sources if src[0] not in lacking])
        if not lacking:
            drop(early)
            return
        missing = [src for src in sources if src[0] in lacking]

        # 4. read, compress (in workers) and put them
        jobs2 = _jobs(missing, lambda src: src[4])
        level = self.options.compress_level
        # A few jobs ahead of the sending, not all of them: a 512 MiB file is 64 jobs, whose compressed chunks
        # all waited in memory for their turn to be put (the client peaked at 650 MiB).
        queued = iter(jobs2)
        pending: deque[tuple[list[_Source], Deferred[Any]]] = deque()

        async def compress(
            job: list[_Source], early: Deferred[dict[bytes, Plan]] | None = None
        ) -> tuple[list[_Ready], dict[str, str], list[Made]]:
            # with deltas, the signatures of this job's bases first (asked JOBS_AHEAD jobs ahead of the sending:
            # overlapped with it, and bounded; the first job's with ``have``)
            plans = await planner.plans([src[0] for src in job], early) if planner is not None else None
            deltas: list[Made] = []
            ready, bad = await self._thread(_compress_job, self.root, job, level, self.crypt, plans, deltas)
            return ready, bad, deltas

        def start_next() -> None:
            nonlocal early
            job = next(queued, None)
            if job is not None:
                pending.append((job, ensureDeferred(compress(job, early))))
                early = None

        for _ in range(JOBS_AHEAD):
            start_next()
        while pending:
            job, d = pending.popleft()
            try:
                ready, bad, deltas = await d
            except Exception:
                for _job, other in pending:
                    other.addErrback(lambda _f: None)
                raise
            start_next()
            if bad:
                failed.update(bad)
                sent = {r[0] for r in ready} | {d.id for d, _raw, _bases in deltas}
                for src in job:
                    if src[0] not in sent:
                        self.seen.discard(src[0])  # not sent: whoever needs it again must send it
            for cid, codec, size, payload, raw_size in ready:
                await self._put(cid, codec, size, payload, raw_size)
            if deltas:
                await self._put_deltas(deltas)

    async def _put_deltas(self, deltas: list[Made]) -> None:
        """Send chunks as deltas, in ``put_delta`` messages."""
        for message in delta_messages(self.handle, deltas):
            await self.peer.drain()
            self.peer.post(message)
        summary = self.summary
        summary.chunks_sent += len(deltas)
        summary.chunks_sent_as_deltas += len(deltas)
        summary.chunk_bytes_sent += sum(raw for _d, raw, _bases in deltas)

    async def _put(self, cid: bytes, codec: Codec, size: int, payload: bytes, raw_size: int) -> None:
        """Send one chunk (a dry run counts it instead)."""
        await self.peer.drain()
        self.peer.post(Put(rid=0, handle=self.handle, id=cid, codec=codec, size=size, data=payload))
        self.summary.chunks_sent += 1
        self.summary.chunk_bytes_sent += raw_size

    def _warn(self, rel: str, reason: str) -> None:
        self._report(Problem(shown(os.path.join(self.root, rel)), reason))

    def _report(self, problem: Problem) -> None:
        summary = self.summary
        summary.warnings_count += 1
        if len(summary.warnings) < MAX_KEPT:
            summary.warnings.append(problem)
        if self.options.warn is not None:
            self.options.warn(str(problem))


async def push(
    reactor: Any, peer: Peer, local_root: str, target: str, subpath: str, options: PushOptions
) -> PushSummary:
    """Push ``local_root`` to ``target`` at ``subpath`` over ``peer`` (an open session): one new snapshot."""
    tune_malloc()  # before the workers allocate (neo-push has done it already; a script using the API has not)
    meter = Meter.start(peer)
    summary = PushSummary()
    local_root = os.path.abspath(local_root)
    if not os.path.isdir(local_root):
        raise PushError(f"{local_root} is not a directory (neo-push LOCAL_DIR REMOTE)")
    remote = await RemoteTarget.open_push(
        peer, target, subpath, options.access, encrypt=options.encrypt, keep_history=options.keep_history
    )
    opened, crypt = remote.opened, remote.crypt
    if opened.encrypted != (crypt is not None):
        raise PushError(f"the server opened target {target} with the wrong encryption; nothing was sent")
    summary.encrypted = crypt is not None
    if crypt is not None:
        options = dataclasses.replace(options, byte_names=True)  # names travel sealed, paths as tokens
    try:
        with plain_errors(crypt):  # every request on the handle: errors name plaintext paths
            if options.cache is not None:
                # ids of an encrypted target are keyed: its cache must never lend ids to another keying, or take any
                options.cache.bind("plaintext" if crypt is None else f"encrypted {crypt.keys.fingerprint}")
                options.cache.load()
                if options.cache.load_error and options.warn is not None:
                    options.warn(options.cache.load_error)
            params = remote.chunker
            pool = WorkerPool(minthreads=0, maxthreads=max(2, options.workers + 1), name="neo-push")
            pool.start()
            counting = _count_in_background(reactor, local_root, options)
            try:
                use_cache = options.cache is not None
                retried = False
                cache = options.cache
                # the last push's snapshot still the latest: list only what changed since (see the docstring);
                # a --delete push after one without it lists everything (what that one kept, it did not name)
                parent = (
                    cache.old_snapshot
                    if cache is not None
                    and cache.old_snapshot == opened.latest
                    and (cache.old_whole or not options.delete)
                    else None
                )
                while True:
                    run = _PushRun(
                        reactor, pool, peer, opened.handle, params, local_root, options, summary, use_cache, crypt,
                        verify=retried, parent=None if retried else parent,
                    )  # fmt: skip
                    try:
                        committed = await run.run()
                        break
                    except _ListEverything:
                        # another snapshot came in since the last push, or the files cache failed to write and
                        # cannot say what this push no longer has: list everything this time, as with no parent
                        await peer.request(Abort(rid=0, handle=opened.handle))
                        parent = None
                        summary = PushSummary(encrypted=crypt is not None)
                        continue
                    except RemoteError as e:
                        if e.code != ErrorCode.MISSING_CHUNKS or retried:
                            raise
                    # The server lacks chunks this push refers to (the cache named chunks it no longer has, or it
                    # asks again for chunks it found damaged): start over once, asking about the cached files'
                    # chunks too and reading again those it lacks.
                    await peer.request(Abort(rid=0, handle=opened.handle))
                    retried = True
                    summary = PushSummary(retried_without_cache=True, encrypted=crypt is not None)
            finally:
                counting()
                pool.stop()
            if options.cache is not None:
                options.cache.snapshot = committed.snapshot
                options.cache.whole = options.delete
                try:
                    options.cache.save()
                except OSError as e:
                    summary.warnings.append(Problem(str(options.cache.path), f"cannot save the files cache: {e}"))
                    summary.warnings_count += 1
            summary.snapshot = committed.snapshot
            summary.new_chunks = committed.new_chunks
            summary.new_bytes = committed.new_bytes
            summary.deleted = committed.deleted
            meter.fill(summary)
            return summary
    except BaseException:
        if not opened.exists:  # this push created the target: an interrupted or failed first push
            if summary.chunks_sent:  # keep what it sent: the server holds it for a while, so pushing again resumes
                if options.warn is not None:
                    options.warn(
                        f"nothing was committed to target {target} (new with this push); the server keeps the "
                        f"{summary.chunks_sent} chunks already sent for 15 minutes: push again to resume"
                    )
            elif await _remove_unborn_target(peer, opened.handle, target) and options.warn is not None:
                options.warn(f"nothing was committed, so target {target} (new with this push) was removed again")
        raise
    finally:
        if options.cache is not None:
            options.cache.close()  # an unsaved new cache is removed; a saved one is closed already


def _count_in_background(reactor: Any, root: str, options: PushOptions) -> Callable[[], None]:
    """When progress is shown, walk ``root`` in a thread of its own, as the push's scan will, to give the
    progress its totals (and so a percentage and an ETA) while the push runs, as restic does. Returns the
    function that stops the walk (at once: it checks between entries) and its thread."""
    progress = options.progress
    if progress is None or not progress.wants_totals:
        return lambda: None
    stop = threading.Event()

    def count() -> tuple[int, int] | None:
        items = size = 0
        for rec in scan(root, options.filter, ScanStats()):
            if stop.is_set():
                return None
            items += 1
            size += rec.size
        return items, size

    def counted(totals: tuple[int, int] | None) -> None:
        if totals is not None and not stop.is_set():
            progress.total_files(totals[0])
            progress.total_bytes(totals[1])

    pool = WorkerPool(minthreads=0, maxthreads=1, name="neo-push-count")
    pool.start()
    d = deferToThreadPool(reactor, pool, count)
    d.addCallback(counted)
    d.addErrback(lambda f: log.debug("counting the tree for progress: {why}", why=f.getErrorMessage()))

    def finish() -> None:
        stop.set()
        pool.stop()

    return finish


class _ListEverything(Exception):
    """A push that lists only its changes cannot go on as one (its parent is no longer the latest snapshot, or
    its files cache cannot tell what is gone): it starts over and lists everything."""


async def ask_missing(peer: Peer, handle: int, ids: list[bytes]) -> set[bytes]:
    """The ids of ``ids`` the server lacks: ``have`` requests of up to MAX_IDS ids, HAVES_IN_FLIGHT at once
    (a batch of cached files being verified may name millions of ids)."""
    lacking: set[bytes] = set()
    group = HAVES_IN_FLIGHT * limits.MAX_IDS
    for first in range(0, len(ids), group):
        part = ids[first : first + group]
        requests = [
            peer.request(Have(rid=0, handle=handle, ids=part[start : start + limits.MAX_IDS]))
            for start in range(0, len(part), limits.MAX_IDS)
        ]
        for n, reply in enumerate(await gather(requests)):
            if not isinstance(reply, Missing):
                raise PushError(f"the server answered have with {type(reply).__name__}")
            base = n * limits.MAX_IDS
            count = min(limits.MAX_IDS, len(part) - base)
            if len(reply.bitmap) * 8 < count:
                raise PushError("the server's missing bitmap is shorter than the have request")
            if any(reply.bitmap):
                lacking.update(part[base + i] for i in range(count) if reply.bitmap[i >> 3] >> (i & 7) & 1)
    return lacking


async def _remove_unborn_target(peer: Peer, handle: int, target: str) -> bool:
    """End the push on ``handle`` and remove ``target``, which this push created and nothing was committed to,
    so that neo-ls does not list an empty target nobody made on purpose. True if it was removed. A target that
    holds a snapshot by now (another client's push committed meanwhile) is kept; so is one this account may not
    remove whole (a grant on a part of it): the server then keeps the empty target until its owner removes it."""
    try:
        await peer.request(Abort(rid=0, handle=handle))
    except Exception as e:  # no push had begun, or the connection is gone: the open below says which
        log.debug("abort of the failed first push: {why}", why=e)
    try:
        root = await RemoteTarget.open_root(peer, target, need_snapshot=False)
        if root.latest is not None:
            return False
        await root.remove()
    except Exception as e:
        log.debug("the new target {target} stays: {why}", target=target, why=e)
        return False
    return True


def describe_error(error: BaseException) -> str:
    """A one-line message for a failed push or pull."""
    if isinstance(error, NeoError):
        if error.code == ErrorCode.PROTOCOL and error.message.startswith("connection lost"):
            why = error.message.partition(": ")[2]
            return (
                f"the connection to the server was lost{f' ({why})' if why else ''}: run the command again and it"
                " resumes (a push commits no snapshot half-done, and the server keeps what it sent for a while)"
            )
        return f"server refused: {error.message} ({error.code})"
    return str(error)
