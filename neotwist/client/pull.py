"""neo-pull's pipeline: list a snapshot, reuse what is on disk, fetch only missing chunks, write safely.

For each file of the snapshot:

- a destination file with the same size and mtime is taken as up to date and left alone (``--checksum``
  turns this quick check off);
- otherwise the existing local file is cut with the target's chunker: every chunk whose id the new version
  needs is copied from it instead of fetched (a plaintext pull only when that file is a version the target
  holds, unless ``--reuse-any``: see ``_may_reuse``); chunks of files already written by this pull are reused too;
- the remaining ids are fetched with ``get`` requests (at most SEGMENT_IDS per request, several files in
  flight at once), each chunk is decompressed with a bound and checked against its id before it is written;
  small files with nothing local to reuse go in batches instead: one ``get_files`` for up to BATCH_FILES of
  them, written in one worker hop (from a server that lists the feature);
- the new version is written to ``.<name>.neotmp.<random>`` in the same directory, given its mode and mtime,
  fsynced with ``--fsync``, and renamed into place (in a directory that held nothing when the pull began it is
  written under its own name: see :class:`~neotwist.client.localfs.TempFile`). Into an empty destination the
  directories are made while the files are fetched and written.

Every write goes through :class:`~neotwist.client.localfs.SafeDest`, which re-checks server paths and never
follows a symlink. Disk and CPU work (chunking, verification, decompression, writing) runs in worker threads;
the reactor thread only sends requests and routes replies.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zstandard
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, ensureDeferred, succeed
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from neotwist import paths
from neotwist.chunking import Chunker
from neotwist.client import stash
from neotwist.client.encryption import KeySource, plain_errors
from neotwist.client.localfs import DirStack, Fix, SafeDest, TempFile, UnsafePath
from neotwist.client.metadata import Applier, Extra, exact_link
from neotwist.client.meter import Meter
from neotwist.client.mirror import DeleteRefused, check_target, delete_extraneous
from neotwist.client.pins import TargetPin
from neotwist.client.problems import Problem, from_text, problems_json
from neotwist.client.progress import Progress
from neotwist.client.reading import RangeReader
from neotwist.client.remotetarget import Access, RemoteTarget
from neotwist.client.restore import Restorer, plan
from neotwist.client.timespec import AtTime
from neotwist.client.workers import WorkerPool
from neotwist.codec import PLAIN, ChunkCodec, CodecError, decompressor
from neotwist.runtime import tune_malloc
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, RemoteError
from neotwist.wire.messages import (
    ChunkerParams,
    ChunkReply,
    Entry,
    FileIds,
    Get,
    GetFiles,
    Message,
)
from neotwist.wire.peer import Peer

ID = limits.ID_SIZE

SEGMENT_IDS = 256
"""Chunk ids fetched by one ``get`` (about 8 MiB at the default 32 KiB average chunk)."""
SEGMENT_BYTES = 16 * 1024 * 1024
"""...and fewer when the file's listed size says its chunks are bigger (a target cut with large chunks)."""
QUICK_CHECK_FILES = 256
"""Files checked against the destination per worker hop; each file to be written then holds a descriptor of its
directory until written, so this also bounds those descriptors."""
FETCH_BYTES = 96 * 1024 * 1024
"""Bytes of fetched chunks a pull holds at once (see _ByteBudget)."""
FILES_IN_FLIGHT = 64
"""Files being fetched and written at once: keeps many small-file requests in flight."""
SMALL_FILE = 1024 * 1024
"""Files up to this size that have no local version to reuse are fetched in batches (``get_files``, from a
server that lists the feature) and written in one worker hop per batch: per-file requests and thread hops
were most of the cost of restoring a tree of small files."""
BATCH_FILES = 256
"""Files in one batch (at most limits.MAX_GET_FILES)..."""
BATCH_BYTES = 4 * 1024 * 1024
"""...and their listed bytes (the ids stay within limits.MAX_IDS)."""
BATCHES_IN_FLIGHT = 3
"""Batches being fetched or written at once (each holds its bytes of the fetch budget)."""
VERSIONS_IN_FLIGHT = 16
"""``versions`` requests (see _PullRun._may_reuse) in flight at once, whatever the files and batches in flight:
each answer is held whole, and a hostile server decides how long it is."""
EXAMINE_FILES = 64
"""Small files with a local version that differs are examined in one worker hop and fetched in one batch, this
many at a time (fewer than BATCH_FILES: such files are spread over the whole tree, so a batch is sent while the
quick check goes on, not only at its end). One request and two thread hops per file were most of the cost of a
restore into a slightly stale copy."""


class PullError(Exception):
    """The pull failed; the message is one line fit for the terminal."""


class DamagedFile(PullError):
    """One file's stored data is damaged (the server said so, or a chunk failed its check here): that file is
    not written, the rest of the pull goes on, and the pull ends as incomplete."""


@dataclass
class PullOptions:
    """What neo-pull's command line decides about a pull."""

    checksum: bool = False  # do not trust size + mtime; compare content chunk by chunk
    fsync: bool = False  # --fsync: each file durable before its rename
    workers: int = 3
    snapshot: int | None = None  # None: the latest
    at: AtTime | None = None  # --at TIME: the newest snapshot taken at or before it (server time)
    progress: Progress | None = None
    warn: Callable[[str], None] | None = None
    keys: KeySource | None = None  # the key, for encrypted targets (asked for only when one is met)
    grant_root: str = ""  # --grant-root: the plaintext sub-path an encrypted target's grant gives
    pin: TargetPin | None = None  # this target's encryption pin (None: pins are not used)
    require_encryption: bool = False  # --require-encryption: refuse a plaintext target
    numeric_ids: bool = False  # --numeric-ids: owners by number, not by user and group name
    delete: bool = False  # --delete: remove local items the snapshot does not have
    force: bool = False  # --force: allow --delete in / or the home directory
    preserve_special_bits: bool = False  # --preserve-special-bits: restore setuid/setgid (always so for root)
    reuse_any: bool = False  # --reuse-any: reuse chunks of a local file that is no version the target holds

    @property
    def access(self) -> Access:
        return Access(self.keys, self.pin, self.require_encryption, self.grant_root)


@dataclass
class PullSummary:
    files_scanned: int = 0  # entries listed
    files: int = 0  # regular files among them
    files_changed: int = 0  # files written
    files_unchanged: int = 0  # left alone (quick check or identical content)
    files_skipped: int = 0  # could not be written safely (see warnings), or damaged on the server
    files_damaged: int = 0  # stored data damaged (not written; the rest of the pull went on)
    symlinks_written: int = 0
    specials_written: int = 0  # FIFOs and device nodes
    hardlinks_made: int = 0
    owners_not_applied: int = 0  # items whose stored owner was not applied (not running as root)
    deleted: int = 0  # local items removed by --delete
    bytes_written: int = 0
    bytes_reused: int = 0  # bytes copied from local files instead of fetched
    chunks_fetched: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    snapshot: int | None = None
    elapsed_s: float = 0.0
    encrypted: bool = False
    warnings: list[Problem] = field(default_factory=list)  # what was not restored, and why

    def as_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out.update(problems_json(self.warnings))
        out["elapsed_s"] = round(self.elapsed_s, 3)
        return out


@dataclass(slots=True)
class _File:
    """One file of the snapshot being brought up to date."""

    path: str
    mode: int
    mtime_ns: int
    size: int
    ids: bytes
    remote: str = ""  # the path the server knows it by (encrypted targets), when not ``path``
    old_fd: int = -1  # the existing local version, read for reusable chunks
    old_stat: tuple[int, int, int, int] | None = None  # the old version as cut: unchanged until the rename
    dir_fd: int = -1  # the file's directory, walked once for its batch (owned here until the temp file takes it)
    local: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # id -> (offset, length) in old_fd
    temp: TempFile | None = None
    offset: int = 0  # bytes written so far
    written: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # id -> (offset, length) in temp
    holes: bool = False  # zero chunks were left as holes
    extra: Extra | None = None  # owner, xattrs (applied when written, or when found current)
    fix: Fix | None = None  # applies ``extra`` to the new version's descriptor
    fetched: int = 0  # raw bytes the server sent for it so far (never more than ``size``)


# --- worker-thread side ----------------------------------------------------------------------------------


def _examine(dest: SafeDest, f: _File, params: ChunkerParams, checksum: bool, id_key: bytes | None = None) -> bool:
    """True when the local file is already this version; else index its chunks that the new version needs.

    Without ``checksum`` the quick check (regular file, same size and mtime) decides. With it, the local file
    is cut and counts as current only if its chunk ids are exactly the new version's.
    """
    name = f.path.rsplit("/", 1)[-1]
    st = dest.lstat_at(f.dir_fd, name) if f.dir_fd >= 0 else dest.lstat(f.path)
    if st is None or not stat.S_ISREG(st.st_mode):
        return False
    if not checksum and st.st_size == f.size and st.st_mtime_ns == f.mtime_ns:
        return True
    if st.st_size == 0 or f.size == 0:
        return checksum and st.st_size == f.size == 0 and _touch(dest, f)
    fd = dest.open_read_at(f.dir_fd, name) if f.dir_fd >= 0 else dest.open_read(f.path)
    if fd is None:
        return False
    f.old_fd = fd
    st = os.fstat(fd)
    f.old_stat = _identity(st)
    if st.st_size == 0:
        return False
    wanted = {f.ids[i : i + ID] for i in range(0, len(f.ids), ID)}
    chunker = Chunker(params, id_key)
    order: list[bytes] = []
    local = f.local
    # read, never mapped: a local file truncated meanwhile must not SIGBUS the pull (it fails _finish's check)
    for piece, chunk in chunker.cut_stream(RangeReader(fd, 0, st.st_size)):
        del chunk
        cid = piece.id
        order.append(cid)
        if cid in wanted and cid not in local:
            local[cid] = (piece.offset, piece.length)
    if checksum and b"".join(order) == f.ids:
        return _touch(dest, f)
    return False


def _examine_files(
    dest: SafeDest, files: list[_File], params: ChunkerParams, checksum: bool, id_key: bytes | None
) -> list[bool | str]:
    """:func:`_examine` for each of ``files`` in one worker hop: True (current: nothing held), False (to be
    written: its old version and directory stay open), or an error text (nothing held)."""
    out: list[bool | str] = []
    for f in files:
        try:
            same = _examine(dest, f, params, checksum, id_key)
        except (UnsafePath, OSError) as e:
            _close_old(f)
            out.append(f"{f.path}: {e}")
            continue
        if same:
            _close_old(f)
        out.append(same)
    return out


def _touch(dest: SafeDest, f: _File) -> bool:
    """Give an up-to-date file the listed mode and mtime (so the next quick check skips it)."""
    if f.old_fd >= 0:
        fd: int | None = f.old_fd
    elif f.dir_fd >= 0:
        fd = dest.open_read_at(f.dir_fd, f.path.rsplit("/", 1)[-1])
    else:
        fd = dest.open_read(f.path)
    if fd is None:
        return False
    try:
        os.fchmod(fd, f.mode & 0o7777)
        os.utime(fd, ns=(f.mtime_ns, f.mtime_ns))
    finally:
        if fd != f.old_fd:
            os.close(fd)
    return True


_Step = tuple[bytes, str, Any]
"""How to get one chunk of a segment: (id, where, how): where is 'old' (offset, length in the old local file),
'self' (offset, length in the temp file), 'other' (path, offset, length of a file this pull wrote), or 'net'
(a ChunkReply)."""


def _decode(content: ChunkCodec, reply: ChunkReply, path: str, dctx: zstandard.ZstdDecompressor) -> bytes:
    """The plaintext of a fetched chunk, checked against its id; DamagedFile naming ``path`` otherwise."""
    try:
        return content.decode(reply.id, reply.codec, reply.size, reply.data, dctx)
    except CodecError as e:
        raise DamagedFile(f"{path}: {e.message}; not restored") from None


def _new_temp(dest: SafeDest, f: _File, dirs: DirStack | None = None) -> TempFile:
    """The temporary file for ``f``, in the directory descriptor its batch walked (which it takes over), or
    one ``dirs`` holds (which it borrows)."""
    if f.dir_fd >= 0:
        dir_fd, f.dir_fd = f.dir_fd, -1
        return dest.new_file_at(dir_fd, f.path, f.mode, f.fix)
    if dirs is not None:
        parent, _, name = f.path.rpartition("/")
        if not name:
            raise UnsafePath("the destination root itself is not a file")
        return dest.temp_file(f.path, dirs.open(parent, create=True), name, False, f.mode, f.fix)
    return dest.new_file(f.path, f.mode, f.fix)


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What changes whenever a file's content can have changed: size, mtime, ctime, inode."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _copy_range(src: int, dst: int, length: int, src_offset: int, dst_offset: int) -> None:
    """Copy bytes between files in the kernel (no trip through Python); read and write where it cannot."""
    done = 0
    try:
        while done < length:
            n = os.copy_file_range(src, dst, length - done, src_offset + done, dst_offset + done)
            if n == 0:
                raise PullError("a local file shrank while it was being reused; pull again")
            done += n
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    while done < length:
        block = os.pread(src, min(length - done, 8 << 20), src_offset + done)
        if not block:
            raise PullError("a local file shrank while it was being reused; pull again")
        _write_all(dst, [block], dst_offset + done)
        done += len(block)


IOV_MAX = max(16, min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024))
"""Buffers one ``pwritev`` may take (the kernel refuses more with EINVAL)."""
WRITE_BYTES = 16 * 1024 * 1024
"""Bytes buffered for one write at most, however often a chunk repeats."""


def _write_all(fd: int, parts: list[bytes], offset: int) -> None:
    """``pwritev`` every byte of ``parts`` at ``offset`` (no joined copy; short writes continue), IOV_MAX
    buffers at a time."""
    for start in range(0, len(parts), IOV_MAX):
        group = parts[start : start + IOV_MAX]
        total = sum(len(p) for p in group)
        done = os.pwritev(fd, group, offset)
        if done < total:
            rest = memoryview(b"".join(group))[done:]
            while rest:
                n = os.pwrite(fd, rest, offset + done)
                rest = rest[n:]
                done += n
        offset += total


def _is_zero(raw: bytes) -> bool:
    """All zero bytes? (Such a chunk is left as a hole: restored sparse, like ``rsync -S``.)"""
    return raw[:1] == b"\0" and raw[-1:] == b"\0" and raw.count(0) == len(raw)


def _write_segment(
    dest: SafeDest, f: _File, steps: list[_Step], content: ChunkCodec = PLAIN, dirs: DirStack | None = None
) -> int:
    """Append a run of chunks to ``f``'s temporary file; returns the bytes written.

    Fetched chunks are decompressed with a bound and checked against their ids. Chunks of the old local
    version are copied in the kernel, a contiguous run at a time; they were cut and hashed moments ago, and
    :func:`_finish` refuses the file if the old version changed since (size, mtime, ctime, inode). Chunks
    taken from files this pull wrote are re-read and re-hashed.
    """
    if f.temp is None:
        f.temp = _new_temp(dest, f, dirs)
    fd = f.temp.fd
    dctx = decompressor()  # one per worker thread: creating one per segment cost an allocation each time
    start = f.offset
    out = start  # where the next byte goes
    buf: list[bytes] = []  # bytes waiting to be written at out - buffered
    buffered = 0
    run: list[int] = []  # a pending kernel copy from the old version: [src offset, length, dst offset]
    here: dict[bytes, bytes] = {}  # chunks of this run, not yet on disk

    def flush_buf() -> None:
        nonlocal buf, buffered
        if buf:
            _write_all(fd, buf, out - buffered)
            buf, buffered = [], 0

    def flush_run() -> None:
        if run:
            _copy_range(f.old_fd, fd, run[1], run[0], run[2])
            run.clear()

    for cid, where, how in steps:
        if where == "old":
            offset, length = how
            flush_buf()
            if run and run[0] + run[1] == offset:
                run[1] += length
            else:
                flush_run()
                run[:] = [offset, length, out]
            if cid not in f.written:
                f.written[cid] = (out, length)
            out += length
            continue
        flush_run()
        if where == "net":
            raw = _decode(content, how, f.path, dctx)
            here[cid] = raw
        elif where == "self":
            held = here.get(cid)
            if held is not None:
                raw = held
            else:
                flush_buf()
                offset, length = f.written[cid]
                raw = os.pread(fd, length, offset)
        else:
            other_path, offset, length = how
            ofd = dest.open_read(other_path)
            if ofd is None:
                raise PullError(f"{other_path} vanished while the pull was reusing it; pull again")
            try:
                raw = os.pread(ofd, length, offset)
            finally:
                os.close(ofd)
        if where != "net" and not content.matches(raw, cid):
            raise PullError(f"a local file changed while {f.path} was being written; pull again")
        if cid not in f.written:
            f.written[cid] = (out, len(raw))
        if _is_zero(raw):
            flush_buf()  # a hole: nothing written (the file is extended to its size at the end)
            out += len(raw)
            f.holes = True
            continue
        buf.append(raw)
        buffered += len(raw)
        out += len(raw)
        if buffered >= WRITE_BYTES or len(buf) >= IOV_MAX:
            flush_buf()
    flush_buf()
    flush_run()
    f.offset = out
    return out - start


def _finish(dest: SafeDest, f: _File, fsync: bool, dirs: DirStack | None = None) -> None:
    if f.temp is None:
        f.temp = _new_temp(dest, f, dirs)
    if f.offset != f.size:
        f.temp.abort()
        raise PullError(f"{f.path}: the chunks add up to {f.offset} bytes, the listing says {f.size}")
    if f.holes:
        os.ftruncate(f.temp.fd, f.size)  # a trailing hole (zero chunks are not written)
    if f.old_stat is not None and f.old_fd >= 0 and _identity(os.fstat(f.old_fd)) != f.old_stat:
        f.temp.abort()
        raise PullError(f"{f.path} changed locally while the pull was reusing it; pull again")
    f.temp.commit(f.mode, f.mtime_ns, fsync, f.fix)
    _close_old(f)


def _write_last(
    dest: SafeDest, f: _File, steps: list[_Step], fsync: bool, content: ChunkCodec = PLAIN, dirs: DirStack | None = None
) -> None:
    """The last run of a file and its finish in one worker hop (most files are one run)."""
    if steps:
        _write_segment(dest, f, steps, content, dirs)
    _finish(dest, f, fsync, dirs)


def _write_files(
    dest: SafeDest, files: list[_File], plans: list[list[_Step]], fsync: bool, content: ChunkCodec
) -> list[Exception | None]:
    """Write a batch of small files in one worker hop (sorted by path: their directories are opened once).
    Each file's failure is its own: returned in its place (None for a file written), its temporary file gone."""
    out: list[Exception | None] = []
    with DirStack(dest) as dirs:
        for f, steps in zip(files, plans, strict=True):
            try:
                _write_last(dest, f, steps, fsync, content, dirs)
            except (UnsafePath, OSError, PullError) as e:
                _abort(f)
                out.append(e)
            else:
                out.append(None)
    return out


def _batchable(f: _File | Entry) -> bool:
    """Is ``f`` fetched in a batch (see SMALL_FILE and EXAMINE_FILES)?"""
    return f.size <= SMALL_FILE and len(f.chunks if isinstance(f, Entry) else f.ids) <= limits.MAX_IDS * ID


_SAME, _ABSENT, _EXAMINE = 0, 1, 2


def _quick_check(
    dest: SafeDest,
    files: list[Entry],
    extras: dict[str, Extra],
    checksum: bool,
    applier: Applier | None = None,
    batching: bool = False,
    made: frozenset[str] = frozenset(),
) -> tuple[list[int | str], list[int]]:
    """For each file: _SAME (up to date by size and mtime), _ABSENT (nothing local to reuse), _EXAMINE, or an
    error text; and, in order, a descriptor of its directory for each file that is _ABSENT or _EXAMINE (-1 for
    none). One worker hop for many files, so an unchanged tree costs no per-file thread round trip.

    Each directory is opened once for the whole batch (files come sorted by path, so a directory's files are
    adjacent, and a directory shares its parents' descriptors with the previous one); every file that will be
    written on its own gets its own duplicate of that descriptor (one fetched in a batch, with ``batching``,
    does not: the batch's worker opens its directories again, once per batch).
    """
    out: list[int | str] = []
    fds: list[int] = []
    current: str | None = None
    dir_fd: int | None = None  # None: the directory is missing (its files are absent)
    dir_error: str | None = None
    with DirStack(dest) as dirs:
        for f in files:
            parent, _, name = f.path.rpartition("/")
            if parent in made and batching and _batchable(f):
                out.append(_ABSENT)  # its directory was made by this pull: nothing to look at or reuse
                fds.append(-1)
                continue
            if parent != current:
                current, dir_fd, dir_error = parent, None, None
                try:
                    dir_fd = dirs.open(parent, create=False)
                except FileNotFoundError:
                    pass
                except (UnsafePath, OSError) as e:
                    dir_error = str(e)
            if dir_error is not None:
                out.append(f"{f.path}: {dir_error}")
                continue
            if dir_fd is None:
                out.append(_ABSENT)
                fds.append(-1)
                continue
            try:
                st = dest.lstat_at(dir_fd, name)
            except OSError as e:
                out.append(f"{f.path}: {e}")
                continue
            if st is not None and stat.S_ISREG(st.st_mode) and not checksum and (
                st.st_size == f.size and st.st_mtime_ns == f.mtime_ns
            ):
                extra = extras.get(f.path)
                if extra is not None and applier is not None and applier.wants_update(st, extra):
                    problems = applier.apply_at(dir_fd, name, extra)  # the content is current, owner or xattrs not
                    if problems:
                        out.append(f"{f.path}: {'; '.join(problems)}")
                        continue
                    st = dest.lstat_at(dir_fd, name) or st
                if stat.S_IMODE(st.st_mode) != f.mode:
                    try:
                        dest.set_mode_at(dir_fd, name, f.mode)  # the content is current, the mode is not
                    except OSError as e:
                        out.append(f"{f.path}: cannot set its mode: {e.strerror}")
                        continue
                out.append(_SAME)
                continue
            absent = st is None or not stat.S_ISREG(st.st_mode)
            out.append(_ABSENT if absent else _EXAMINE)
            fds.append(-1 if absent and batching and _batchable(f) else os.dup(dir_fd))
    return out, fds


class _Gathering:
    """Small files gathered for one request (a batch's ``get_files``): at most ``most`` files, BATCH_BYTES of
    them, limits.MAX_IDS chunk ids."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.files: list[_File] = []
        self.ids = self.size = 0

    def add(self, f: _File) -> list[_File] | None:
        """Gather ``f``; when it would not fit with the files gathered before it, those are returned (to be
        sent) and ``f`` starts the next gathering."""
        n = len(f.ids) // ID
        full = None
        if self.files and (
            len(self.files) >= self.most or self.size + f.size > BATCH_BYTES or self.ids + n > limits.MAX_IDS
        ):
            full = self.take_all()
        self.files.append(f)
        self.ids += n
        self.size += f.size
        return full

    def take_all(self) -> list[_File]:
        """The files gathered, and an empty gathering."""
        files, self.files, self.ids, self.size = self.files, [], 0, 0
        return files


def _close_old(f: _File) -> None:
    """Release what ``f`` holds of the destination (its old version, its directory descriptor)."""
    if f.old_fd >= 0:
        os.close(f.old_fd)
        f.old_fd = -1
    if f.dir_fd >= 0:
        os.close(f.dir_fd)
        f.dir_fd = -1


def _close_all(files: list[_File]) -> None:
    """:func:`_close_old` of each of ``files``."""
    for f in files:
        _close_old(f)


def _abort(f: _File) -> None:
    if f.temp is not None:
        f.temp.abort()
    _close_old(f)


def _make_dirs(dest: SafeDest, dirs: list[Entry]) -> tuple[list[str], set[str]]:
    """Create the snapshot's directories; returns the errors and the directories made here (empty: nothing in
    them needs looking at)."""
    errors = []
    made: set[str] = set()
    with DirStack(dest, new=dest.was_empty) as stack:  # sorted: each opens only what differs from the one before
        for e in dirs:
            if e.path:
                try:
                    if dest.make_dir(e.path, stack):
                        made.add(e.path)
                except (UnsafePath, OSError) as err:
                    errors.append(f"{e.path}: {err}")
    return errors, made


def _make_links(dest: SafeDest, links: list[Entry], extras: dict[str, Extra]) -> tuple[int, list[str]]:
    made = 0
    errors = []
    for e in links:
        try:
            made += dest.make_symlink(e.path, exact_link(e.link, extras.get(e.path)), e.mtime_ns)
        except (UnsafePath, OSError) as err:
            errors.append(f"{e.path}: {err}")
    return made, errors


def _dir_meta(
    dest: SafeDest, dirs: list[Entry], restorer: Restorer | None = None, made: frozenset[str] = frozenset()
) -> list[str]:
    errors = []
    extras = restorer.plan.extras if restorer is not None else {}
    with DirStack(dest) as stack:
        for e in sorted(dirs, key=lambda e: e.path, reverse=True):
            try:
                fresh = e.path in made  # made by this pull: no xattrs to remove
                fix = restorer.fix(e.path or ".", extras.get(e.path), fresh=fresh) if restorer is not None else None
                dest.set_dir_meta(e.path, e.mode, e.mtime_ns, fix, stack)
            except (UnsafePath, OSError) as err:
                errors.append(f"{e.path or '.'}: {err}")
    return errors


# --- reactor side ----------------------------------------------------------------------------------------


class _PullRun:
    def __init__(
        self,
        reactor: Any,
        pool: ThreadPool,
        peer: Peer,
        handle: int,
        snapshot: int,
        params: ChunkerParams,
        dest: SafeDest,
        options: PullOptions,
        summary: PullSummary,
        single_file: bool = False,
        content: ChunkCodec = PLAIN,
        remote: dict[str, str] | None = None,
    ) -> None:
        self.reactor = reactor
        self.content = content
        self.remote = remote or {}
        self.pool = pool
        self.peer = peer
        self.handle = handle
        self.snapshot = snapshot
        self.params = params
        self.dest = dest
        self.options = options
        self.summary = summary
        self.reusable: dict[bytes, tuple[str, int, int]] = {}  # id -> (path, offset, length) written here
        self.budget = _ByteBudget(FETCH_BYTES)
        self.errors: list[str] = []
        self.fatal: list[BaseException] = []  # what ends the pull (the first is raised)
        self.made_dirs: frozenset[str] = frozenset()  # directories this pull created
        self.damaged: list[str] = []  # files whose stored data is damaged: not written, the pull went on
        self.single_file = single_file  # the handle's root is the one file: it is "" on the server
        self.applier = Applier(options.numeric_ids)
        self.asking = DeferredSemaphore(VERSIONS_IN_FLIGHT)

    def _thread(self, f: Callable[..., Any], *args: Any) -> Any:
        return deferToThreadPool(self.reactor, self.pool, f, *args)

    def _error(self, text: str) -> None:
        self.errors.append(text)
        if self.options.warn is not None:
            self.options.warn(text)

    async def run(self, entries: list[Entry]) -> None:
        dirs = [e for e in entries if e.kind == "d"]
        links = [e for e in entries if e.kind == "l"]
        laid = await self._thread(plan, entries)  # specials and later hard-link names apart from files to fetch
        files = laid.files
        restorer = self.restorer = Restorer(self.dest, self.applier, laid)
        extras = laid.extras
        for err in laid.problems:
            self._error(err)
        dirs.sort(key=lambda e: e.path)
        # Into a destination that was empty, no file needs looking at: the directories are made by one worker
        # while the files are fetched and written (a writer makes the ones it needs first itself). Making them
        # all first held every fetch back for about a fifth of a full restore.
        fresh = self.dest.was_empty
        making: Deferred[tuple[list[str], set[str]]] | None = None
        if fresh:
            making = self._thread(_make_dirs, self.dest, dirs)
        else:
            errors, made = await self._thread(_make_dirs, self.dest, dirs)
            for err in errors:
                self._error(err)
            self.made_dirs = frozenset(made)
        slots = DeferredSemaphore(FILES_IN_FLIGHT)
        batches = DeferredSemaphore(BATCHES_IN_FLIGHT)
        running: list[Deferred[None]] = []
        fatal = self.fatal
        batching = limits.FEATURE_GET_FILES in self.peer.features and not self.single_file
        batch = _Gathering(BATCH_FILES)  # small files with nothing local to reuse

        def release(result: object) -> object:
            slots.release()
            return result

        def release_batch(result: object) -> object:
            batches.release()
            return result

        def failed(failure: Any) -> None:
            self._failed(failure.value)

        async def send_batch(files: list[_File], examine: bool = False) -> None:
            await batches.acquire()
            d = ensureDeferred(self._examined(files) if examine else self._batch(files))
            d.addBoth(release_batch)
            d.addErrback(failed)
            running.append(d)

        progress = self.options.progress
        examining = _Gathering(EXAMINE_FILES)  # small files whose local version differs
        step = QUICK_CHECK_FILES
        for start in range(0, len(files), step):
            if fatal:
                break
            group = files[start : start + step]  # a _File is made only for each file that is to be written
            states: list[int | str]
            if fresh:
                states, fds = [_ABSENT] * len(group), [-1] * len(group)
            else:
                states, fds = await self._thread(
                    _quick_check, self.dest, group, extras, self.options.checksum, self.applier, batching,
                    self.made_dirs,
                )  # fmt: skip
            held = iter(fds)
            for e, state in zip(group, states, strict=True):
                if fatal:
                    for fd in held:  # the directory descriptors of the files not taken
                        if fd >= 0:
                            os.close(fd)
                    _close_all(examining.take_all())
                    break
                if state == _SAME:
                    self.summary.files_unchanged += 1
                    if progress is not None:
                        progress.files()
                        progress.bytes(e.size)  # checked and current: done as much as a written one
                    continue
                if isinstance(state, str):
                    self.summary.files_skipped += 1
                    self._error(state)
                    continue
                extra = extras.get(e.path)
                f = _File(
                    e.path, e.mode, e.mtime_ns, e.size, e.chunks, self.remote.get(e.path, ""),
                    dir_fd=next(held), extra=extra, fix=restorer.fix(e.path, extra),
                )  # fmt: skip
                if batching and state == _ABSENT and _batchable(f):
                    full = batch.add(f)
                    if full:
                        await send_batch(full)
                    continue
                if batching and state == _EXAMINE and _batchable(f):
                    full = examining.add(f)
                    if full:
                        await send_batch(full, examine=True)
                    continue
                await slots.acquire()
                d = ensureDeferred(self._file(f, state == _EXAMINE))
                d.addBoth(release)
                d.addErrback(failed)
                running.append(d)
                if len(running) > 4 * FILES_IN_FLIGHT:
                    running[:] = [r for r in running if not r.called]
        rest, left = batch.take_all(), examining.take_all()
        if rest and not fatal:
            await send_batch(rest)
        if left and not fatal:
            await send_batch(left, examine=True)
        elif left:
            _close_all(left)
        await DeferredList(running)
        if making is not None:
            errors, _ = await making
            for err in errors:
                self._error(err)
            self.made_dirs = frozenset(self.dest.made)  # by _make_dirs and by the writers
        if fatal:
            raise fatal[0]
        made, errs = await self._thread(_make_links, self.dest, links, extras)
        self.summary.symlinks_written += made
        for err in errs:
            self._error(err)
        await self._thread(restorer.symlinks, links)
        self.summary.specials_written += await self._thread(restorer.specials, laid.specials)
        self.summary.hardlinks_made += await self._thread(restorer.hardlinks, laid.links)
        for err in await self._thread(_dir_meta, self.dest, dirs, restorer, self.made_dirs):
            self._error(err)
        for err in restorer.problems:
            self._error(err)
        kept = self.summary.owners_not_applied = self.applier.owners_kept
        if kept and self.options.warn is not None:
            self.options.warn(
                f"the owners of {kept} item(s) are kept in the snapshot but not applied: only root can give files"
                " away (pull as root to restore them)"
            )

    async def _file(self, f: _File, examine: bool) -> None:
        summary = self.summary
        progress = self.options.progress
        try:
            same = examine and await self._thread(
                _examine, self.dest, f, self.params, self.options.checksum, self.content.id_key
            )
        except (UnsafePath, OSError) as e:
            _close_old(f)
            summary.files_skipped += 1
            self._error(f"{f.path}: {e}")
            return
        if same:
            _close_old(f)
            summary.files_unchanged += 1
            if progress is not None:
                progress.files()
                progress.bytes(f.size)
            return
        if f.local and not await self._may_reuse(f):
            f.local.clear()
        try:
            await self._fetch_and_write(f)
        except BaseException:
            await self._thread(_abort, f)
            raise
        self._written(f)

    def _written(self, f: _File) -> None:
        """``f`` is in place: count it, and offer its chunks to the files written after it."""
        summary = self.summary
        summary.files_changed += 1
        summary.bytes_written += f.size
        progress = self.options.progress
        if progress is not None:
            progress.files()
            progress.bytes(f.size)
        reusable = self.reusable
        for cid, (offset, length) in f.written.items():
            if cid not in reusable:
                reusable[cid] = (f.path, offset, length)

    def _failed(self, error: BaseException) -> None:
        """One file could not be written: a local problem or damaged data is named and the pull goes on;
        anything else ends it."""
        if isinstance(error, (UnsafePath, OSError)):
            self._error(str(error))
        elif isinstance(error, DamagedFile) or (isinstance(error, RemoteError) and error.code == ErrorCode.DAMAGED):
            self.summary.files_skipped += 1
            self.damaged.append(error.message if isinstance(error, RemoteError) else str(error))
        else:
            self.fatal.append(error)

    async def _examined(self, files: list[_File]) -> None:
        """Small files whose local version differs: examined in one worker hop (those found current are
        counted and left alone), then the rest fetched and written as one batch, reusing their local chunks
        where :meth:`_may_reuse` allows."""
        summary = self.summary
        progress = self.options.progress
        try:
            results = await self._thread(
                _examine_files, self.dest, files, self.params, self.options.checksum, self.content.id_key
            )
        except BaseException:
            await self._thread(_close_all, files)
            raise
        todo: list[_File] = []
        for f, result in zip(files, results, strict=True):
            if isinstance(result, str):
                summary.files_skipped += 1
                self._error(result)
            elif result:
                summary.files_unchanged += 1
                if progress is not None:
                    progress.files()
                    progress.bytes(f.size)
            else:
                todo.append(f)
        asking = [f for f in todo if f.local]
        if asking:
            answers = await DeferredList([ensureDeferred(self._may_reuse(f)) for f in asking], consumeErrors=True)
            for f, (_, value) in zip(asking, answers, strict=True):
                if isinstance(value, Failure):  # the connection went: nothing more is fetched
                    await self._thread(_close_all, todo)
                    value.raiseException()
                if not value:
                    f.local.clear()
        for f in todo:
            if not f.local and f.old_fd >= 0:  # nothing of the old version is used: it need not stay as it was
                os.close(f.old_fd)
                f.old_fd, f.old_stat = -1, None
        if todo:
            await self._batch(todo)

    async def _batch(self, files: list[_File]) -> None:
        """Fetch a batch of small files with one ``get_files`` and write them in one worker hop. A chunk several
        of them hold is fetched once; chunks a file's local version holds (``local``, see :meth:`_examined`) are
        copied from it, and chunks of files this pull wrote before from those. If the server reports damage,
        each file is fetched on its own again, so that only the damaged ones are left out (and named)."""
        reusable = self.reusable
        plans: list[list[_Step]] = []
        parts: list[tuple[_File, list[bytes]]] = []
        asked: set[bytes] = set()
        reused = 0
        for f in files:
            steps: list[_Step] = []
            fetch: list[bytes] = []
            mine: set[bytes] = set()
            ids = f.ids
            local = f.local
            for i in range(0, len(ids), ID):
                cid = ids[i : i + ID]
                if cid in mine:
                    steps.append((cid, "self", None))
                elif cid in local:
                    steps.append((cid, "old", local[cid]))
                    reused += local[cid][1]
                elif cid in reusable:
                    steps.append((cid, "other", reusable[cid]))
                    reused += reusable[cid][2]
                else:
                    mine.add(cid)
                    steps.append((cid, "net", None))
                    if cid not in asked:
                        asked.add(cid)
                        fetch.append(cid)
            plans.append(steps)
            parts.append((f, fetch))
        try:
            replies, held = await self._fetch(parts, batch=True)
        except _BatchDamaged:
            for f in files:  # one at a time: damage is rare, and names its file this way
                f.fetched = 0  # what the batch delivered of it before the damage is not kept
                try:
                    await self._file(f, False)
                except Exception as e:
                    self._failed(e)
                    if self.fatal:
                        break
            _close_all(files)
            return
        except BaseException:
            _close_all(files)
            raise
        by_id = {r.id: r for r in replies}
        resolved = [
            [(cid, where, by_id[cid] if where == "net" else how) for cid, where, how in steps] for steps in plans
        ]
        del replies, by_id, plans
        try:
            results = await self._thread(_write_files, self.dest, files, resolved, self.options.fsync, self.content)
        finally:
            del resolved
            self.budget.release(held)
        self.summary.bytes_reused += reused
        self.summary.chunks_fetched += len(asked)
        for f, error in zip(files, results, strict=True):
            if error is None:
                self._written(f)
            else:
                self._failed(error)

    async def _may_reuse(self, f: _File) -> bool:
        """May chunks of the local file at ``f``'s path stand in for fetched ones? Fetching all but those
        tells the server which of the ids it listed the local file holds: a server listing candidate ids would
        learn about a file it never had. So a plaintext pull reuses them only when the local file is a version
        of that path the target holds (same size and mtime), whose content the server knows anyway; any local
        file with ``--reuse-any``. (Encrypted targets: ids are keyed with the client's key.)"""
        if self.options.reuse_any or self.content.sealer is not None or f.old_stat is None:
            return True
        size, mtime_ns = f.old_stat[0], f.old_stat[1]
        remote = "" if self.single_file else (f.remote or paths.to_wire(f.path))
        await self.asking.acquire()
        try:
            held = await stash.versions(self.peer, self.handle, remote)
        except (RemoteError, stash.StashError):
            return False
        finally:
            self.asking.release()
        return any(v.kind == "f" and v.size == size and v.mtime_ns == mtime_ns for v in held)

    async def _fetch_and_write(self, f: _File) -> None:
        """Walk the file's ids in order, in segments of at most SEGMENT_IDS fetched ids; fetch a segment's
        missing chunks while the previous segment is being written."""
        ids = f.ids
        n = len(ids) // ID
        local, reusable = f.local, self.reusable
        summary = self.summary
        segments: list[tuple[list[tuple[bytes, str, Any]], list[bytes]]] = []
        plan: list[tuple[bytes, str, Any]] = []
        fetch: list[bytes] = []
        fetching: set[bytes] = set()
        planned_self: set[bytes] = set()  # fetched by an earlier segment: copied from the temp file
        per_segment = max(1, min(SEGMENT_IDS, SEGMENT_BYTES * n // max(1, f.size)))
        for i in range(n):
            cid = ids[i * ID : (i + 1) * ID]
            if cid in local:
                plan.append((cid, "old", local[cid]))
                summary.bytes_reused += local[cid][1]
            elif cid in reusable:
                plan.append((cid, "other", reusable[cid]))
                summary.bytes_reused += reusable[cid][2]
            elif cid in planned_self or cid in fetching:
                plan.append((cid, "self", None))
            else:
                fetching.add(cid)
                plan.append((cid, "net", None))
                fetch.append(cid)
                if len(fetch) >= per_segment:
                    segments.append((plan, fetch))
                    planned_self |= fetching
                    plan, fetch, fetching = [], [], set()
        if plan or not segments:
            segments.append((plan, fetch))
        pending: Deferred[tuple[list[ChunkReply], int]] | None = ensureDeferred(self._get(f, segments[0][1]))
        for k, (steps, wanted) in enumerate(segments):
            replies, held = await pending if pending is not None else ([], 0)
            pending = ensureDeferred(self._get(f, segments[k + 1][1])) if k + 1 < len(segments) else None
            got = iter(replies)
            resolved: list[_Step] = [
                (cid, where, next(got) if where == "net" else how) for cid, where, how in steps
            ]
            del replies, got
            try:
                if pending is None:
                    await self._thread(_write_last, self.dest, f, resolved, self.options.fsync, self.content)
                else:
                    await self._thread(_write_segment, self.dest, f, resolved, self.content)
            except BaseException:
                if pending is not None:
                    pending.addCallbacks(lambda r: self.budget.release(r[1]), lambda _f: None)
                raise
            finally:
                del resolved
                self.budget.release(held)
            summary.chunks_fetched += len(wanted)

    async def _get(self, f: _File, wanted: list[bytes]) -> tuple[list[ChunkReply], int]:
        """Fetch ``wanted`` of ``f``; returns the replies and the budget they hold (release it once written)."""
        return await self._fetch([(f, wanted)], batch=False)

    def _remote_path(self, f: _File) -> str:
        return "" if self.single_file else (f.remote or paths.to_wire(f.path))

    async def _fetch(self, parts: list[tuple[_File, list[bytes]]], batch: bool) -> tuple[list[ChunkReply], int]:
        """Fetch the ids of each file of ``parts``: one ``get`` (one file), or one ``get_files`` (``batch``);
        returns the replies in order and the budget they hold (release it once written). A batch the server
        reports damage in raises _BatchDamaged."""
        parts = [(f, wanted) for f, wanted in parts if wanted]
        if not parts:
            return [], 0
        budget = self.budget
        share = sum(f.size * len(wanted) // max(1, len(f.ids) // ID) + 1 for f, wanted in parts)
        held = budget.cap(share)  # the requested chunks' share of their files' listed bytes
        await budget.acquire(held)
        expected = [(cid, f) for f, wanted in parts for cid in wanted]
        got: list[ChunkReply] = []
        count = len(expected)
        plain = self.content.sealer is None
        arrived = 0

        def more(message: Message) -> bool:
            nonlocal held, arrived
            if not isinstance(message, ChunkReply):
                raise PullError(f"the server answered get with {type(message).__name__}")
            cid, f = expected[len(got)]
            if message.id != cid:
                raise PullError(f"{f.path}: the server sent chunks out of order")
            # Charged by the bytes that arrived, not by the listed size the share above trusted.
            received = len(message.data)
            if plain:
                f.fetched += message.size
                if f.fetched > f.size or received > _most_encoded(message.size):
                    raise DamagedFile(f"{f.path}: the server sent more data than the file's listed size; not restored")
            arrived += received
            if arrived > held:  # more than the share reserved: charge the rest, over the limit if need be
                budget.take(arrived - held)
                held = arrived
            if budget.free < -budget.limit:
                raise PullError(
                    f"the server sent far more chunk data than the listed sizes announce (over "
                    f"{2 * budget.limit >> 20} MiB held): a broken or hostile server; nothing more was fetched"
                )
            got.append(message)
            return len(got) < count

        request: Get | GetFiles
        if batch:
            files = [FileIds(path=self._remote_path(f), ids=wanted) for f, wanted in parts]
            request = GetFiles(rid=0, handle=self.handle, snapshot=self.snapshot, files=files)
        else:
            f, wanted = parts[0]
            request = Get(rid=0, handle=self.handle, snapshot=self.snapshot, path=self._remote_path(f), ids=wanted)
        try:
            await self.peer.request(request, more=more)
        except RemoteError as e:
            self.budget.release(held)
            if e.code == ErrorCode.DAMAGED:
                if batch:
                    raise _BatchDamaged() from None
                f = parts[0][0]
                # Named by the file's path in LOCAL, as every other damaged file is: the server names it by its
                # remote path (an encrypted one names nothing the owner can read; its reason is kept otherwise).
                if self.content.sealer is not None:
                    raise DamagedFile(f"{f.path}: its data is damaged on the server; not restored") from None
                raise DamagedFile(f"{f.path}: {e.reason}") from None
            raise
        except BaseException:
            self.budget.release(held)
            raise
        return got, held


class _BatchDamaged(Exception):
    """The server reported damage while answering a batch: its files are fetched one by one instead."""


def _most_encoded(size: int) -> int:
    """The most bytes a chunk of ``size`` raw bytes takes on the wire (zstd's bound on incompressible data)."""
    return size + (size >> 7) + 128


class _ByteBudget:
    """How many bytes of fetched chunks a pull holds at once (requested, received, or waiting to be written).

    Files are fetched many at a time to keep the server busy; without a bound in bytes, 64 big files with two
    8 MiB segments each in flight held about 1 GiB. Waiters are served in order.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.free = limit
        self._waiters: deque[tuple[int, Deferred[None]]] = deque()

    def cap(self, n: int) -> int:
        """What a request for ``n`` bytes really takes: never more than the whole budget."""
        return min(n, self.limit)

    def acquire(self, n: int) -> Deferred[None]:
        if not self._waiters and n <= self.free:
            self.free -= n
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append((n, d))
        return d

    def take(self, n: int) -> None:
        """Charge ``n`` bytes that already arrived, even past the limit (``free`` goes negative and waiters
        wait until enough is released)."""
        self.free -= n

    def release(self, n: int) -> None:
        self.free += n
        while self._waiters and self._waiters[0][0] <= self.free:
            m, d = self._waiters.popleft()
            self.free -= m
            d.callback(None)


def _single_file_destination(local: str, subpath: str) -> tuple[str, str]:
    """(directory, name) where a single pulled file goes: into ``local`` if it is a directory, else at ``local``."""
    if os.path.isdir(local):
        return local, subpath.rsplit("/", 1)[-1] or "file"
    parent, name = os.path.split(os.path.abspath(local))
    if not os.path.isdir(parent):
        raise PullError(f"cannot restore a file to {local}: {parent} is not a directory")
    return parent, name


async def pull(
    reactor: Any, peer: Peer, target: str, subpath: str, local_root: str, options: PullOptions
) -> PullSummary:
    """Bring ``local_root`` up to date with ``target`` at ``subpath`` (latest snapshot unless options say)."""
    tune_malloc()  # before the workers allocate (neo-pull has done it already; a script using the API has not)
    meter = Meter.start(peer)
    summary = PullSummary()
    remote_target = await RemoteTarget.open_read(peer, target, subpath, options.access)
    opened, crypt = remote_target.opened, remote_target.crypt
    summary.encrypted = crypt is not None
    with plain_errors(crypt):  # every request on the handle: errors name plaintext paths
        try:
            if not opened.exists or opened.latest is None:
                raise PullError(f"target {target} has no snapshot yet; push to it first")
            wanted = options.snapshot
            if options.at is not None:
                wanted = stash.resolve_snapshot(await stash.snapshots(peer, opened.handle), options.at, wanted)
            snapshot, entries = await stash.entries(peer, opened.handle, wanted)
        except stash.StashError as e:
            raise PullError(str(e)) from None
        remote: dict[str, str] | None = None
        refused: list[str] = []
        if crypt is not None:
            # names and metadata are decrypted and checked before anything is written (in a worker: big listings)
            decrypted = await deferToThread(crypt.decrypt_listing, entries)
            entries, remote, refused = decrypted.entries, decrypted.remote, decrypted.errors
        single_file = len(entries) == 1 and entries[0].path == "" and entries[0].kind != "d"
        if single_file:
            # REMOTE names one file (or symlink): it lands in LOCAL (an existing directory) under its own name, or
            # at LOCAL itself; nothing else in that directory is touched.
            local_root, name = _single_file_destination(local_root, subpath)
            one = entries[0]
            entries = [Entry(name, one.kind, one.mode, one.mtime_ns, one.size, one.chunks, one.link, one.meta)]
        if options.delete and not single_file:
            try:
                check_target(local_root, options.force)
            except DeleteRefused as e:
                raise PullError(str(e)) from None
        summary.snapshot = snapshot
        summary.files_scanned = len(entries)
        summary.files = sum(1 for e in entries if e.kind == "f")
        if options.progress is not None:
            options.progress.total_files(summary.files)
            options.progress.total_bytes(sum(e.size for e in entries if e.kind == "f"))
        try:
            dest = SafeDest(local_root, special_bits=options.preserve_special_bits)
        except OSError as e:
            raise PullError(f"cannot use {local_root} as the destination: {e.strerror}") from None
        _raise_open_files_limit()
        pool = WorkerPool(minthreads=0, maxthreads=max(2, options.workers), name="neo-pull")
        pool.start()
        content = ChunkCodec(crypt.sealer) if crypt is not None else PLAIN
        params = remote_target.chunker
        run = _PullRun(
            reactor, pool, peer, opened.handle, snapshot, params, dest, options, summary, single_file, content, remote
        )
        run.damaged.extend(refused)  # entries whose names or metadata failed authentication: not written
        try:
            await run.run(entries)
            if options.delete and not single_file:
                await _mirror(reactor, pool, run, dest, entries)
        finally:
            pool.stop()
            dest.close()
        summary.warnings.extend(from_text(text) for text in run.damaged + run.errors)
        summary.files_damaged = len(run.damaged)
        meter.fill(summary)
        if run.errors or run.damaged:
            summary.files_skipped = max(summary.files_skipped, len(run.errors))
            raise PullIncomplete(summary, run.errors, run.damaged)
        return summary


async def _mirror(reactor: Any, pool: ThreadPool, run: _PullRun, dest: SafeDest, entries: list[Entry]) -> None:
    """--delete: remove what the snapshot lacks, unless something failed to restore (its old copy stays)."""
    if run.errors or run.damaged:
        run._error(f"{dest.root}: nothing deleted (--delete): the pull is incomplete")
        return
    removed, problems = await deferToThreadPool(reactor, pool, delete_extraneous, dest, entries)
    run.summary.deleted = len(removed)
    for problem in problems:
        run._error(problem)
    if removed:  # a removal changed its directory's mtime, set before: set it again
        parents = {path.rpartition("/")[0] for path in removed}
        dirs = [e for e in entries if e.kind == "d" and e.path in parents]
        for err in await deferToThreadPool(reactor, pool, _dir_meta, dest, dirs, run.restorer):
            run._error(err)


def _raise_open_files_limit(wanted: int = 8192) -> None:
    """Lift the soft limit on open files toward the hard one: a pull holds directory, temp-file and old-version
    descriptors for hundreds of files at once, near the common default of 1024."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):
        pass  # not on this platform, or not allowed: the defaults still work for most trees


class PullIncomplete(PullError):
    """Some items could not be written safely; everything else was. Carries the summary."""

    def __init__(self, summary: PullSummary, errors: list[str], damaged: list[str] | None = None) -> None:
        damaged = damaged or []
        first = (damaged + errors)[0]
        total = len(errors) + len(damaged)
        more = f" (and {total - 1} more)" if total > 1 else ""
        super().__init__(f"{first}{more}")
        self.summary = summary
        self.errors = errors
        self.damaged = damaged
