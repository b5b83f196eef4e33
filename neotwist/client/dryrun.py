"""``neo-push --dry-run``: what a push would send, found the way the push finds it, with nothing sent or changed.

The dry run is the push's own pipeline (:class:`~neotwist.client.push._PushRun`) with its three effects taken
out: no ``push_begin`` and no ``commit`` (no snapshot), no ``put`` (each chunk the server lacks is counted, after
being compressed, and sealed for an encrypted target, exactly as it would be sent), and no ``entries`` (each
entry is compared with the target's latest snapshot instead). The target is opened for pushing *without*
``create``, so a missing target stays missing; the files cache is read, to skip unchanged files as the push
would, but never saved.

So the figures mean what they would mean for the push run now:

- ``files_new`` / ``files_modified`` / ``files_unmodified`` (and the same for directories) compare each item
  with the latest snapshot's version of it: new when that has no such path, unmodified when every field the
  server keeps (kind, mode, mtime, size, chunk ids, link, owner and xattrs) is the same; symlinks and special
  files count as files. ``removed`` counts the paths only the server has: ``--delete`` would record them as
  deleted, without it the remote view keeps them.
- ``chunks_to_send`` / ``chunk_bytes_to_send`` / ``bytes_to_send``: the chunks the server answered ``have``
  with "missing", their plain bytes, and their bytes as they would be sent (compressed; sealed for an encrypted
  target). Framing adds a few bytes per chunk. For a target that does not exist yet every distinct chunk is
  counted (for a new encrypted target, its sizes are the plaintext's: the key the push would make is unknown).
  Like the push, the dry run does not ask about the chunks of files the files cache vouches for: in the rare
  case that the server has lost some of those (pruned, or marked damaged by ``neo-check --repair``), the push
  learns it at its commit and sends them too, beyond what the dry run counted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.python.threadpool import ThreadPool

from neotwist import paths
from neotwist.chunking import DEFAULT_PARAMS
from neotwist.client import stash
from neotwist.client.encryption import Crypt, plain_errors
from neotwist.client.meter import Meter
from neotwist.client.push import (
    PushError,
    PushOptions,
    PushSummary,
    _count_in_background,
    _entries_for,
    _PushRun,
)
from neotwist.client.remotetarget import RemoteTarget
from neotwist.client.workers import WorkerPool
from neotwist.wire.errors import ErrorCode, RemoteError
from neotwist.wire.messages import ChunkerParams, Close, Codec, Entry, Opened
from neotwist.wire.peer import Peer


@dataclass
class DryRunSummary(PushSummary):
    """A push's summary keys (what a dry run does not do stays 0 or null), plus what the push would do."""

    dry_run: bool = True
    target: str = ""
    target_exists: bool = True
    listed: bool = True  # the latest snapshot could be listed (the counts below are known)
    stdin: str | None = None  # --stdin: the file's path in the snapshot (its counts are not judged)
    files_new: int = 0
    files_modified: int = 0
    files_unmodified: int = 0
    dirs_new: int = 0
    dirs_modified: int = 0
    dirs_unmodified: int = 0
    removed: int = 0
    chunks_to_send: int = 0
    chunk_bytes_to_send: int = 0
    bytes_to_send: int = 0


def _fields(e: Entry) -> tuple[Any, ...]:
    """What the server compares to decide whether an entry makes a new version."""
    return (e.kind, e.mode, e.mtime_ns, e.size, e.chunks, e.link, e.meta)


class _DryRun(_PushRun):
    """A push run that counts what it would put and compares what it would list (see the module docstring)."""

    def __init__(self, *args: Any, remote: dict[str, Entry] | None, exists: bool, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.deltas = None  # chunks are counted as they would be put whole; no delta is sent
        self.make_entries = _entries_for  # plaintext records, to compare with the (decrypted) listing
        self.remote = remote  # None: the latest snapshot could not be listed, so items are not judged
        self.exists = exists
        self.dry: DryRunSummary = self.summary  # type: ignore[assignment]
        self._continued: Entry | None = None
        self._parts: list[bytes] = []

    async def _missing(self, ids: list[bytes]) -> set[bytes]:
        if not self.exists:  # a new target holds nothing
            return set(ids)
        return await super()._missing(ids)

    async def _put(self, cid: bytes, codec: Codec, size: int, payload: bytes, raw_size: int) -> None:
        dry = self.dry
        dry.chunks_to_send += 1
        dry.chunk_bytes_to_send += raw_size
        dry.bytes_to_send += len(payload)

    def _flush_entries(self, force: bool = False) -> None:
        for e in self.entries:
            if e.more or self._continued is not None:  # a file of many chunks: its records continue
                if self._continued is None:
                    self._continued = e
                self._parts.append(e.chunks)
                if e.more:
                    continue
                first, self._continued = self._continued, None
                e = Entry(first.path, first.kind, first.mode, first.mtime_ns, first.size, b"".join(self._parts),
                          first.link, first.meta)  # fmt: skip
                self._parts = []
            self._judge(e)
        self.entries.clear()

    def _judge(self, e: Entry) -> None:
        if self.remote is None:
            return
        dry = self.dry
        old = self.remote.pop(e.path, None)
        if not e.path:  # the root is not counted
            return
        is_dir = e.kind == "d"
        if old is None:
            if is_dir:
                dry.dirs_new += 1
            else:
                dry.files_new += 1
        elif _fields(old) == _fields(e):
            if is_dir:
                dry.dirs_unmodified += 1
            else:
                dry.files_unmodified += 1
        elif is_dir:
            dry.dirs_modified += 1
        else:
            dry.files_modified += 1


async def _latest_entries(
    peer: Peer, opened: Opened, crypt: Crypt | None, summary: DryRunSummary, options: PushOptions
) -> dict[str, Entry] | None:
    """The latest snapshot's entries under the handle root, by plaintext path (empty when it has none; None
    when they could not be listed)."""
    if opened.latest is None:
        return {}
    try:
        _snapshot, entries = await stash.entries(peer, opened.handle, None)
    except (RemoteError, stash.StashError) as e:
        if isinstance(e, RemoteError) and e.code == ErrorCode.NO_SUCH_PATH:  # a sub-path not pushed yet
            return {}
        summary.listed = False
        why = e.message if isinstance(e, RemoteError) else str(e)
        if options.warn is not None:
            options.warn(f"the latest snapshot of {summary.target} could not be listed ({why}): new and modified "
                         "items are not told apart")  # fmt: skip
        return None
    if crypt is not None:
        decrypted = await deferToThread(crypt.decrypt_listing, entries)
        entries = decrypted.entries
        for error in decrypted.errors:  # left out: the dry run calls such items new
            if options.warn is not None:
                options.warn(error)
    return {paths.to_wire(e.path): e for e in entries}  # as the push's entries name them


async def dry_run(
    reactor: Any, peer: Peer, local_root: str, target: str, subpath: str, options: PushOptions
) -> DryRunSummary:
    """What pushing ``local_root`` to ``target`` at ``subpath`` would do; nothing is sent, created or saved."""
    meter = Meter.start(peer)
    summary = DryRunSummary(target=target)
    local_root = os.path.abspath(local_root)
    if not os.path.isdir(local_root):
        raise PushError(f"{local_root} is not a directory (neo-push LOCAL_DIR REMOTE)")
    opened: Opened | None = None
    crypt: Crypt | None = None
    try:
        remote_target = await RemoteTarget.open_push(
            peer, target, subpath, options.access, encrypt=options.encrypt, keep_history=None, create=False
        )
        opened, crypt = remote_target.opened, remote_target.crypt
    except RemoteError as e:
        if e.code != ErrorCode.NO_SUCH_TARGET:
            raise
        summary.target_exists = False
    summary.encrypted = crypt is not None or (opened is None and options.encrypt)
    try:
        with plain_errors(crypt):
            remote = await _latest_entries(peer, opened, crypt, summary, options) if opened is not None else {}
            summary.listed = remote is not None
            if options.cache is not None:
                options.cache.bind("plaintext" if crypt is None else f"encrypted {crypt.keys.fingerprint}")
                options.cache.load()  # read only: a dry run never saves it
            params: ChunkerParams = opened.chunker if opened is not None else DEFAULT_PARAMS
            if crypt is not None:
                params = crypt.chunker(params)
            pool: ThreadPool = WorkerPool(minthreads=0, maxthreads=max(2, options.workers + 1), name="neo-push")
            pool.start()
            counting = _count_in_background(reactor, local_root, options)
            try:
                run = _DryRun(
                    reactor, pool, peer, opened.handle if opened is not None else 0, params, local_root, options,
                    summary, options.cache is not None, crypt, remote=remote, exists=opened is not None,
                )  # fmt: skip
                await run.walk()
            finally:
                counting()
                pool.stop()
            summary.removed = sum(1 for path in remote if path) if remote is not None else 0
    finally:
        if options.cache is not None:
            options.cache.close()  # a dry run leaves the cache as the last push saved it
        if opened is not None:
            try:
                await peer.request(Close(rid=0, handle=opened.handle))
            except Exception:  # noqa: S110 - the connection's end releases it all the same
                pass
    meter.fill(summary)
    return summary


__all__ = ["DryRunSummary", "dry_run"]
