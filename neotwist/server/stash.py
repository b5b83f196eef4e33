"""Where the stash requests are handled: snapshot, version and deleted-file listings, prune and check.

These request handlers (over a :class:`~neotwist.server.context.RequestContext`) share nothing with the push
and pull paths except the connection's handles and job slots: each turns one request
into one blocking repository call in the thread pool and sends the answer, paged when it can be long. Paths
in requests are relative to the handle's root and are checked and joined below it, exactly like ``list`` and
``get``; paths in replies are made relative to it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from neotwist import paths
from neotwist.server.context import RequestContext
from neotwist.server.labels import label_chars, listed_label
from neotwist.server.repository.errors import NoSuchPath
from neotwist.server.repository.retention import RetentionPolicy, decide
from neotwist.server.rights import Right
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, NeoError
from neotwist.wire.messages import (
    Check,
    CheckProgress,
    CheckReport,
    DamagedFile,
    DeletedList,
    DeletedRecord,
    ListDeleted,
    ListSnapshots,
    ListVersions,
    Message,
    Prune,
    Pruned,
    PruneDecision,
    SnapshotList,
    SnapshotRecord,
    VersionList,
    VersionRecord,
)
from neotwist.wire.peer import Peer

log = Logger()


CHECK_PROGRESS_INTERVAL = 0.5
"""Seconds between ``check_progress`` messages."""

PAGE_BYTES = 1024 * 1024
"""Approximate encoded bytes per page of a listing reply (and at most MAX_ENTRIES records)."""

CHECK_REPORT_BYTES = 2 * 1024 * 1024
"""Approximate encoded bytes the file list of a ``check_report`` may take (a frame holds at most MAX_FRAME)."""

_MAX_PROBLEMS = 256


def on_snapshots(ctx: RequestContext, peer: Peer, message: ListSnapshots) -> Deferred[None]:
    handle = ctx.handle(message.handle)
    target = handle.target
    root = handle.root

    def records() -> list[SnapshotRecord]:
        view = handle.view
        if view is not None:
            # A grant on a sub-path sees its relevant snapshots only, and only their files below its root: the
            # target-wide counts would tell what happens elsewhere (see repository/view.py).
            relevant = set(view.snapshot_ids())
            return [
                SnapshotRecord(
                    id=s.id, time=s.time, files=view.files(s.id), dirs=0, changed=0, deleted=0, new_chunks=0,
                    new_bytes=0, root=paths.relative_to(s.root, root) if paths.is_within(s.root, root) else "",
                    delete_mode=s.delete_mode and paths.is_within(s.root, root),
                )
                for s in target.snapshots()
                if s.id in relevant
            ]  # fmt: skip
        # (a grant on a sub-path gets no labels above: they say where and by whom the owner's pushes were made)
        encrypted = target.meta.encrypted
        return [
            SnapshotRecord(
                s.id,
                s.time,
                s.files,
                s.dirs,
                s.changed,
                s.deleted,
                s.new_chunks,
                s.new_bytes,
                paths.relative_to(s.root, root) if paths.is_within(s.root, root) else "",
                s.delete_mode,
                *listed_label(encrypted, s.label),
            )
            for s in target.snapshots()
        ]

    def send(items: list[SnapshotRecord]) -> Deferred[None]:
        return _send_pages(
            peer,
            items,
            lambda r: len(r.root) + label_chars(r.label, r.sealed_label),
            lambda page, done: SnapshotList(message.rid, page, done),
        )

    return ctx.admit(
        message, lambda: ctx.run_for(handle, Right.READ, "listing snapshots", records).addCallback(send)
    )


def on_versions(ctx: RequestContext, peer: Peer, message: ListVersions) -> Deferred[None]:
    handle = ctx.handle(message.handle)
    target = handle.target
    where = paths.join(handle.root, paths.check_path(message.path))

    def records() -> list[VersionRecord]:
        try:
            found = target.versions(where)
        except NoSuchPath:  # named as the client named it: the repository's path holds the handle's root
            named = handle.client_path(message.path)
            raise NeoError(ErrorCode.NO_SUCH_PATH, f"no stored version of {named!r}") from None
        return [
            VersionRecord(
                snapshot=v.first,
                until=v.last,
                time=v.time,
                kind=cast(Any, v.kind),
                mode=v.mode,
                mtime_ns=v.mtime_ns,
                size=v.size,
            )
            for v in found
        ]

    def send(items: list[VersionRecord]) -> Deferred[None]:
        return _send_pages(peer, items, lambda r: 0, lambda page, done: VersionList(message.rid, page, done))

    return ctx.admit(
        message, lambda: ctx.run_for(handle, Right.READ, "listing versions", records).addCallback(send)
    )


def on_deleted(ctx: RequestContext, peer: Peer, message: ListDeleted) -> Deferred[None]:
    handle = ctx.handle(message.handle)
    target = handle.target
    root = handle.root
    where = paths.join(root, paths.check_path(message.path))

    def records() -> list[DeletedRecord]:
        return [
            DeletedRecord(
                path=paths.relative_to(d.path, root),
                kind=cast(Any, d.kind),
                size=d.size,
                mtime_ns=d.mtime_ns,
                last_snapshot=d.last_snapshot,
                deleted_in=d.deleted_in,
                deleted_time=d.deleted_time,
            )
            for d in target.deleted(where)
        ]

    def send(items: list[DeletedRecord]) -> Deferred[None]:
        return _send_pages(peer, items, lambda r: len(r.path), lambda page, done: DeletedList(message.rid, page, done))

    return ctx.admit(
        message, lambda: ctx.run_for(handle, Right.READ, "listing deleted files", records).addCallback(send)
    )


def on_prune(ctx: RequestContext, peer: Peer, message: Prune) -> Deferred[None]:
    handle = ctx.handle(message.handle)
    target = handle.target
    ctx.require(handle, Right.FULL, "prune")
    if handle.root:
        raise NeoError(
            ErrorCode.PERMISSION_DENIED,
            f"prune applies to a whole target: open {handle.access.target!r} itself, not {handle.root!r} in it",
        )
    if message.keep_tagged and not message.tagged_through:
        raise NeoError(ErrorCode.BAD_ARGUMENT, "prune's keep_tagged needs tagged_through (the newest id listed)")
    policy = RetentionPolicy(
        keep_last=message.keep_last,
        keep_hourly=message.keep_hourly,
        keep_daily=message.keep_daily,
        keep_weekly=message.keep_weekly,
        keep_monthly=message.keep_monthly,
        keep_within=message.keep_within,
        keep_yearly=message.keep_yearly,
        keep_tagged=frozenset(message.keep_tagged),
        tagged_through=message.tagged_through,
    )
    if policy.is_empty():
        raise NeoError(ErrorCode.BAD_ARGUMENT, "prune needs at least one keep rule (it never removes everything)")

    def prune() -> Pruned:
        snapshots = target.snapshots()
        decision = decide([(s.id, s.time) for s in snapshots], policy, time.time())
        removed = set(decision.remove)
        gc = None
        if not message.dry_run:
            if removed:
                target.prune(sorted(removed))
            gc = target.collect_garbage()
        listed = snapshots[-limits.MAX_PRUNE_LISTED :]
        return Pruned(
            rid=message.rid,
            decisions=[
                PruneDecision(s.id, s.time, s.id not in removed, decision.reasons.get(s.id, [])[:8]) for s in listed
            ],
            truncated=len(snapshots) > len(listed),
            kept=len(snapshots) - len(removed),
            removed=len(removed),
            dry_run=message.dry_run,
            chunks_removed=gc.chunks_removed if gc else 0,
            bytes_removed=gc.stored_bytes_removed if gc else 0,
            disk_before=gc.disk_bytes_before if gc else 0,
            disk_after=gc.disk_bytes_after if gc else 0,
        )

    def done(reply: Pruned) -> None:
        log.info(
            "prune: account={account} target={target} kept={kept} removed={removed} dry_run={dry} "
            "reclaimed={reclaimed}",
            account=ctx.account_name,
            target=handle.access.target,
            kept=reply.kept,
            removed=reply.removed,
            dry=reply.dry_run,
            reclaimed=reply.disk_before - reply.disk_after,
        )
        peer.send(reply)

    return ctx.admit(message, lambda: ctx.run_for(handle, Right.FULL, "prune", prune).addCallback(done))


def on_check(ctx: RequestContext, peer: Peer, message: Check) -> Deferred[None]:
    handle = ctx.handle(message.handle)
    target = handle.target
    root = handle.root
    reactor = ctx.services.reactor
    last_sent = [time.monotonic()]
    need = Right.FULL if message.repair else Right.READ  # marking damage changes what pushes must send
    ctx.require(handle, need, "check --repair" if message.repair else "check")

    def send_progress(done_bytes: int, total_bytes: int) -> None:
        if not ctx.closed:
            peer.send(CheckProgress(rid=message.rid, done_bytes=done_bytes, total_bytes=total_bytes))

    def progress(done_bytes: int, total_bytes: int) -> None:  # called in the worker thread
        now = time.monotonic()
        if now - last_sent[0] >= CHECK_PROGRESS_INTERVAL:
            last_sent[0] = now
            reactor.callFromThread(send_progress, done_bytes, total_bytes)

    def check() -> CheckReport:
        # A confined handle checks only the chunks its sub-path references: a read grant on a part of a target
        # must not make the server read all of it, nor hear of damage elsewhere.
        report = target.check(
            message.verify_data, progress, root if handle.view is not None else None, repair=message.repair
        )
        files: list[DamagedFile] = []
        budget = CHECK_REPORT_BYTES
        truncated = False
        for f in report.damaged_files:
            if not paths.is_within(f.path, root):
                continue  # a sub-path handle hears only about its own files
            record = DamagedFile(
                paths.relative_to(f.path, root), list(f.snapshots)[: limits.MAX_ENTRIES], f.chunk, f.why[:500],
                f.marked,
            )
            budget -= 64 + len(record.path.encode()) + 9 * len(record.snapshots) + len(record.why.encode())
            if budget < 0 or len(files) >= limits.MAX_ENTRIES:
                truncated = True
                break
            files.append(record)
        snapshots = list(report.damaged_snapshots)
        problems = [] if root else [p[:500] for p in report.problems]  # target-wide: only for the whole target
        if handle.view is not None:
            # A grant on a sub-path hears about its own files only: not the size of the whole target, nor damage
            # elsewhere.
            mine = sorted({s for f in files for s in f.snapshots})
            return CheckReport(
                rid=message.rid, ok=not files, chunks_checked=report.chunks_checked,
                bytes_checked=report.bytes_checked,
                damaged_chunks=len({f.chunk for f in files}), files=files,
                snapshots=mine[: limits.MAX_PRUNE_LISTED], problems=[], truncated=truncated,
                verified_data=message.verify_data, repaired=report.repaired, marked_chunks=report.marked_chunks,
                lost_chunks=len({f.chunk for f in files if f.marked}),
            )  # fmt: skip
        return CheckReport(
            rid=message.rid,
            ok=report.ok,
            chunks_checked=report.chunks_checked,
            bytes_checked=report.bytes_checked,
            damaged_chunks=len(report.damaged_chunks),
            files=files,
            snapshots=snapshots[: limits.MAX_PRUNE_LISTED],
            problems=problems[:_MAX_PROBLEMS],
            truncated=truncated or len(snapshots) > limits.MAX_PRUNE_LISTED or len(problems) > _MAX_PROBLEMS,
            verified_data=message.verify_data,
            repaired=report.repaired,
            marked_chunks=report.marked_chunks,
            lost_chunks=report.lost_chunks,
        )

    def done(reply: CheckReport) -> None:
        log.info(
            "check: account={account} target={target} ok={ok} chunks={chunks} damaged={damaged} "
            "marked={marked} lost={lost}",
            account=ctx.account_name,
            target=handle.access.target,
            ok=reply.ok,
            chunks=reply.chunks_checked,
            damaged=reply.damaged_chunks,
            marked=reply.marked_chunks,
            lost=reply.lost_chunks,
        )
        peer.send(reply)

    return ctx.admit(message, lambda: ctx.run_for(handle, need, "check", check).addCallback(done))


def _send_pages(
    peer: Peer, items: list[Any], text_bytes: Callable[[Any], int], make: Callable[[list[Any], bool], Message]
) -> Deferred[None]:
    """Send ``items`` in pages (at most MAX_ENTRIES records, about PAGE_BYTES), the last marked done; wait for
    the client's credit between pages. ``text_bytes`` is a record's variable-length text in characters."""

    async def send() -> None:
        page: list[Any] = []
        size = 0
        for item in items:
            page.append(item)
            size += 80 + 4 * text_bytes(item)  # at most 4 UTF-8 bytes per character
            if len(page) >= limits.MAX_ENTRIES or size >= PAGE_BYTES:
                peer.send(make(page, False))
                page, size = [], 0
                await peer.drain()
        peer.send(make(page, True))

    return ensureDeferred(send())


HANDLERS: dict[type, Callable[[RequestContext, Peer, Any], Deferred[None] | None]] = {
    ListSnapshots: on_snapshots,
    ListVersions: on_versions,
    ListDeleted: on_deleted,
    Prune: on_prune,
    Check: on_check,
}
"""The stash requests, merged into the session's dispatch table."""
