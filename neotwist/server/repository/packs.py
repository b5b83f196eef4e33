"""Append-only pack files: where chunk bytes live on disk.

A target's chunks are appended to ``packs/<NN>/<NNNNNNNN>.pack`` (pack ``n`` in directory ``n // 1000``),
rotating to a new pack near :data:`PACK_SIZE`. Many chunks per file keep the file count and the per-file
overhead of the file system small, and appending never rewrites data an index row points to.

A pack starts with :data:`FILE_MAGIC`; each record is a fixed header followed by the chunk's stored bytes
exactly as the client sent them (raw, zstd or sealed)::

    magic   4s   b"NEOc"
    id      32s  the chunk id
    codec   u8   0 raw, 1 zstd, 2 sealed
    size    u32  raw (plaintext) size
    length  u32  stored length (bytes that follow the header)
    crc     u32  crc32 of the stored bytes
    hcrc    u32  crc32 of the 49 header bytes before it

All integers are big-endian. The header names its chunk, so a pack can be re-indexed or checked without the
index, and a read can prove it landed on the record the index promised (see :meth:`PackStore.read`).

Crash safety: the index (``packs`` table) records for each pack the offset up to which its records are
committed. Bytes past it are orphans of a crash (appended, never indexed): :meth:`PackStore.open_writer`
truncates the last pack back to its committed size before appending, and any pack numbered above the last
committed one holds no indexed record, so it is simply overwritten when its number comes up again.

Records are never modified in place. Garbage collection (:mod:`.gc`) reclaims space by copying a pack's live
records to the current pack, switching the index rows in one transaction, and only then deleting the old pack
file (:meth:`PackStore.remove`).
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from neotwist.atomicfile import fsync_dir
from neotwist.server.repository.errors import Damaged, RecordDamaged
from neotwist.server.repository.index import storage_error

FILE_MAGIC = b"NEOPACK1"
RECORD_MAGIC = b"NEOc"
_HEAD = struct.Struct(">4s32sBIII")
_HCRC = struct.Struct(">I")
HEADER_SIZE = _HEAD.size + _HCRC.size
"""Bytes of a record header (53)."""

PACK_SIZE = 64 * 1024 * 1024
"""A pack is closed once the next record would take it past this size."""

_MAX_OPEN_READERS = 64
"""Read file descriptors kept open per target (least recently used ones are closed)."""


def make_dirs(path: Path) -> None:
    """``mkdir -p`` that fsyncs each parent whose entries it changed, so a crash cannot lose the directory."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)
        fsync_dir(d.parent)


def encode_header(chunk_id: bytes, codec: int, size: int, data: bytes) -> bytes:
    head = _HEAD.pack(RECORD_MAGIC, chunk_id, codec, size, len(data), zlib.crc32(data))
    return head + _HCRC.pack(zlib.crc32(head))


def check_record(buf: bytes, length: int, chunk_id: bytes, where: str) -> tuple[int, int, bytes]:
    """(codec, size, stored bytes) of the record in ``buf`` (read where the index placed a record of ``length``
    stored bytes for ``chunk_id``), or RecordDamaged naming ``where`` and what is wrong."""
    if len(buf) != HEADER_SIZE + length:
        raise RecordDamaged(f"{where}: record is truncated")
    magic, rid, codec, size, stored, crc = _HEAD.unpack_from(buf)
    (hcrc,) = _HCRC.unpack_from(buf, _HEAD.size)
    if magic != RECORD_MAGIC or hcrc != zlib.crc32(memoryview(buf)[: _HEAD.size]):
        raise RecordDamaged(f"{where}: record header is damaged")
    if rid != chunk_id or stored != length:
        raise RecordDamaged(f"{where}: record belongs to another chunk")
    data = buf[HEADER_SIZE:]
    if zlib.crc32(data) != crc:
        raise RecordDamaged(f"{where}: stored bytes are damaged")
    return codec, size, data


class _Reader:
    """A pooled read descriptor and how many reads use it right now; a retired one (evicted from the pool or
    its pack deleted) is closed by its last user."""

    __slots__ = ("fd", "retired", "users")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.users = 0
        self.retired = False

    def retire(self) -> None:
        """Called with the pool's lock held."""
        self.retired = True
        if self.users == 0:
            os.close(self.fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


WRITEV_BUFFERS = 512
"""Buffers given to one ``writev`` (Linux takes up to 1024)."""


def _writev_all(fd: int, buffers: list[bytes]) -> None:
    """Write ``buffers`` one after the other, in as few ``writev`` calls as the kernel allows."""
    views = [memoryview(b) for b in buffers if b]
    i = 0
    while i < len(views):
        written = os.writev(fd, views[i : i + WRITEV_BUFFERS])
        while written and i < len(views):
            if written >= len(views[i]):
                written -= len(views[i])
                i += 1
            else:
                views[i] = views[i][written:]
                written = 0


class PackStore:
    """The pack files of one target: one writer (appends, rotation, fsync) and pooled readers.

    Appends and :meth:`sync` must be serialized by the caller (the target's store lock); :meth:`read` is
    thread-safe on its own and uses ``os.pread``, so readers never share a file position.
    """

    def __init__(self, directory: Path, *, pack_size: int = PACK_SIZE) -> None:
        self.directory = directory
        self.pack_size = pack_size  # a pack is rotated once the next record would take it past this
        self._fd: int | None = None
        self._number = 0
        self._offset = 0
        self._touched: dict[int, int] = {}
        self.epoch = 0
        self._readers: OrderedDict[int, _Reader] = OrderedDict()
        self._readers_lock = threading.Lock()

    def path(self, number: int) -> Path:
        return self.directory / f"{number // 1000:02d}" / f"{number:08d}.pack"

    # --- writing -----------------------------------------------------------------------------------------

    @property
    def writing(self) -> bool:
        return self._fd is not None

    def open_writer(self, last: int | None, committed: int) -> None:
        """Start appending, given the last pack the index knows of and its committed size.

        The last pack is reused (truncated back to ``committed``: everything after it is a crash orphan) while
        it has room; otherwise, or if the file is shorter than the index says (damage: never append after a
        hole), a new pack is started.
        """
        if self._fd is not None:
            return
        try:
            if last is not None and committed < self.pack_size and self._reopen(last, committed):
                return
            self._create((last or 0) + 1)
        except OSError as e:
            raise storage_error("open a pack for writing", e) from None

    def _reopen(self, last: int, committed: int) -> bool:
        """Append to pack ``last`` after truncating it to ``committed``; False if it is missing or short."""
        try:
            fd = os.open(self.path(last), os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            if os.fstat(fd).st_size >= committed >= len(FILE_MAGIC):
                os.ftruncate(fd, committed)
                os.fsync(fd)
                os.lseek(fd, committed, os.SEEK_SET)
                self._fd, self._number, self._offset = fd, last, committed
                self._forget_reader(last)
                return True
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return False

    def _create(self, number: int) -> None:
        """Create (or overwrite an orphan) pack ``number``, durable before any record goes in."""
        path = self.path(number)
        make_dirs(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, FILE_MAGIC)
            os.fsync(fd)
            fsync_dir(path.parent)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._number, self._offset = fd, number, len(FILE_MAGIC)
        self._touched[number] = self._offset
        self._forget_reader(number)

    @property
    def dirty(self) -> bool:
        """True when packs were created or appended to since the last :meth:`sync`."""
        return bool(self._touched)

    def position(self) -> tuple[int, int]:
        """(pack, offset) where the next record will go: records are ordered by it."""
        return self._number, self._offset

    def append(self, chunk_id: bytes, codec: int, size: int, data: bytes) -> tuple[int, int]:
        """Append one record; return its (pack, offset). See :meth:`append_many`."""
        return self.append_many([(chunk_id, codec, size, data)])[0]

    def append_many(self, records: Sequence[tuple[bytes, int, int, bytes]]) -> list[tuple[int, int]]:
        """Append records (id, codec, size, data) in order; return each one's (pack, offset). They go to the
        file in one ``writev`` per pack (and per WRITEV_BUFFERS / 2 records) rather than one ``write`` each: a
        put batch of small chunks cost the server twice the CPU. Raises DiskFull or StorageFailed if the disk
        refuses; the caller then discards (:meth:`discard`) what was appended since the last committed
        sync (some of these records may be in the pack, none is indexed)."""
        if self._fd is None:
            raise RuntimeError("pack writer is not open")
        places: list[tuple[int, int]] = []
        buffers: list[bytes] = []
        end = self._offset
        try:
            for chunk_id, codec, size, data in records:
                record_size = HEADER_SIZE + len(data)
                full = end + record_size > self.pack_size and end > len(FILE_MAGIC)
                if full or len(buffers) >= WRITEV_BUFFERS:
                    self._write_out(buffers, end)
                    buffers = []
                    if full:
                        self._rotate()
                        end = self._offset
                places.append((self._number, end))
                buffers += (encode_header(chunk_id, codec, size, data), data)
                end += record_size
            self._write_out(buffers, end)
        except OSError as e:
            raise storage_error("write chunk data", e) from None
        return places

    def _write_out(self, buffers: list[bytes], end: int) -> None:
        """Write ``buffers`` at the end of the open pack, which then ends at ``end``."""
        assert self._fd is not None
        if not buffers:
            return
        _writev_all(self._fd, buffers)
        self._offset = end
        self._touched[self._number] = end

    def start_new(self, after: int) -> None:
        """Make the writer append to a pack numbered above ``after`` from now on (so pack ``after`` can be
        compacted): rotate if it is writing to ``after`` or below, else create ``after + 1`` (a new pack's row
        is committed by the next flush, which :attr:`dirty` asks for)."""
        try:
            if self._fd is None:
                self._create(after + 1)
            elif self._number <= after:
                self._rotate()
        except OSError as e:
            raise storage_error("start a new pack", e) from None

    def _rotate(self) -> None:
        """Close the full pack (durable first: rows for its records are committed later); start the next."""
        assert self._fd is not None
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        self._create(self._number + 1)

    def sync(self) -> dict[int, int]:
        """fsync the open pack; return {pack: end offset} of every pack appended to since the last
        :meth:`synced`. Those offsets are kept until the caller says, with :meth:`synced`, that the index now
        records them: if its transaction fails, the next sync returns them again (a retry that forgot them
        would commit chunk rows past the recorded end of their pack, and the next :meth:`open_writer` would
        truncate those records away)."""
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as e:
                raise storage_error("sync chunk data", e) from None
        return dict(self._touched)

    def synced(self, touched: dict[int, int]) -> None:
        """The index committed the pack ends ``touched`` (from :meth:`sync`, with no append since)."""
        for number, end in touched.items():
            if self._touched.get(number) == end:
                del self._touched[number]

    def discard(self) -> None:
        """Forget everything appended since the last committed sync, after a failed write, fsync or index
        transaction: the writer is closed unsynced (after a failed fsync the kernel may already have dropped
        the dirty pages, so a second fsync proves nothing), and the next :meth:`open_writer` truncates the
        last pack back to what the index records. :attr:`epoch` counts discards, so a caller that appended
        records outside the pending map (compaction's copies) can tell whether they survived."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        self._touched.clear()
        self.epoch += 1

    # --- reading -----------------------------------------------------------------------------------------

    def _acquire(self, number: int) -> _Reader:
        """A pooled read descriptor of pack ``number``, counted as in use until :meth:`_release`. Raises
        OSError if the pack cannot be opened."""
        with self._readers_lock:
            reader = self._readers.get(number)
            if reader is not None:
                self._readers.move_to_end(number)
            else:
                reader = self._readers[number] = _Reader(os.open(self.path(number), os.O_RDONLY))
                while len(self._readers) > _MAX_OPEN_READERS:
                    _, old = self._readers.popitem(last=False)
                    old.retire()
            reader.users += 1
            return reader

    def _release(self, reader: _Reader) -> None:
        with self._readers_lock:
            reader.users -= 1
            if reader.retired and reader.users == 0:
                os.close(reader.fd)

    def _forget_reader(self, number: int) -> None:
        """Drop the pooled descriptor of ``number`` (closed now, or by its last user: a descriptor is never
        closed under a reader, whose ``pread`` could otherwise land in a file opened later with its number)."""
        with self._readers_lock:
            reader = self._readers.pop(number, None)
            if reader is not None:
                reader.retire()

    def read(self, number: int, offset: int, length: int, chunk_id: bytes) -> tuple[int, int, bytes]:
        """(codec, size, stored bytes) of the record the index placed at (pack, offset, length).

        Raises Damaged unless the record is whole, its header checks, it names ``chunk_id`` and its
        bytes match their crc: a pull never gets someone else's chunk or silently rotten bytes.
        """
        where = f"chunk {chunk_id.hex()} (pack {number} offset {offset})"
        try:
            reader = self._acquire(number)
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):  # no damage: the process is out of descriptors
                raise
            raise Damaged(f"{where}: cannot open its pack: {e.strerror}") from None
        try:
            buf = os.pread(reader.fd, HEADER_SIZE + length, offset)
        except OSError as e:
            raise Damaged(f"{where}: cannot read: {e.strerror}") from None
        finally:
            self._release(reader)
        return check_record(buf, length, chunk_id, where)

    # --- maintenance (garbage collection, check) ---------------------------------------------------------

    def numbers(self) -> list[int]:
        """Every pack file on disk, by number (whatever the index says), ascending."""
        found = []
        for path in self.directory.glob("*/*.pack"):
            if path.stem.isdigit() and path == self.path(int(path.stem)):
                found.append(int(path.stem))
        return sorted(found)

    def disk_bytes(self) -> int:
        """Sum of the sizes of every pack file on disk."""
        total = 0
        for number in self.numbers():
            try:
                total += self.path(number).stat().st_size
            except FileNotFoundError:
                pass
        return total

    def remove(self, numbers: list[int]) -> None:
        """Unlink packs (absent ones are skipped), then fsync the directories that held them, so the space is
        reclaimed and the removal is durable. Their pooled descriptors are dropped first."""
        dirs = set()
        for number in numbers:
            self._forget_reader(number)
            path = self.path(number)
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            dirs.add(path.parent)
        for d in sorted(dirs):
            fsync_dir(d)

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        with self._readers_lock:
            for reader in self._readers.values():
                reader.retire()
            self._readers.clear()
