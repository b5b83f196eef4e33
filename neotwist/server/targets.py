"""Where targets are listed, opened, closed and removed: the requests that make and end a connection's handles.

``open`` resolves the account's access (:func:`~neotwist.server.context.resolve_access`), creates the target
when a push asks for it, and hands out a :class:`~neotwist.server.context.Handle` holding the target; ``close``
ends the handle's push and releases the target once its running work has ended; ``remove_target`` deletes a
target nobody is pushing to.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from neotwist.chunking import DEFAULT_PARAMS
from neotwist.server.accounts import Grant
from neotwist.server.context import RequestContext, resolve_access
from neotwist.server.pushes import end_push
from neotwist.server.repository import Repository, Target
from neotwist.server.repository.catalog import target_summary
from neotwist.server.repository.records import Chunker, TargetSummary
from neotwist.server.repository.view import RootView
from neotwist.server.rights import Access, Right, may_create, may_push
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, NeoError, ProtocolViolation
from neotwist.wire.messages import (
    ChunkerParams,
    Close,
    ListTargets,
    Ok,
    Open,
    Opened,
    RemoveTarget,
    TargetInfo,
    TargetRemoved,
    Targets,
)
from neotwist.wire.peer import Peer

log = Logger()


def on_targets(ctx: RequestContext, peer: Peer, message: ListTargets) -> Deferred[None]:
    account = ctx.current_account
    accounts, repository = ctx.services.accounts, ctx.services.repository

    def collect() -> list[TargetInfo]:
        found = [] if account.is_sub_account else [_info(t) for t in repository.list_targets(account.id)]
        found += [_granted_info(repository, grant) for grant in accounts.grants_held(account.id)]
        return sorted(found, key=lambda t: t.name)

    def listed(targets: list[TargetInfo]) -> None:
        peer.send(Targets(rid=message.rid, targets=targets))

    return ctx.run(collect).addCallback(listed)


_Found = tuple[Access, Target, bool, tuple[int, float] | None]
"""What an open found: the access, the target (held), whether it existed, and its latest snapshot (id, time)."""


def on_open(ctx: RequestContext, peer: Peer, message: Open) -> Deferred[None]:
    if len(ctx.handles) >= limits.MAX_OPEN_HANDLES:
        raise ProtocolViolation(
            ErrorCode.LIMIT_EXCEEDED, f"at most {limits.MAX_OPEN_HANDLES} targets open on one connection"
        )
    account = ctx.current_account
    repository = ctx.services.repository

    def find() -> _Found:
        access = resolve_access(ctx.services.accounts, account, message.target, message.path)
        access.require(Right.APPEND if message.mode == "push" else Right.READ, message.mode, account.name)
        target = repository.find_target(access.owner_id, access.target)
        try:
            return _held(repository, message, account.name, access, target)
        except BaseException:
            if target is not None:
                repository.release(target)
            raise

    def found(result: _Found) -> None:
        access, target, existed, latest = result
        if ctx.closed:
            repository.release(target)
            return
        if target.meta.id in ctx.services.removing:
            repository.release(target)
            raise NeoError(ErrorCode.NO_SUCH_TARGET, f"target {access.name!r} is being removed")
        handle = ctx.add_handle(access, message.mode, target, message.path)
        peer.send(
            Opened(
                rid=message.rid,
                handle=handle.number,
                exists=existed,
                encrypted=target.meta.encrypted,
                chunker=chunker_params(target.meta.chunker),
                latest=None if latest is None else latest[0],
                latest_time=None if latest is None else latest[1],
                keep_history=target.meta.keep_history,
                key_check=target.meta.key_check,
            )
        )

    return ctx.run(find).addCallback(found)


def chunker_params(chunker: Chunker) -> ChunkerParams:
    """The wire's form of a target's stored chunker parameters."""
    return ChunkerParams(
        cast(Any, chunker.algorithm), chunker.min_size, chunker.avg_size, chunker.max_size, chunker.seed
    )


def _held(repository: Repository, message: Open, account: str, access: Access, target: Target | None) -> _Found:
    """The rest of an open, with ``target`` held (the caller releases it if this raises). Blocking."""
    existed = target is not None
    if target is None:
        if message.mode != "push" or not message.create:
            raise NeoError(
                ErrorCode.NO_SUCH_TARGET,
                f"there is no target {access.name!r} (neo-push creates it; neo-ls lists targets)",
            )
        if message.encrypted and not message.key_check:
            raise NeoError(ErrorCode.PROTOCOL, "an encrypted target is created with its key-check record (key_check)")
        may_create(access, account, keep_history=message.keep_history is not False, encrypted=message.encrypted)
        target = repository.create_target(
            access.owner_id,
            access.target,
            encrypted=message.encrypted,
            chunker=DEFAULT_PARAMS,
            keep_history=message.keep_history is not False,
            key_check=message.key_check if message.encrypted else b"",
        )
    if message.mode == "push" and target.meta.encrypted != message.encrypted:
        raise NeoError(
            ErrorCode.ENCRYPTION_MISMATCH,
            f"target {access.name!r} is "
            + ("encrypted: push with its key" if target.meta.encrypted else "not encrypted")
            + ("" if target.meta.encrypted else ": an encrypted push needs a new target"),
        )
    wanted = message.keep_history
    if message.mode == "push" and wanted is not None and wanted != target.meta.keep_history:
        if access.right < Right.FULL or access.root:
            raise NeoError(
                ErrorCode.PERMISSION_DENIED,
                "changing whether a target keeps history needs the full right on the whole target; "
                f"{account} has {access.right.label}"
                + (f" on {access.name!r}/{message.path}" if access.root else f" on {access.name!r}"),
            )
        refreshed = repository.set_keep_history(access.owner_id, access.target, wanted)
        if refreshed is not None:
            repository.release(target)
            target = refreshed
    if message.mode == "push":
        may_push(access, target.meta.keep_history, account)
    seen = RootView(target, access.grant_root).latest() if access.confined else target.latest()
    latest = None if seen is None else (seen.id, seen.time)
    return access, target, existed, latest


def on_close(ctx: RequestContext, peer: Peer, message: Close) -> Deferred[None]:
    handle = ctx.handle(message.handle)
    del ctx.handles[message.handle]
    d = ensureDeferred(end_push(ctx, handle, "closed"))
    return d.addBoth(ctx.close_handle, handle).addCallback(lambda _: peer.send(Ok(rid=message.rid)))


def on_remove_target(ctx: RequestContext, peer: Peer, message: RemoveTarget) -> Deferred[None]:
    handle = ctx.handle(message.handle)
    target = handle.target
    account = ctx.current_account
    if handle.access.root:
        why = (
            f"{account.name} holds {handle.access.right.label} on a part of {handle.name!r} only"
            if handle.access.confined
            else f"{handle.name!r} is open at a sub-path: open the target itself"
        )
        raise NeoError(ErrorCode.PERMISSION_DENIED, f"removing a target needs the full right on all of it; {why}")
    tid = target.meta.id
    services = ctx.services
    if tid in services.removing:
        raise NeoError(ErrorCode.CONFLICT, f"{handle.name!r} is already being removed")
    busy = sum(
        1
        for other in services.sessions
        for h in other.handles.values()
        if h.target.meta.id == tid and h.pushes.in_progress
    )
    if busy:
        raise NeoError(
            ErrorCode.CONFLICT,
            f"{handle.name!r} has {busy} push(es) in progress: remove it once they have ended",
        )
    services.removing.add(tid)  # from now on no handle opens it and no push begins on it

    def remove() -> tuple[Access, int, int]:
        access = ctx.recheck(handle)
        access.require(Right.FULL, "removing the target", account.name)
        snapshots, stored = target.snapshot_count(), target.usage().stored_bytes
        services.accounts.drop_target_grants(access.owner_id, access.target)
        services.repository.remove_target(target)
        return access, snapshots, stored

    def removed(result: tuple[Access, int, int]) -> None:
        access, snapshots, stored = result
        services.removing.discard(tid)
        services.removed.add(tid)
        if ctx.handles.pop(handle.number, None) is not None:
            ctx.close_handle(None, handle)
        log.info(
            "target removed: account={account} target={target} owner={owner} snapshots={snapshots} "
            "stored_bytes={stored}",
            account=account.name,
            target=access.target,
            owner=access.owner_id,
            snapshots=snapshots,
            stored=stored,
        )
        peer.send(TargetRemoved(rid=message.rid, name=handle.name, snapshots=snapshots, stored_bytes=stored))

    def failed(failure: Failure) -> Failure:
        services.removing.discard(tid)
        return failure

    return ctx.during(handle, ctx.work(remove).addCallbacks(removed, failed))


def _granted_info(repository: Repository, grant: Grant) -> TargetInfo:
    """How a grantee sees a granted target in ``targets``: under the grant's name, with its right and owner, and
    for a grant on a sub-path only what concerns that sub-path (blocking)."""
    extra: dict[str, Any] = {"right": grant.right.label, "owner": grant.owner}
    target = repository.find_target(grant.owner_id, grant.target)
    if target is None:
        return TargetInfo(grant.name, False, 0, None, None, 0, 0, **extra)
    try:
        return _granted_view(target, grant, extra)
    finally:
        repository.release(target)


def _granted_view(target: Target, grant: Grant, extra: dict[str, Any]) -> TargetInfo:
    if grant.path:
        view = RootView(target, grant.path)
        seen = view.latest()
        return TargetInfo(
            name=grant.name,
            encrypted=target.meta.encrypted,
            snapshots=len(view.snapshot_ids()),
            latest=None if seen is None else seen.id,
            latest_time=None if seen is None else seen.time,
            files=0 if seen is None else view.files(seen.id),
            stored_bytes=0,
            **extra,
        )
    return _info(target_summary(target), grant.name, **extra)


def _info(summary: TargetSummary, name: str | None = None, **extra: Any) -> TargetInfo:
    """A target as ``targets`` shows it: under ``name`` (default: its own), with ``extra`` fields."""
    return TargetInfo(
        name=summary.name if name is None else name,
        encrypted=summary.encrypted,
        snapshots=summary.snapshots,
        latest=summary.latest,
        latest_time=summary.latest_time,
        files=summary.files,
        stored_bytes=summary.stored_bytes,
        **extra,
    )


HANDLERS: dict[type, Any] = {
    ListTargets: on_targets,
    Open: on_open,
    Close: on_close,
    RemoveTarget: on_remove_target,
}
"""The target requests, merged into the session's dispatch table."""
