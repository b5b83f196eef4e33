"""``neo-push --stdin``: standard input (a database dump, a tar stream) stored as one file of a new snapshot.

The stream is cut with the target's content-defined chunker as it arrives, so a second dump that differs in a
few places sends only the chunks around the differences. It is never held whole: a reader thread cuts it into
batches of about STREAM_BATCH_BYTES and may run at most BATCHES_AHEAD batches ahead of the upload, which asks
``have`` about each batch's new chunks and puts the missing ones (compressed, and sealed for an encrypted
target) before the reader may go on. Memory is thus a few batches, plus 32 bytes of chunk id per chunk of the
stream (the file's chunk list, sent with its entry at the end).

The file is stored with mode 0600 (a dump is often private) and the time of the push as its mtime; the rest of
the target stays as it was (paths the push does not list keep their version). A producer that fails
(``pg_dump ... | neo-push --stdin``) cannot be seen from here, since a pipe only tells its reader where it ends:
an empty stream is refused (nothing is committed), and a shell's ``set -o pipefail`` makes the pipeline's status
tell the rest.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec
from twisted.internet.defer import DeferredQueue
from twisted.internet.threads import deferToThreadPool

from neotwist.chunking import DEFAULT_PARAMS, Chunker
from neotwist.client.encryption import Crypt, plain_errors
from neotwist.client.labels import commit_fields
from neotwist.client.meter import Meter
from neotwist.client.push import (
    PushError,
    PushOptions,
    PushSummary,
    _compress_job,
    _encrypted_entries,
    _entries_for,
    _remove_unborn_target,
    _Source,
    ask_missing,
    take_entry_messages,
)
from neotwist.client.remotetarget import RemoteTarget
from neotwist.client.scan import ScanRecord
from neotwist.client.workers import WorkerPool
from neotwist.wire.errors import ErrorCode, RemoteError
from neotwist.wire.messages import (
    Abort,
    ChunkerParams,
    Close,
    Codec,
    Commit,
    Committed,
    Opened,
    PushBegin,
    PushEntries,
    Put,
)
from neotwist.wire.peer import Peer

STREAM_BATCH_BYTES = 8 * 1024 * 1024
"""Bytes of the stream per batch: one ``have`` (up to MAX_IDS ids) and one compression job each."""
BATCHES_AHEAD = 2
"""Batches the reader may have cut that the upload has not finished with: the bound on buffered data."""
SEEN_LIMIT = 1 << 20
"""Chunk ids remembered to skip repeats within the stream; past it the set starts again (the server's ``have``
still answers for repeats, so only a few duplicate puts can result)."""
STDIN_MODE = 0o600
STDIN_SOURCE = "(standard input) as"
"""The source a --stdin snapshot's label records, before the file's path: '(standard input) as db.sql'."""


class EmptyInput(PushError):
    """Standard input ended before its first byte."""


@dataclass
class _Stream:
    """What the reader thread and the upload share."""

    fd: int
    params: ChunkerParams
    id_key: bytes | None
    credit: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(BATCHES_AHEAD))
    stop: threading.Event = field(default_factory=threading.Event)

    def release_all(self) -> None:
        """Let a reader waiting for credit see ``stop`` (it ends at its next step)."""
        self.stop.set()
        for _ in range(BATCHES_AHEAD + 1):
            self.credit.release()


class _FdReader:
    """``readinto`` over a file descriptor (a pipe, a file, a socket), as the chunker's ``cut_stream`` wants."""

    __slots__ = ("fd", "got")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.got = 0

    def readinto(self, b: memoryview) -> int:
        n = os.readv(self.fd, [b])
        self.got += n
        return n


Batch = list[tuple[bytes, bytes]]
"""(chunk id, chunk bytes) in stream order."""


def _read(stream: _Stream, deliver: Any) -> None:
    """The reader thread: cut the stream into batches and hand each to the reactor (``deliver`` is called with
    a batch, then with None at the end, or with the exception that stopped it)."""
    try:
        chunker = Chunker(stream.params, stream.id_key)
        batch: Batch = []
        size = 0
        for piece, data in chunker.cut_stream(_FdReader(stream.fd)):
            batch.append((piece.id, bytes(data)))
            size += piece.length
            if size >= STREAM_BATCH_BYTES:
                stream.credit.acquire()
                if stream.stop.is_set():
                    return
                deliver(batch)
                batch, size = [], 0
        if batch:
            stream.credit.acquire()
            if stream.stop.is_set():
                return
            deliver(batch)
        deliver(None)
    except BaseException as e:  # handed to the reactor, which raises it there
        deliver(e)


async def push_stdin(
    reactor: Any,
    peer: Peer,
    local_root: str,
    target: str,
    subpath: str,
    options: PushOptions,
    *,
    name: str,
    dry_run: bool = False,
    fd: int = 0,
) -> PushSummary:
    """Store what ``fd`` (standard input) gives as the file ``name`` in a new snapshot of ``target`` at
    ``subpath``. With ``dry_run`` nothing is created or sent: the summary says what would be."""
    del local_root  # there is no local directory
    meter = Meter.start(peer)
    summary: PushSummary
    if dry_run:
        from neotwist.client.dryrun import DryRunSummary

        summary = DryRunSummary(target=target, listed=False, stdin=name)
    else:
        summary = PushSummary()
    opened: Opened | None = None
    crypt: Crypt | None = None
    try:
        remote_target = await RemoteTarget.open_push(
            peer, target, subpath, options.access, encrypt=options.encrypt,
            keep_history=None if dry_run else options.keep_history, create=not dry_run,
        )  # fmt: skip
        opened, crypt = remote_target.opened, remote_target.crypt
    except RemoteError as e:
        if not dry_run or e.code != ErrorCode.NO_SUCH_TARGET:
            raise
        summary.target_exists = False  # type: ignore[attr-defined]
    summary.encrypted = crypt is not None
    upload = _Upload(reactor, peer, opened, crypt, options, summary, dry_run)
    try:
        with plain_errors(crypt):
            committed = await upload.run(fd, name)
    except BaseException:
        if opened is not None and not dry_run and not opened.exists:
            if upload.summary.chunks_sent and options.warn is not None:
                options.warn(
                    f"nothing was committed to target {target} (new with this push); the server keeps the "
                    f"{summary.chunks_sent} chunks already sent for 15 minutes"
                )
            elif await _remove_unborn_target(peer, opened.handle, target) and options.warn is not None:
                options.warn(f"nothing was committed, so target {target} (new with this push) was removed again")
        raise
    finally:
        if dry_run and opened is not None:
            try:
                await peer.request(Close(rid=0, handle=opened.handle))
            except Exception:  # noqa: S110 - the connection's end releases it all the same
                pass
    if committed is not None:
        summary.snapshot = committed.snapshot
        summary.new_chunks = committed.new_chunks
        summary.new_bytes = committed.new_bytes
    meter.fill(summary)
    return summary


class _Upload:
    """One stream's push: batches in, ``have``/``put`` out, then the entry and the commit."""

    def __init__(
        self,
        reactor: Any,
        peer: Peer,
        opened: Opened | None,
        crypt: Crypt | None,
        options: PushOptions,
        summary: PushSummary,
        dry_run: bool,
    ) -> None:
        self.reactor = reactor
        self.peer = peer
        self.opened = opened
        self.handle = opened.handle if opened is not None else 0
        self.crypt = crypt
        self.options = options
        self.summary = summary
        self.dry_run = dry_run
        self.seen: set[bytes] = set()

    async def run(self, fd: int, name: str) -> Committed | None:
        opened, crypt, peer = self.opened, self.crypt, self.peer
        params = opened.chunker if opened is not None else DEFAULT_PARAMS
        if crypt is not None:
            params = crypt.chunker(params)
        if not self.dry_run:
            await peer.request(PushBegin(rid=0, handle=self.handle, delete=False))
        stream = _Stream(fd, params, crypt.id_key if crypt is not None else None)
        queue: DeferredQueue[Any] = DeferredQueue()
        reader = threading.Thread(
            target=_read, args=(stream, lambda item: self.reactor.callFromThread(queue.put, item)),
            name="neo-push-stdin", daemon=True,  # never joined: a read blocked on a silent pipe must not hold us
        )  # fmt: skip
        pool = WorkerPool(minthreads=0, maxthreads=1, name="neo-push")
        pool.start()
        ids = bytearray()
        size = 0
        try:
            reader.start()
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    if isinstance(item, OSError):
                        raise PushError(f"cannot read standard input: {item.strerror}") from item
                    raise item
                for cid, data in item:
                    ids += cid
                    size += len(data)
                await self._send(pool, item)
                stream.credit.release()
                if self.options.progress is not None:
                    self.options.progress.bytes(sum(len(data) for _cid, data in item))
        finally:
            stream.release_all()
            pool.stop()
        if not size:
            if not self.dry_run:
                await peer.request(Abort(rid=0, handle=self.handle))
            raise EmptyInput(
                "standard input was empty: nothing was stored (did the command before '|' fail? 'set -o "
                "pipefail' makes the shell say so)"
            )
        summary = self.summary
        summary.files_scanned = summary.files = summary.files_changed = 1
        summary.bytes_read = size
        if self.options.progress is not None:
            self.options.progress.files(1)
        if self.dry_run:
            return None
        now = time.time_ns()
        rec = ScanRecord(name, "f", STDIN_MODE, now, size, 0, now)
        make = _entries_for if crypt is None else _encrypted_entries(crypt)
        entries = make(rec, bytes(ids))
        for part in take_entry_messages(entries, force=True):
            peer.post(PushEntries(rid=0, handle=self.handle, entries=part))
        await peer.drain()
        label = self.options.label
        if label is not None:  # its source is the stream, not a directory
            label = msgspec.structs.replace(label, source=f"{STDIN_SOURCE} {name}")
        fields = commit_fields(label, 0, crypt.keys if crypt is not None else None)
        reply = await peer.request(Commit(rid=0, handle=self.handle, **fields))
        if not isinstance(reply, Committed):
            raise PushError(f"the server answered commit with {type(reply).__name__}")
        return reply

    async def _send(self, pool: WorkerPool, batch: Batch) -> None:
        """Ask about the batch's new chunks and put (or, in a dry run, count) those the server lacks."""
        seen = self.seen
        if len(seen) > SEEN_LIMIT:
            seen.clear()
        fresh: Batch = []
        for cid, data in batch:
            if cid not in seen:
                seen.add(cid)
                fresh.append((cid, data))
        if not fresh:
            return
        asked = [cid for cid, _data in fresh]
        lacking = set(asked) if self.opened is None else await ask_missing(self.peer, self.handle, asked)
        sources: list[_Source] = [(cid, "", data, 0, len(data)) for cid, data in fresh if cid in lacking]
        if not sources:
            return
        level = self.options.compress_level
        ready, _failed = await deferToThreadPool(self.reactor, pool, _compress_job, "", sources, level, self.crypt)
        summary = self.summary
        for cid, codec, size, payload, raw_size in ready:
            codec = cast(Codec, codec)
            if self.dry_run:
                summary.chunks_to_send += 1  # type: ignore[attr-defined]
                summary.chunk_bytes_to_send += raw_size  # type: ignore[attr-defined]
                summary.bytes_to_send += len(payload)  # type: ignore[attr-defined]
                continue
            await self.peer.drain()
            self.peer.post(Put(rid=0, handle=self.handle, id=cid, codec=codec, size=size, data=payload))
            summary.chunks_sent += 1
            summary.chunk_bytes_sent += raw_size


__all__ = ["EmptyInput", "push_stdin"]
