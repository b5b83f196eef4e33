"""Where an owner's sharing is handled: sub-accounts, grants, the shares listing, and its usage against its quota.

These request handlers (over a :class:`~neotwist.server.context.RequestContext`) let an owner (a top-level
account) manage, from the client, what ``neo-admin`` manages on the server: its own sub-accounts and the grants
on its own targets (``neo-share``), and see its usage against its quota (``neo-ls --usage``). Each runs one
blocking call on the account store in the thread pool. A sub-account manages nothing; an owner never learns
whether an account that is not its own sub-account exists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from neotwist import paths
from neotwist.server.accounts import Account, AccountError, AccountExists, parse_public_key
from neotwist.server.context import RequestContext
from neotwist.server.quota import account_usage
from neotwist.server.rights import Right
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, NeoError
from neotwist.wire.messages import (
    GetUsage,
    GrantAccess,
    GrantInfo,
    ListShares,
    Message,
    Ok,
    Revoke,
    Shares,
    SubAccountAdd,
    SubAccountInfo,
    SubAccountRemove,
    SubAccountSet,
    TargetUsageInfo,
    UsageInfo,
)
from neotwist.wire.peer import Peer

log = Logger()


def _manager(ctx: RequestContext) -> Account:
    """The logged-in account, if it may manage sub-accounts and grants (a top-level account)."""
    account = ctx.current_account
    if account.is_sub_account:
        raise NeoError(
            ErrorCode.PERMISSION_DENIED,
            f"{account.name} is a sub-account of {account.parent}: only {account.parent} manages its "
            "sub-accounts and grants",
        )
    return account

def _own_sub_account(ctx: RequestContext, owner: Account, name: str) -> Account:
    """``name`` if it is one of ``owner``'s sub-accounts (blocking); never says whether another exists."""
    sub = ctx.services.accounts.get(name)
    if sub is None or sub.parent_id != owner.id:
        raise NeoError(
            ErrorCode.PERMISSION_DENIED,
            f"{name!r} is not a sub-account of {owner.name} (neo-share ... list shows yours)",
        )
    return sub

def _manage(ctx: RequestContext, message: Message, job: Callable[[], None], what: str) -> Deferred[None]:
    """Run an account-management ``job`` in a thread, answer ok, log ``what``; store errors become clear
    non-fatal errors."""
    account = ctx.current_account

    def run() -> None:
        try:
            job()
        except AccountExists as e:
            raise NeoError(ErrorCode.CONFLICT, f"account name {e.name!r} is taken: choose another") from None
        except AccountError as e:
            raise NeoError(ErrorCode.CONFLICT, str(e)) from None
        except ValueError as e:
            raise NeoError(ErrorCode.BAD_ARGUMENT, str(e)) from None

    def done(_: object) -> None:
        log.info("{what}: by={account}", what=what, account=account.name)
        if ctx.peer is not None:
            ctx.peer.send(Ok(rid=message.rid))

    return ctx.run(run).addCallback(done)

def on_sub_add(ctx: RequestContext, peer: Peer, message: SubAccountAdd) -> Deferred[None]:
    owner = _manager(ctx)
    prefix = owner.name + "."
    if not message.name.startswith(prefix) or message.name == prefix:
        raise NeoError(
            ErrorCode.BAD_NAME,
            f"sub-account names start with {prefix!r}: e.g. {prefix}viewer, not {message.name!r}",
        )
    store = ctx.services.accounts

    def add() -> None:
        lines = _key_lines(message.keys)
        if message.password is None and not lines:
            raise ValueError("give the sub-account a password or an SSH key, or it can never log in")
        if len(store.sub_accounts(owner.name)) >= limits.MAX_SUB_ACCOUNTS:
            raise NeoError(
                ErrorCode.QUOTA_EXCEEDED, f"{owner.name} has {limits.MAX_SUB_ACCOUNTS} sub-accounts already"
            )
        store.add(message.name, message.password, parent=owner.name)
        for line in lines:
            store.add_key(message.name, line)

    return _manage(ctx, message, add, f"sub-account added: {message.name}")

def on_sub_set(ctx: RequestContext, peer: Peer, message: SubAccountSet) -> Deferred[None]:
    owner = _manager(ctx)
    store = ctx.services.accounts
    if message.clear_password and message.password is not None:
        raise NeoError(ErrorCode.BAD_ARGUMENT, "give a new password or clear it, not both")

    def change() -> None:
        _own_sub_account(ctx, owner, message.name)
        lines = _key_lines(message.add_keys)
        if message.password is not None or message.clear_password:
            store.set_password(message.name, message.password)
        for line in lines:
            store.add_key(message.name, line)
        for key in message.remove_keys:
            store.remove_key(message.name, key)

    return _manage(ctx, message, change, f"sub-account changed: {message.name}")

def on_sub_remove(ctx: RequestContext, peer: Peer, message: SubAccountRemove) -> Deferred[None]:
    owner = _manager(ctx)

    def remove() -> None:
        _own_sub_account(ctx, owner, message.name)
        ctx.services.accounts.remove(message.name)

    return _manage(ctx, message, remove, f"sub-account removed: {message.name}")

def on_grant(ctx: RequestContext, peer: Peer, message: GrantAccess) -> Deferred[None]:
    owner = _manager(ctx)
    paths.check_name(message.target, "target name")
    paths.check_path(message.path)
    if message.name is not None:
        paths.check_name(message.name, "grant name")
    store = ctx.services.accounts
    right = Right.parse(message.right)

    def grant() -> None:
        _own_sub_account(ctx, owner, message.grantee)
        given = store.grants_given(owner.id)
        name = message.name or message.target
        renewing = any(g.grantee == message.grantee and g.name == name for g in given)
        if len(given) >= limits.MAX_GRANTS_GIVEN and not renewing:
            raise NeoError(ErrorCode.QUOTA_EXCEEDED, f"{owner.name} has given {limits.MAX_GRANTS_GIVEN} grants")
        store.grant(message.grantee, owner.name, message.target, message.path, right, message.name)

    where = message.target + (f"/{message.path}" if message.path else "")
    return _manage(ctx, message, grant, f"grant: {message.grantee} {right.label} on {where}")

def on_revoke(ctx: RequestContext, peer: Peer, message: Revoke) -> Deferred[None]:
    owner = _manager(ctx)
    store = ctx.services.accounts

    def revoke() -> None:
        sub = store.get(message.grantee)
        grant = None if sub is None else store.find_grant(sub.id, message.name)
        if grant is None or grant.owner_id != owner.id:
            raise NeoError(
                ErrorCode.PERMISSION_DENIED,
                f"{message.grantee!r} holds no grant {message.name!r} on {owner.name}'s targets",
            )
        store.revoke(message.grantee, message.name)

    return _manage(ctx, message, revoke, f"revoke: {message.grantee} {message.name}")

def on_shares(ctx: RequestContext, peer: Peer, message: ListShares) -> Deferred[None]:
    account = ctx.current_account
    store = ctx.services.accounts

    def collect() -> Shares:
        subs = [] if account.is_sub_account else store.sub_accounts(account.name)
        infos = [SubAccountInfo(a.name, a.has_password, len(store.keys(a.name)), a.created) for a in subs]
        given = [(g, g.target, g.path) for g in store.grants_given(account.id)]
        # A grant held on a sub-path is named as its handles see it: a target called by the grant's name, at
        # its root. Where that root lies in the owner's target (its name, the sub-path) is not the grantee's.
        held = [(g, g.name, "") if g.path else (g, g.target, g.path) for g in store.grants_held(account.id)]
        return Shares(
            rid=message.rid,
            sub_accounts=infos,
            grants=[
                GrantInfo(g.grantee, g.owner, target, path, g.right.label, g.name, g.created)  # type: ignore[arg-type]
                for g, target, path in given + held
            ],
        )

    return ctx.run(collect).addCallback(peer.send)

def on_usage(ctx: RequestContext, peer: Peer, message: GetUsage) -> Deferred[None]:
    account = ctx.current_account
    repository = ctx.services.repository

    def measure() -> UsageInfo:
        fresh = ctx.services.accounts.get_by_id(account.id) or account  # quota settings change at once
        usage = account_usage(repository, fresh, count_versions=True)
        return UsageInfo(
            rid=message.rid,
            account=account.name,
            used=usage.used,
            quota=usage.quota,
            stored_bytes=usage.stored_bytes,
            file_versions=usage.file_versions,
            dir_versions=usage.dir_versions,
            per_file=usage.per_file,
            per_dir=usage.per_dir,
            targets=[
                TargetUsageInfo(t.name, t.stored_bytes, t.file_versions, t.dir_versions) for t in usage.targets
            ],
            charged_to=account.parent or "",
        )

    return ctx.run(measure).addCallback(peer.send)


def _key_lines(lines: list[str]) -> list[bytes]:
    """Public key lines from a request, each checked (ValueError naming the bad one), without duplicates."""
    out: list[bytes] = []
    for n, line in enumerate(lines, 1):
        encoded = line.encode("utf-8", "replace")
        try:
            parse_public_key(encoded)
        except ValueError as e:
            raise ValueError(f"key {n}: {e}") from None
        if encoded.strip() not in out:
            out.append(encoded.strip())
    return out


HANDLERS: dict[type, Callable[[RequestContext, Peer, Any], Deferred[None] | None]] = {
    SubAccountAdd: on_sub_add,
    SubAccountSet: on_sub_set,
    SubAccountRemove: on_sub_remove,
    GrantAccess: on_grant,
    Revoke: on_revoke,
    ListShares: on_shares,
    GetUsage: on_usage,
}
"""The account-management requests, merged into the session's dispatch table."""
