"""Where pulls are answered: ``list`` (a snapshot's entries, in pages), ``get`` and ``get_files`` (chunks of one
file, or of several; streamed by :mod:`neotwist.server.fetch`).

Both are admitted background jobs (see :meth:`~neotwist.server.context.RequestContext.admit`), so a pull's many
small ``get`` requests overlap their disk reads. Every path a request names is relative to the handle's root,
checked and joined below it, and every error names it as the client knows it
(:meth:`~neotwist.server.context.Handle.client_path`). A handle confined to a grant's sub-path sees only the
snapshots relevant to it (:mod:`neotwist.server.repository.view`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from neotwist import paths
from neotwist.paths import BadPath
from neotwist.server import fetch
from neotwist.server.context import Handle, RequestContext
from neotwist.server.repository.errors import NoSuchPath, NoSuchSnapshot
from neotwist.server.repository.filechunks import check_files_chunks
from neotwist.server.repository.records import StoredEntry
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, NeoError
from neotwist.wire.messages import Entry, Get, GetFiles, List, Listing
from neotwist.wire.peer import Peer

log = Logger()

READ_GROUP_BYTES = fetch.READ_GROUP_BYTES
"""The size of one read group of a get (see :mod:`neotwist.server.fetch`)."""

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
            return snapshot, listing_records(target.list_entries(snapshot, where, message.recursive), root)
        except NoSuchPath:  # say it in the client's terms: its path, its name for the target
            raise NeoError(ErrorCode.NO_SUCH_PATH, nothing_at(handle, message.path, snapshot)) from None
        except NoSuchSnapshot:
            raise NeoError(ErrorCode.NO_SUCH_SNAPSHOT, f"no snapshot {snapshot} in {handle.name!r}") from None

    snapshot, entries = await ctx.work(start)

    def page() -> tuple[list[Entry], bool]:
        out: list[Entry] = []
        size = 0
        for e in entries:
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


def listing_records(stored: Iterator[StoredEntry], root: str) -> Iterator[Entry]:
    """The listing's records of the stored entries, named relative to ``root``: a file with more chunk ids than
    one record carries (MAX_FILE_CHUNK_IDS) comes as several, all but the last with ``more``, so a page can end
    between them."""
    step = limits.MAX_FILE_CHUNK_IDS * limits.ID_SIZE
    for e in stored:
        path = paths.relative_to(e.path, root) if root else e.path
        chunks = e.chunks
        if len(chunks) <= step:
            yield Entry(path, e.kind, e.mode, e.mtime_ns, e.size, chunks, e.link, e.meta)
            continue
        for start in range(0, len(chunks), step):
            more = start + step < len(chunks)
            yield Entry(path, e.kind, e.mode, e.mtime_ns, e.size, chunks[start : start + step], e.link, e.meta, more)


def on_get(ctx: RequestContext, peer: Peer, message: Get) -> Deferred[None]:
    handle = ctx.handle(message.handle)
    paths.check_path(message.path)
    if not message.ids:
        raise NeoError(ErrorCode.PROTOCOL, "get names no chunk ids (it is answered by one chunk per id)")
    where, named = paths.join(handle.root, message.path), handle.client_path(message.path)
    return _read_chunks(ctx, peer, message, handle, [fetch.Wanted(where, named, message.ids)])


def on_get_files(ctx: RequestContext, peer: Peer, message: GetFiles) -> Deferred[None]:
    handle = ctx.handle(message.handle)
    fetch.check_get_files(message.files)
    wanted = []
    for f in message.files:
        paths.check_path(f.path)
        wanted.append(fetch.Wanted(paths.join(handle.root, f.path), handle.client_path(f.path), f.ids))
    return _read_chunks(ctx, peer, message, handle, wanted)


def _read_chunks(
    ctx: RequestContext, peer: Peer, message: Get | GetFiles, handle: Handle, files: list[fetch.Wanted]
) -> Deferred[None]:
    return ctx.admit(message, lambda: ctx.during(handle, ensureDeferred(_get(ctx, peer, message, handle, files))))


async def _get(
    ctx: RequestContext, peer: Peer, message: Get | GetFiles, handle: Handle, files: list[fetch.Wanted]
) -> None:
    """Answer a get or get_files (:func:`neotwist.server.fetch.send_chunks`), after checking in its first
    worker hop that the handle may still read, the snapshot exists and every id belongs to its file."""
    target = handle.target
    snapshot = message.snapshot

    def check() -> None:
        ctx.recheck(handle)  # a revoked or re-pointed grant reads nothing more
        if snapshot not in handle.snapshots_seen:
            snapshot_for(handle, snapshot)
            handle.snapshots_seen.add(snapshot)
        # where the previous get on the same file ended: a large file's gets each read only their part
        (last, end) = handle.get_hint
        wanted = [(f.where, f.ids, end if last == (snapshot, f.where) else 0) for f in files]
        results = check_files_chunks(target, snapshot, wanted)
        for f, checked in zip(files, results, strict=True):
            if checked is None:
                raise NeoError(ErrorCode.NO_SUCH_PATH, f"no file {f.named!r} in snapshot {snapshot}")
            absent, end = checked
            if absent is not None:
                raise NeoError(ErrorCode.CHUNK_NOT_IN_FILE, f"chunk {absent.hex()} is not part of {f.named!r}")
            handle.get_hint = ((snapshot, f.where), end)

    await fetch.send_chunks(peer, message.rid, target, files, check, ctx.work, ctx.memory, handle.access.target)


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
    except (NoSuchPath, BadPath):
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
    GetFiles: on_get_files,
}
"""The read requests, merged into the session's dispatch table."""
