"""The client side of the stash requests: targets, snapshots, file listings, versions, deleted files, prune and
check, each as one coroutine over an open session's :class:`~neotwist.wire.peer.Peer`.

The command lines (:mod:`neotwist.client.stashcli`) format what these return; neo-pull uses
:func:`resolve_snapshot` to turn ``--at TIME`` into a snapshot id. Replies that come in pages are gathered
here, with the same bounds the pull listing applies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from neotwist import paths
from neotwist.client.timespec import AtTime, format_time
from neotwist.wire import limits
from neotwist.wire.messages import (
    Check,
    CheckProgress,
    CheckReport,
    DeletedList,
    DeletedRecord,
    Entry,
    List,
    ListDeleted,
    Listing,
    ListSnapshots,
    ListTargets,
    ListVersions,
    Message,
    Open,
    Opened,
    Prune,
    Pruned,
    SnapshotList,
    SnapshotRecord,
    TargetInfo,
    Targets,
    VersionList,
    VersionRecord,
)
from neotwist.wire.peer import Peer

LISTING_ID_BYTES = 1 << 30
"""Bytes of chunk ids one listing may carry (32 Mi chunks: about 1 TiB at the default 32 KiB average). The
listing is held whole while a pull runs, so a server cannot make a client hold more; pull a sub-path at a
time beyond it."""


class StashError(Exception):
    """A stash request could not be answered as asked; the message is one line for the terminal."""


_Reply = TypeVar("_Reply", bound=Message)


def _expect(reply: Message, kind: type[_Reply], request: str) -> _Reply:
    if not isinstance(reply, kind):
        raise StashError(f"the server answered {request} with {type(reply).__name__}")
    return reply


async def list_targets(peer: Peer) -> list[TargetInfo]:
    return _expect(await peer.request(ListTargets(rid=0)), Targets, "targets").targets


async def open_target(peer: Peer, target: str, path: str = "") -> Opened:
    """A read handle on ``target`` at sub-path ``path``; StashError if the target has no snapshot yet."""
    opened = _expect(await peer.request(Open(rid=0, target=target, path=path, mode="read")), Opened, "open")
    if not opened.exists or opened.latest is None:
        raise StashError(f"target {target} has no snapshot yet; push to it first")
    return opened


async def _pages(peer: Peer, request: Message, kind: type[Any], field: str) -> list[Any]:
    items: list[Any] = []

    def more(message: Message) -> bool:
        page = _expect(message, kind, type(request).__name__)
        items.extend(getattr(page, field))
        if len(items) > limits.MAX_PUSH_ENTRIES:
            raise StashError(f"the server's answer has more than {limits.MAX_PUSH_ENTRIES} records")
        return not page.done

    await peer.request(request, more=more)
    return items


async def snapshots(peer: Peer, handle: int) -> list[SnapshotRecord]:
    """The target's kept snapshots, oldest first."""
    return await _pages(peer, ListSnapshots(rid=0, handle=handle), SnapshotList, "snapshots")


async def versions(peer: Peer, handle: int, path: str) -> list[VersionRecord]:
    """Every stored version of ``path`` (relative to the handle's root), oldest first."""
    return await _pages(peer, ListVersions(rid=0, handle=handle, path=path), VersionList, "versions")


async def deleted(peer: Peer, handle: int, path: str = "") -> list[DeletedRecord]:
    """Paths at or below ``path`` missing from the current view that a kept snapshot still holds."""
    records = await _pages(peer, ListDeleted(rid=0, handle=handle, path=path), DeletedList, "entries")
    return local_paths(records)


async def entries(
    peer: Peer, handle: int, snapshot: int | None, path: str = "", recursive: bool = True
) -> tuple[int, list[Entry]]:
    """(snapshot id, entries at and below ``path`` in it), continuation records joined into one entry each."""
    pages: list[Listing] = []
    listed = 0
    id_bytes = 0
    continued = 0  # chunk-id bytes of the file whose records are still continuing

    def more(message: Message) -> bool:
        nonlocal listed, id_bytes, continued
        page = _expect(message, Listing, "list")
        listed += len(page.entries)
        if listed > limits.MAX_PUSH_ENTRIES:
            raise StashError(f"the listing has more than {limits.MAX_PUSH_ENTRIES} entries")
        for e in page.entries:
            n = len(e.chunks)
            id_bytes += n
            continued = continued + n if e.more else 0
            if continued > limits.MAX_CHUNKS_PER_FILE * limits.ID_SIZE:
                raise StashError(
                    f"the server listed more than {limits.MAX_CHUNKS_PER_FILE} chunks for {e.path!r} (the most a "
                    "file can have): refusing the listing"
                )
        if id_bytes > LISTING_ID_BYTES:
            raise StashError(
                f"the listing carries more than {LISTING_ID_BYTES >> 20} MiB of chunk ids, more than a client "
                "holds at once: pull a sub-path at a time (REMOTE/PATH)"
            )
        pages.append(page)
        return not page.done

    await peer.request(List(rid=0, handle=handle, snapshot=snapshot, path=path, recursive=recursive), more=more)
    return pages[-1].snapshot, local_paths(merge_continued([e for page in pages for e in page.entries]))


R = TypeVar("R", Entry, DeletedRecord)


def local_paths(entries: list[R]) -> list[R]:
    """``entries`` with their paths from wire text to how Python holds file names (:func:`paths.from_wire`;
    an encrypted target's tokens are left as they are: they never hold a backslash)."""
    out = entries
    for i, e in enumerate(entries):
        if "\\" in e.path:
            if out is entries:
                out = list(entries)
            try:
                out[i] = msgspec.structs.replace(e, path=paths.from_wire(e.path))
            except ValueError as err:
                raise StashError(f"the server listed a malformed path {e.path!r} ({err})") from None
    return out


def merge_continued(records: list[Entry]) -> list[Entry]:
    """Join continuation records (``more``) into one entry per path, chunk ids concatenated in order."""
    out: list[Entry] = []
    pending: Entry | None = None
    parts: list[bytes] = []
    for e in records:
        if pending is not None:
            if e.path != pending.path:
                raise StashError(f"the server's listing broke off the chunk list of {pending.path!r}")
            parts.append(e.chunks)
            if not e.more:
                whole = b"".join(parts)
                p = pending
                out.append(Entry(p.path, p.kind, p.mode, p.mtime_ns, p.size, whole, p.link, p.meta))
                pending, parts = None, []
            continue
        if e.more:
            pending, parts = e, [e.chunks]
        else:
            out.append(e)
    if pending is not None:
        raise StashError(f"the server's listing ended inside the chunk list of {pending.path!r}")
    return out


def resolve_snapshot(records: list[SnapshotRecord], at: AtTime | None, snapshot: int | None) -> int | None:
    """The snapshot ``--snapshot ID`` or ``--at TIME`` names (None: the latest). ``--at`` picks the newest kept
    snapshot taken at or before TIME, which counts up to the end of the span TIME names (a time shown to the
    second by ``neo-ls --snapshots`` covers that second); StashError names the oldest when every one is later."""
    if snapshot is not None:
        if not any(r.id == snapshot for r in records):
            kept = ", ".join(str(r.id) for r in records[-5:])
            raise StashError(f"there is no snapshot {snapshot} (pruned or never made); the newest are {kept}")
        return snapshot
    if at is None:
        return None
    before = [r for r in records if at.covers(r.time)]
    if not before:
        shown = format_time(at.start)
        when = at.text.strip() if at.text.strip() == shown else f"{at.text.strip()} ({shown})"
        oldest = f"the oldest is {records[0].id} at {format_time(records[0].time)}" if records else "there is none"
        raise StashError(f"no snapshot was taken at or before {when}; {oldest}")
    return before[-1].id


async def prune(peer: Peer, handle: int, policy: dict[str, Any], dry_run: bool) -> Pruned:
    """Apply a retention policy (``keep_last`` ... ``keep_within`` as in :class:`Prune`) to the whole target."""
    reply = await peer.request(Prune(rid=0, handle=handle, dry_run=dry_run, **policy))
    return _expect(reply, Pruned, "prune")


async def check(
    peer: Peer,
    handle: int,
    verify_data: bool,
    on_progress: Callable[[int, int], None] | None = None,
    repair: bool = False,
) -> CheckReport:
    """Ask the server to check the target (and with ``repair`` to mark what it finds damaged);
    ``on_progress(done_bytes, total_bytes)`` hears its progress."""

    def more(message: Message) -> bool:
        if isinstance(message, CheckProgress):
            if on_progress is not None:
                on_progress(message.done_bytes, message.total_bytes)
            return True
        _expect(message, CheckReport, "check")
        return False

    reply = await peer.request(Check(rid=0, handle=handle, verify_data=verify_data, repair=repair), more=more)
    report = _expect(reply, CheckReport, "check")
    if repair and not report.repaired:
        raise StashError("this server checked but cannot repair (--repair needs a newer server): upgrade it")
    return report
