"""Where pulls are answered: ``list`` (a snapshot's entries, in pages) and ``get`` (chunks of one file).

Both are admitted background jobs (see :meth:`~neotwist.server.context.RequestContext.admit`), so a pull's many
small ``get`` requests overlap their disk reads. Every path a request names is relative to the handle's root,
checked and joined below it, and every error names it as the client knows it
(:meth:`~neotwist.server.context.Handle.client_path`). A handle confined to a grant's sub-path sees only the
snapshots relevant to it (:mod:`neotwist.server.repository.view`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from neotwist import paths
from neotwist.server.context import Handle, RequestContext
from neotwist.server.filechunks import check_file_chunks
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, NeoError
from neotwist.wire.messages import ChunkReply, Codec, Entry, Get, List, Listing
from neotwist.wire.peer import Peer

log = Logger()

READ_GROUP_BYTES = 4 * 1024 * 1024
"""Stored bytes read per worker hop while answering ``get``; the session waits for the client's credit between
groups, so a request for thousands of chunks never sits in memory at once."""

LISTING_PAGE_BYTES = 1024 * 1024
"""Approximate encoded bytes per ``listing`` page (also at most MAX_ENTRIES entries per page)."""


def on_list(ctx: RequestContext, peer: Peer, message: List) -> Deferred[None]:
    handle = ctx.handle(message.handle)
    paths.check_path(message.path)
    return ctx.admit(message, lambda: ctx.during(handle, ensureDeferred(_list(ctx, peer, message, handle))))


async def _list(ctx: RequestContext, peer: Peer, message: List, handle: Handle) -> None:
    target = handle.target
    root = handle.root

    def start() -> tuple[int, Iterator[Entry]]:
        ctx.recheck(handle)
        snapshot = snapshot_for(handle, message.snapshot)
        where = paths.join(root, message.path)
        try:
            return snapshot, target.list_entries(snapshot, where, message.recursive)
        except NeoError as e:  # say it in the client's terms: its path, its name for the target
            if e.code == ErrorCode.NO_SUCH_PATH:
                raise NeoError(e.code, nothing_at(handle, message.path, snapshot)) from None
            if e.code == ErrorCode.NO_SUCH_SNAPSHOT:
                raise NeoError(e.code, f"no snapshot {snapshot} in {handle.name!r}") from None
            raise

    snapshot, entries = await ctx.work(start)

    def page() -> tuple[list[Entry], bool]:
        out: list[Entry] = []
        size = 0
        for e in entries:
            if root:
                e = Entry(
                    paths.relative_to(e.path, root), e.kind, e.mode, e.mtime_ns, e.size, e.chunks, e.link,
                    e.meta, e.more,
                )  # fmt: skip
            out.append(e)
            size += 64 + 4 * (len(e.path) + len(e.link)) + len(e.chunks) + len(e.meta)  # bytes, at most
            if len(out) >= limits.MAX_ENTRIES or size >= LISTING_PAGE_BYTES:
                return out, False
        return out, True

    while True:
        batch, done = await ctx.work(page)
        if done or batch:
            peer.send(Listing(rid=message.rid, snapshot=snapshot, entries=batch, done=done))
        if done:
            return
        await peer.drain()


def on_get(ctx: RequestContext, peer: Peer, message: Get) -> Deferred[None]:
    handle = ctx.handle(message.handle)
    paths.check_path(message.path)
    if not message.ids:
        raise NeoError(ErrorCode.PROTOCOL, "get names no chunk ids (it is answered by one chunk per id)")
    return ctx.admit(message, lambda: ctx.during(handle, ensureDeferred(_get(ctx, peer, message, handle))))


class _GetReader:
    """The blocking half of one ``get``: locating its chunks once, then reading them a group at a time."""

    def __init__(self, ctx: RequestContext, handle: Handle, message: Get) -> None:
        self.ctx = ctx
        self.handle = handle
        self.message = message
        self.where = paths.join(handle.root, message.path)
        self.named = handle.client_path(message.path)
        self.locations: dict[bytes, Any] = {}

    def locate(self) -> None:
        """Check the handle may still read, the snapshot exists and the ids are the file's (in order from the
        hint where the last get of this file ended), then find where each chunk is stored."""
        handle, message, ids = self.handle, self.message, self.message.ids
        self.ctx.recheck(handle)  # a revoked or re-pointed grant reads nothing more
        if message.snapshot not in handle.snapshots_seen:
            snapshot_for(handle, message.snapshot)
            handle.snapshots_seen.add(message.snapshot)
        hint = handle.get_hint[1] if handle.get_hint[0] == (message.snapshot, self.where) else 0
        checked = check_file_chunks(handle.target, message.snapshot, self.where, ids, hint)
        if checked is None:
            raise NeoError(ErrorCode.NO_SUCH_PATH, f"no file {self.named!r} in snapshot {message.snapshot}")
        absent, end = checked
        if absent is not None:
            raise NeoError(ErrorCode.CHUNK_NOT_IN_FILE, f"chunk {absent.hex()} is not part of {self.named!r}")
        handle.get_hint = ((message.snapshot, self.where), end)
        self.locations.update(handle.target.locate(ids))

    def stored_length(self, cid: bytes) -> int:
        """The stored bytes of a located chunk (0 for one not found: reading it fails as damaged)."""
        loc = self.locations.get(cid)
        return 0 if loc is None else int(loc[2])

    def plan(self, start: int) -> tuple[int, int]:
        """The end of the group starting at ``start`` and its stored bytes (at most READ_GROUP_BYTES, or one
        chunk, which is never larger)."""
        ids = self.message.ids
        end, group = start, 0
        while end < len(ids) and (end == start or group + self.stored_length(ids[end]) <= READ_GROUP_BYTES):
            group += self.stored_length(ids[end])
            end += 1
        return end, group

    def read(self, start: int, end: int) -> list[ChunkReply]:
        out: list[ChunkReply] = []
        target, rid = self.handle.target, self.message.rid
        for cid in self.message.ids[start:end]:
            try:
                codec, size, data = target.read_located(cid, self.locations.get(cid))
            except NeoError as e:
                if e.code == ErrorCode.DAMAGED:
                    log.error("damaged chunk: target={target} path={path!r}: {why}",
                              target=self.handle.access.target, path=self.where, why=e.message)  # fmt: skip
                    raise NeoError(ErrorCode.DAMAGED, f"{self.named}: {e.message}") from None
                raise
            out.append(ChunkReply(rid=rid, id=cid, codec=cast(Codec, codec), size=size, data=data))
        return out

    def first(self) -> tuple[list[ChunkReply], int, int]:
        """Locate, then read the first group in the same worker hop (a get of a small file is one hop)."""
        self.locate()
        end, group = self.plan(0)
        return self.read(0, end), end, group


async def _get(ctx: RequestContext, peer: Peer, message: Get, handle: Handle) -> None:
    """Answer a get a group at a time: each group is planned from the chunks' stored lengths (at most
    READ_GROUP_BYTES, or one chunk), read only once the reply queue is below the client's window and the
    connection's memory budget holds its bytes, and given back only once its replies have drained: a client
    that stops reading stops the reads, however many gets it has sent."""
    reader = _GetReader(ctx, handle, message)
    memory = ctx.memory
    start = 0
    while start < len(message.ids):
        await peer.drain()
        if start == 0:  # planned in the worker: hold what any first group may take
            held = READ_GROUP_BYTES
            await memory.acquire(held)
            run = ctx.work(reader.first)
        else:
            end, held = reader.plan(start)
            await memory.acquire(held)
            run = ctx.work(reader.read, start, end)
        try:
            if start == 0:
                replies, end, group = await run
                if group < held:  # give back what the first group did not take
                    memory.release(held - group)
                    held = group
            else:
                replies = await run
            for reply in replies:
                peer.send(reply)
            del replies
            await peer.drain()
        finally:
            memory.release(held)
        start = end


def snapshot_for(handle: Handle, snapshot: int | None) -> int:
    """The snapshot a read names (None: the latest), checked to exist (blocking). A confined handle sees only
    its relevant snapshots (:mod:`neotwist.server.repository.view`); any other id does not exist for it."""
    target = handle.target
    if handle.view is not None:
        if snapshot is None:
            seen = handle.view.latest()
            if seen is None:
                raise NeoError(ErrorCode.NO_SUCH_SNAPSHOT, f"{handle.name!r} has no snapshot yet")
            return seen.id
        if not handle.view.relevant(snapshot):
            raise NeoError(ErrorCode.NO_SUCH_SNAPSHOT, f"no snapshot {snapshot} in {handle.name!r}")
        return snapshot
    if snapshot is None:
        latest = target.latest()
        if latest is None:
            raise NeoError(ErrorCode.NO_SUCH_SNAPSHOT, f"target {handle.name!r} has no snapshot yet")
        return latest.id
    if target.snapshot(snapshot) is None:
        raise NeoError(ErrorCode.NO_SUCH_SNAPSHOT, f"no snapshot {snapshot} in {handle.name!r}")
    return snapshot


def nothing_at(handle: Handle, path: str, snapshot: int) -> str:
    """Why snapshot ``snapshot`` has nothing at ``path`` (relative to the handle's root), in the client's terms
    (blocking). A path that a kept snapshot before it held was deleted: say in which snapshot and which one
    to restore it from, so the user need not go looking."""
    target = handle.target
    named = handle.client_path(path)
    try:
        versions = target.versions(paths.join(handle.root, path))
    except NeoError:
        versions = []
    gone = [v for v in versions if v.last is not None and v.last <= snapshot]
    if gone:
        last = gone[-1]
        assert last.last is not None
        kept = handle.view.snapshot_ids() if handle.view is not None else [s.id for s in target.snapshots()]
        holding = [i for i in kept if last.first <= i < last.last]
        if holding:
            when = "in that snapshot" if last.last == snapshot else f"in snapshot {last.last}"
            return (
                f"{named!r} was deleted {when}; snapshot {holding[-1]} holds its last version: pull or list it "
                f"with --snapshot {holding[-1]} (neo-ls --versions {named} lists every stored version)"
            )
    later = [v.first for v in versions if v.first > snapshot]
    if later:
        return f"nothing at {named!r} in snapshot {snapshot}; it first appears in snapshot {later[0]}"
    return f"nothing at {named!r} in snapshot {snapshot}"


HANDLERS: dict[type, Any] = {
    List: on_list,
    Get: on_get,
}
"""The read requests, merged into the session's dispatch table."""
