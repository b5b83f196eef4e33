"""Where pushes are handled: ``push_begin``, ``have``, ``put``, ``entries``, ``commit`` and ``abort``.

A push's state is its handle's :class:`~neotwist.server.pushstate.PushSlot`; what it is charged against its
owner's quota, and the checks, are :mod:`neotwist.server.quota`'s; the chunks and the snapshot are the
repository's (:class:`~neotwist.server.repository.Push`). This module only sequences them.

Uploads (``put``, ``entries``) are admitted rather than awaited (see :meth:`RequestContext.admit`): consecutive
puts are collected into a batch stored by one worker job (:data:`~neotwist.server.pushstate.PUT_BATCH`), so the
thread hop is paid per batch, not per chunk. ``commit`` is the barrier: it waits for every upload of its handle
before it makes the snapshot.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList, ensureDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from neotwist.server.context import Handle, RequestContext
from neotwist.server.labels import stored_label
from neotwist.server.pushstate import PUT_BATCH, PushRun
from neotwist.server.repository import CommitResult, Target
from neotwist.server.rights import Right, may_push
from neotwist.wire.errors import ErrorCode, NeoError
from neotwist.wire.messages import (
    Abort,
    Commit,
    Committed,
    Have,
    Missing,
    Ok,
    PushBegin,
    PushDeleted,
    PushEntries,
    Put,
)
from neotwist.wire.peer import Peer

log = Logger()


def on_push_begin(ctx: RequestContext, peer: Peer, message: PushBegin) -> Deferred[None]:
    handle = ctx.push_handle(message.handle)
    slot = handle.pushes
    slot.begin()
    target = handle.target
    account = ctx.current_account
    services = ctx.services

    def begin() -> PushRun:
        access = ctx.recheck(handle)
        if message.delete:
            access.require(Right.WRITE, "push --delete", account.name)
        else:
            access.require(Right.APPEND, "push", account.name)
        may_push(access, target.meta.keep_history, account.name)  # the owner may have turned history off since
        charge = services.quota.charge(access)
        push = target.begin_push(handle.root, message.delete, message.parent)
        if access.confined:
            push.confine()
        return PushRun(push, charge)

    def begun(run: PushRun) -> Deferred[None] | None:
        tid = target.meta.id
        if ctx.closed or tid in services.removing or tid in services.removed:
            slot.not_begun()
            d = ctx.work(run.push.abort)
            d.addCallback(lambda _: _raise(handle.removed()))
            return d
        slot.begun(run)
        peer.send(Ok(rid=message.rid))
        return None

    def failed(failure: Failure) -> Failure:
        slot.not_begun()
        return failure

    return ctx.during(handle, ctx.work(begin).addCallbacks(begun, failed))


def _raise(error: NeoError) -> None:
    raise error


def on_have(ctx: RequestContext, peer: Peer, message: Have) -> Deferred[None]:
    handle = ctx.push_handle(message.handle)
    target = handle.target

    def answer(missing: list[bool]) -> None:
        bitmap = bytearray((len(missing) + 7) // 8)
        for i, m in enumerate(missing):
            if m:
                bitmap[i >> 3] |= 1 << (i & 7)
        peer.send(Missing(rid=message.rid, bitmap=bytes(bitmap)))

    missing = target.missing
    if handle.access.confined:
        # Only chunks below the grant's root, or uploaded on this push, count as present (see Push.confine).
        run = handle.pushes.run
        if run is None:
            answer([True] * len(message.ids))
            return succeed(None)
        missing = run.push.missing_confined
    return ctx.admit(
        message, lambda: ctx.run_for(handle, Right.APPEND, "push", missing, message.ids).addCallback(answer)
    )


def on_put(ctx: RequestContext, peer: Peer, message: Put) -> Deferred[None] | None:
    """Collect puts into a batch stored by one worker job: one thread hop per batch, not per chunk. A batch
    goes when it is full, before anything that must see its chunks (commit, abort, close), or at the end of the
    current read (``callLater(0)``), so a lone put never waits."""
    handle = ctx.push_handle(message.handle)
    # Chunks are charged to the push's owner as they arrive: outside a push there is no one to charge.
    handle.pushes.active("put", "chunks are uploaded within a push")
    # Puts whose frames were released but whose batch is not admitted yet are held here, on every handle of
    # the connection: past PUTS_UNADMITTED the next message waits (a partial batch goes on the timer).
    held = ctx.unadmitted.acquire(len(message.data))
    batch = handle.pushes.batch
    batch.add(message)
    if batch.full(PUT_BATCH):
        submitted = submit_puts(ctx, handle)
        if submitted is not None:
            return submitted.addCallback(lambda _: held)
    if batch.timer is None:
        batch.timer = ctx.services.reactor.callLater(0, _submit_partial, ctx, handle)
    return None if held.called else held


def _submit_partial(ctx: RequestContext, handle: Handle) -> None:
    """The end of a read: the batch goes, unless :data:`~neotwist.server.pushstate.PUT_JOBS` of the handle's
    batches are being stored; then it waits for the first of them to be done, collecting the puts after it."""
    batch = handle.pushes.batch
    batch.timer = None
    if batch.may_go_partial:
        submit_puts(ctx, handle)


def submit_puts(ctx: RequestContext, handle: Handle) -> Deferred[None] | None:
    """Send the puts collected on ``handle`` to be stored, as one job once admitted; None when there were
    none. Fires once the batch is admitted (its storing goes on in the background)."""
    slot = handle.pushes
    pending = slot.batch
    batch, data, raw = pending.take()
    run = slot.run
    if not batch or ctx.closed or run is None:
        ctx.unadmitted.release(data)
        return None
    pending.storing += 1
    target = handle.target
    chunks = [(m.id, m.codec, m.size, m.data) for m in batch]
    quota = ctx.services.quota

    def store_batch() -> None:
        quota.store(target, chunks, run.charge)
        if run.charge.confined:
            run.push.note_uploaded([(c[0], len(c[3])) for c in chunks])

    def store() -> Deferred[None]:
        d = ctx.run_for(handle, Right.APPEND, "push", store_batch)
        d.addErrback(_upload_failed, run)
        d.addBoth(give_back)
        return d

    def give_back(result: object) -> object:
        budget.release(raw)
        pending.storing -= 1
        if pending.puts and pending.timer is None and not ctx.closed:
            pending.timer = ctx.services.reactor.callLater(0, _submit_partial, ctx, handle)
        return result

    def admit(_: object) -> Deferred[None]:
        ctx.unadmitted.release(data)
        if ctx.closed:
            budget.release(raw)
            return succeed(None)
        # A rejected chunk is answered with the rid of its own put.
        return ctx.admit(batch[0], store, handle, rids=[m.rid for m in batch])

    # Verifying decompresses what the puts declare: it is held in the connection's memory budget. Until the
    # batch is admitted (memory, then a job slot), it is in ``admitting``, which commit, abort and close wait
    # for as they wait for the jobs: a batch taken but not yet admitted is no less part of the push.
    budget = ctx.memory
    admitting = slot.admitting
    d = budget.acquire(raw).addCallback(admit)
    d.addErrback(_dropped)

    def admitted(result: object) -> object:
        admitting.discard(d)
        return result

    admitting.add(d)
    d.addBoth(admitted)
    return d


def _dropped(failure: Failure) -> None:
    """A batch cancelled before it was admitted: its connection was lost (see :func:`uploads_done`)."""
    failure.trap(CancelledError)


def on_entries(ctx: RequestContext, peer: Peer, message: PushEntries) -> Deferred[None]:
    handle = ctx.push_handle(message.handle)
    run = handle.pushes.active("entries")

    def stage() -> Deferred[None]:
        d = handle.pushes.entries_lock.run(ctx.run_for, handle, Right.APPEND, "push", run.push.add, message.entries)
        d.addErrback(_upload_failed, run)
        return d

    return ctx.admit(message, stage, handle)


def on_deleted_paths(ctx: RequestContext, peer: Peer, message: PushDeleted) -> Deferred[None]:
    handle = ctx.push_handle(message.handle)
    run = handle.pushes.active("deleted_paths")

    def stage() -> Deferred[None]:
        d = handle.pushes.entries_lock.run(
            ctx.run_for, handle, Right.APPEND, "push", run.push.add_deleted, message.paths
        )
        d.addErrback(_upload_failed, run)
        return d

    return ctx.admit(message, stage, handle)


def _upload_failed(failure: Failure, run: PushRun) -> Failure:
    if isinstance(failure.value, NeoError):
        run.failed(failure.value)
    return failure


def on_commit(ctx: RequestContext, peer: Peer, message: Commit) -> Deferred[None]:
    handle = ctx.push_handle(message.handle)
    handle.pushes.active("commit")
    return ctx.during(handle, ensureDeferred(_commit(ctx, peer, message, handle)))


async def _commit(ctx: RequestContext, peer: Peer, message: Commit, handle: Handle) -> None:
    """Wait for the push's uploads, commit it under its owner's quota, then answer ``committed``."""
    await uploads_done(ctx, handle)
    run = handle.pushes.run
    if run is None:  # closed meanwhile
        raise NeoError(ErrorCode.PROTOCOL, "the push was closed")
    if run.failure is not None:
        if run.failure.code == ErrorCode.QUOTA_EXCEEDED:
            await end_push(ctx, handle, "refused (quota)")
            raise NeoError(run.failure.code, f"{run.failure.message}; the push was aborted")
        raise NeoError(run.failure.code, f"the push cannot commit: {run.failure.message}")
    label = stored_label(handle.target.meta.encrypted, message.label, message.sealed_label)
    lock = ctx.services.quota.commit_lock(handle.access.owner_id)
    await lock.acquire()
    try:
        result, files, stored_bytes, no_history = await ctx.work(commit, ctx, handle, run, label)
    except NeoError as e:
        if e.code == ErrorCode.QUOTA_EXCEEDED:
            run.reclaim = True
            await end_push(ctx, handle, "refused (quota)")
            raise NeoError(e.code, f"{e.message}; the push was aborted") from None
        raise
    finally:
        lock.release()
    handle.pushes.end()
    if no_history:
        # Before the reply: once the client hears "committed", older snapshots are already gone.
        await ctx.work(handle.target.apply_no_history)
    _committed(ctx, peer, message, handle, result, files, stored_bytes)


def commit(ctx: RequestContext, handle: Handle, run: PushRun, label: bytes) -> tuple[CommitResult, int, int, bool]:
    """The commit itself (blocking, with the owner's commit lock held; named so because a worker's errors name
    their job): the access checked again, the quota's exact check, the snapshot with the stored form of its
    ``label``. Returns it with the files and stored bytes the client may learn, and whether the target keeps no
    history (then pruned before the reply)."""
    account = ctx.current_account
    target = handle.target
    access = ctx.recheck(handle)
    access.require(Right.WRITE if run.push.delete else Right.APPEND, "commit", account.name)
    may_push(access, target.meta.keep_history, account.name)
    # Decided here, under the same check: a target whose history is turned off after this point is pruned
    # by the next full-right commit, never right after an append-right one.
    no_history = not target.meta.keep_history
    check = ctx.services.quota.commit_check(access, run.charge)
    result = run.push.commit(time.time(), check, label)
    if handle.view is None:
        return result, result.snapshot.files, result.stored_bytes, no_history
    # a confined handle learns nothing of the rest of the target
    return result, handle.view.files(result.snapshot.id), 0, no_history


def _committed(
    ctx: RequestContext, peer: Peer, message: Commit, handle: Handle, result: CommitResult, files: int, stored: int
) -> None:
    snap = result.snapshot
    new_chunks, new_bytes = (snap.new_chunks, snap.new_bytes)
    if handle.access.confined:
        # What this push uploaded, not what was new to the store: that would tell whether some content
        # exists elsewhere in the target (the snapshot record keeps the real numbers, for the owner).
        new_chunks, new_bytes = result.uploaded_chunks, result.uploaded_bytes
    log.info(
        "commit: account={account} target={target} root={root!r} snapshot={snapshot} files={files} "
        "changed={changed} new_bytes={new_bytes}",
        account=ctx.account_name,
        target=handle.access.target,
        root=handle.root,
        snapshot=snap.id,
        files=snap.files,
        changed=snap.changed,
        new_bytes=snap.new_bytes,
    )
    peer.send(
        Committed(
            rid=message.rid,
            snapshot=snap.id,
            time=snap.time,
            files=files,
            changed=snap.changed,
            deleted=snap.deleted,
            new_chunks=new_chunks,
            new_bytes=new_bytes,
            stored_bytes=stored,
        )
    )


def on_abort(ctx: RequestContext, peer: Peer, message: Abort) -> Deferred[None]:
    handle = ctx.push_handle(message.handle)
    return ensureDeferred(end_push(ctx, handle, "aborted")).addCallback(lambda _: peer.send(Ok(rid=message.rid)))


async def uploads_done(ctx: RequestContext, handle: Handle) -> None:
    """Submit the puts still collected, then wait until every batch taken on ``handle`` has been admitted and
    every upload admitted on it has finished (successfully or not). Once the connection is lost, batches not
    yet admitted are dropped rather than waited for: the memory they wait for may be held by work that waits
    for the gone client, and the handle (and its target) must be let go."""
    slot = handle.pushes
    submit_puts(ctx, handle)
    while slot.jobs or slot.admitting:
        if ctx.closed:
            for waiting in list(slot.admitting):
                waiting.cancel()
        pending = [*slot.running_jobs(), *slot.admitting]
        if pending:
            await DeferredList([_finished(d) for d in pending])


async def end_push(ctx: RequestContext, handle: Handle, why: str) -> None:
    """Abort the push on ``handle``, if any, once its uploads have finished (close, abort, a lost connection, a
    refused commit); a push a quota refused has its unreferenced chunks collected."""
    await ctx.during(handle, ensureDeferred(_abort_push(ctx, handle, why)))


async def _abort_push(ctx: RequestContext, handle: Handle, why: str) -> None:
    await uploads_done(ctx, handle)
    run = handle.pushes.end()
    if run is None:
        return
    await ctx.work(run.push.abort)
    log.info("push {why}: account={account} target={target}", why=why, account=ctx.account_name,
             target=handle.access.target)  # fmt: skip
    if run.reclaim:
        await ctx.work(reclaim, handle.target)


def reclaim(target: Target) -> None:
    """Collect the chunks no version references (after a push refused by a quota, so nothing of it remains).
    Blocking. Chunks that pushes still running on the target rely on are kept by the collector."""
    result = target.collect_garbage()
    log.info(
        "reclaimed the chunks of a push refused by its quota: {target}: {chunks} chunks, disk {before} -> {after}",
        target=target,
        chunks=result.chunks_removed,
        before=result.disk_bytes_before,
        after=result.disk_bytes_after,
    )


def _finished(d: Deferred[Any]) -> Deferred[None]:
    """A Deferred that fires (with None) when ``d`` has fired, leaving ``d``'s own result for its chain."""
    waiter: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        waiter.callback(None)
        return result

    d.addBoth(fire)
    return waiter


HANDLERS: dict[type, Any] = {
    PushBegin: on_push_begin,
    Have: on_have,
    Put: on_put,
    PushEntries: on_entries,
    PushDeleted: on_deleted_paths,
    Commit: on_commit,
    Abort: on_abort,
}
"""The push requests, merged into the session's dispatch table."""
