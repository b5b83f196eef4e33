"""One authenticated connection's commands: where every protocol request is handled on the server.

A :class:`ServerSession` is the :class:`~neotwist.wire.peer.MessageHandler` of one server-side
:class:`~neotwist.wire.peer.Peer`, whatever carries it (an SSH subsystem channel or a TLS stream). The Peer
hands it one message at a time; each ``on_<message>`` method answers it, except the stash requests (snapshots,
versions, deleted, prune, check: :mod:`neotwist.server.stash`) and account management (sub-accounts, grants,
shares, usage: :mod:`neotwist.server.manage`), whose handlers live in modules of their own. Repository work
(SQLite, pack files, hashing) runs in the reactor's thread pool through ``services.run_blocking``; the reactor
thread only routes messages.

Back-pressure: a handler's Deferred holds the next message back, and only then is the frame's credit returned
to the client. Uploads (``put``, ``entries``) and reads (``have``, ``get``, ``list``) are *admitted* rather
than awaited: each takes a slot of :data:`MAX_BACKGROUND_JOBS` and runs in the background, so several chunks
verify in parallel and a pull's many small ``get`` requests overlap their disk reads; when every slot is
taken the session stops reading, and the client stops sending. ``commit`` is the barrier: it waits for every
upload of its handle before it makes the snapshot.

Access: every ``open`` goes through :func:`resolve_access`, which turns (account, target name, sub-path) into
the owning account, the sub-path that becomes the handle's root, and the right the account holds there. A
handle can never reach outside its root: every path a request names is checked by :mod:`neotwist.paths` and
joined below the root.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredLock,
    DeferredSemaphore,
    ensureDeferred,
    succeed,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

import neotwist
from neotwist import paths
from neotwist.chunking import DEFAULT_PARAMS
from neotwist.server import descriptors, fetch, manage, stash
from neotwist.server.accounts import Account, AccountStore, Grant
from neotwist.server.admission import Ticket
from neotwist.server.budget import ByteBudget
from neotwist.server.fairness import FairRunner
from neotwist.server.filechunks import check_file_chunks
from neotwist.server.repository import Push, Repository, Target, index
from neotwist.server.repository.labels import stored_label
from neotwist.server.repository.push import CommitCharge
from neotwist.server.repository.repository import target_info
from neotwist.server.repository.target import ChunkRejected, OverBudget
from neotwist.server.repository.view import RootView
from neotwist.server.reservations import Reservations
from neotwist.server.rights import Access, GrantView, Right, resolve
from neotwist.server.ssh import RunBlocking, thread_runner
from neotwist.server.throttle import Attempt, LoginThrottle, Throttled, valid_login_name
from neotwist.server.usage import account_usage, grantee_over_quota, over_quota
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, NeoError, ProtocolViolation
from neotwist.wire.messages import (
    Abort,
    Bye,
    Close,
    Commit,
    Committed,
    Entry,
    Get,
    GetFiles,
    Have,
    Hello,
    List,
    Listing,
    ListTargets,
    LoggedIn,
    Login,
    Message,
    Missing,
    Ok,
    Open,
    Opened,
    PushBegin,
    PushDeleted,
    PushEntries,
    Put,
    RemoveTarget,
    TargetInfo,
    TargetRemoved,
    Targets,
    Welcome,
)
from neotwist.wire.peer import Peer

__all__ = ["Access", "Right", "ServerServices", "ServerSession", "make_server_peer", "resolve_access"]

log = Logger()

SOFTWARE = f"neophytos-server/{neotwist.__version__}"

MAX_BACKGROUND_JOBS = 8
"""Admitted requests (uploads and reads) running at once on one connection. Bounds the memory a session holds
beyond its receive window: at most this many chunks (each at most MAX_CHUNK) or read groups."""

READ_GROUP_BYTES = fetch.READ_GROUP_BYTES  # the size of one read group of a get (see server/fetch.py)

MAX_LOGIN_ATTEMPTS = 3
"""Failed ``login`` messages on one connection before the server closes it (after answering the last)."""

PUT_BATCH_BYTES = 4 * 1024 * 1024
"""Chunk bytes collected from consecutive ``put`` messages before one worker job verifies and stores them."""

PUT_BATCH_COUNT = 512
"""Puts collected at most per batch (small chunks)."""

PUT_BATCH_RAW_BYTES = 8 * 1024 * 1024
"""Content bytes (the sizes puts declare) per batch: a 145-byte put of compressed zeros declares 4 MiB, and
verifying it decompresses all of it."""

PUTS_UNADMITTED = 2 * PUT_BATCH_BYTES
"""Put data one connection holds collected or in batches waiting for their turn, over all its handles (plus
one put): past it the session stops reading until a batch is admitted."""

SESSION_MEMORY = 32 * 1024 * 1024
"""One connection's budget (:class:`~neotwist.server.budget.ByteBudget`) for the content of put batches being
verified (decompressed) and the get groups being read and waiting for the client: what requests in flight may
make the server hold beyond the two windows (docs/admin.md adds it all up)."""

PREAUTH_MAX_FRAME = 64 * 1024
"""Largest frame a TLS client may send before it has logged in (hello and login need a few KiB): a connection
that has proved nothing holds at most this much of a partial frame, not MAX_FRAME."""

PREAUTH_MAX_INBOX = 256 * 1024
"""Bytes of requests a TLS client may have queued before it has logged in (while its login is checked)."""

MAX_CONNECTIONS_PER_ACCOUNT = 32
"""Sessions one account may have open at once, over SSH and TLS (bench runs 16 clients of one account)."""

PEER_WINDOW_HONOURED = limits.WINDOW
"""The most of a client's advertised window (up to 256 MiB) the server sends into before the client's credit
returns: those bytes sit in the server's socket buffers while the client does not read."""

ABORT_GRACE = 10.0
"""Seconds a closing connection may take to flush its last frames (an error saying why) before it is aborted."""

LISTING_PAGE_BYTES = 1024 * 1024
"""Approximate encoded bytes per ``listing`` page (also at most MAX_ENTRIES entries per page)."""


def resolve_access(accounts: AccountStore, account: Account, target: str, path: str) -> Access:
    """Where ``account`` lands when it names ``target`` and ``path``: a grant of that name (its owner's target,
    the grant's sub-path joined with ``path`` as the root, the grant's right), else its own target with FULL.

    The one place access is decided. Blocking (one SQLite lookup of the grant, made on every open and again on
    an open handle's next request once the account store changed, so a grant or revoke by neo-admin or neo-share
    applies to the next request at once; see ``ServerSession._recheck``): call it in a worker thread. Raises
    NeoError (BAD_NAME, BAD_PATH; NO_SUCH_TARGET for a sub-account naming something it was not granted).
    """
    paths.check_name(target, "target name")
    paths.check_path(path)
    grant = accounts.find_grant(account.id, target)
    view = None if grant is None else GrantView(grant.owner_id, grant.target, grant.path, grant.right)
    return resolve(account.id, account.name, account.is_sub_account, target, path, view)


@dataclass
class ServerServices:
    """What every session of one server shares: repository, account store, clock and thread runner."""

    repository: Repository
    accounts: AccountStore
    reactor: Any
    run_blocking: RunBlocking | None = None
    sessions: set[ServerSession] = field(default_factory=set)
    throttle: LoginThrottle | None = None  # failed logins, shared with the SSH server (tap.py passes one)
    removing: set[int] = field(default_factory=set)  # target ids being removed: no new handle or push
    removed: set[int] = field(default_factory=set)  # target ids removed while this server ran
    owner_locks: dict[int, DeferredLock] = field(default_factory=dict)  # per owner account: quota check + commit
    reservations: Reservations = field(default_factory=Reservations)  # per owner: upload bytes storing right now

    def owner_lock(self, owner_id: int) -> DeferredLock:
        """The lock that serializes the quota check and commit of every push charged to ``owner_id``, so two
        concurrent pushes cannot both fit under the quota on their own and pass it together."""
        lock = self.owner_locks.get(owner_id)
        if lock is None:
            lock = self.owner_locks[owner_id] = DeferredLock()
        return lock

    def __post_init__(self) -> None:
        if self.run_blocking is None:
            # The pool's threads, taken in turn by the accounts with jobs waiting (not first come first served).
            self.run_blocking = FairRunner(thread_runner(self.reactor), self.reactor.getThreadPool().max)
        if self.throttle is None:
            self.throttle = LoginThrottle(self.reactor)

    @classmethod
    def open(cls, data: Path, reactor: Any, *, bcrypt_rounds: int | None = None) -> ServerServices:
        """Services on a data directory laid out as ``twistd neophytos`` lays it out (accounts, repo)."""
        kwargs = {} if bcrypt_rounds is None else {"bcrypt_rounds": bcrypt_rounds}
        accounts = AccountStore(data / "accounts.sqlite", **kwargs)
        return cls(repository=Repository(data / "repo"), accounts=accounts, reactor=reactor)

    def run(self, f: Callable[..., Any], *args: Any, key: object = None) -> Deferred[Any]:
        """Run the blocking ``f(*args)`` in a worker; ``key`` (an account id) takes turns with the others'.
        Running out of file descriptors there fails with ``unavailable`` (logged once), whatever the work was:
        a login, an open, a push or a pull."""
        runner = self.run_blocking
        assert runner is not None
        d = runner.run(key, f, *args) if isinstance(runner, FairRunner) else runner(f, *args)
        return d.addErrback(_unless_out_of_fds, getattr(f, "__name__", "a request"))


@dataclass
class _Handle:
    """An open target on one connection."""

    number: int
    access: Access
    mode: str  # "read" or "push"
    target: Target | None  # held from the repository until the handle is closed and its work has ended
    push: Push | None = None
    jobs: set[Deferred[None]] = field(default_factory=set)  # uploads of this handle still running
    puts: list[Put] = field(default_factory=list)  # puts collected for the next batch
    put_bytes: int = 0
    put_raw: int = 0  # the sizes the collected puts declare: what verifying them decompresses
    put_timer: Any = None  # the pending callLater that submits a partial batch
    entries_lock: DeferredLock = field(default_factory=DeferredLock)  # entries are staged in order
    failure: NeoError | None = None  # an upload failed: the push may not commit
    snapshots_seen: set[int] = field(default_factory=set)  # snapshots a get already found to exist
    get_hint: tuple[tuple[int | None, str], int] = ((None, ""), 0)  # where the last get's ids ended in its file
    path: str = ""  # the sub-path the client asked for (re-resolved to see grant changes)
    beginning: bool = False  # push_begin is running
    quota_owner: Account | None = None  # the target's owner, when it has a quota (read at push_begin)
    charges: int = 0  # the owner's per-file/per-dir charges at push_begin
    reclaim: bool = False  # a quota refused this push: collect its unreferenced chunks when it ends
    view: RootView | None = None  # set for a handle confined to a granted sub-path: what it may learn
    # Since the last push on this handle ended: bytes of every chunk put, and what those puts added to the store
    # (less when the store had some already). A confined push's quota checks use the first instead of the
    # second, so their outcome never depends on what the rest of the target holds (see _store_confined).
    uploaded_bytes: int = 0
    stored_new: int = 0
    quota_lock: threading.Lock = field(default_factory=threading.Lock)  # one confined quota check+store at a time
    # The access as last re-resolved (and the target then still in the catalog), with the account store's and
    # the catalog's generations read before that: valid while both keep those values (see _recheck).
    resolved: tuple[tuple[int, int], Access] | None = None
    # The hold on the target: "open", then "closing" once the handle is closed (its requests still running keep
    # the target held: ``busy`` counts them), then "released" (see ServerSession._close_handle).
    state: Literal["open", "closing", "released"] = "open"
    busy: int = 0

    @property
    def root(self) -> str:
        return self.access.root

    @property
    def name(self) -> str:
        """The target's name as the client knows it (a grant's name or its own target's)."""
        return self.access.name or self.access.target


class LoginRevoked(NeoError):
    """The session's account was removed, or its password changed or a key removed, since it logged in."""

    def __init__(self) -> None:
        super().__init__(
            ErrorCode.AUTH_REQUIRED,
            "this account was removed, or its password or keys changed, since this connection logged in: "
            "connect and log in again",
        )


class ServerSession:
    """The commands of one connection. ``account`` is set by SSH before the first frame, or by ``login``."""

    def __init__(
        self, services: ServerServices, account: Account | None, address: str, ticket: Ticket | None = None
    ) -> None:
        self.services = services
        self.account = account
        self.address = address
        self.ticket = ticket  # a place among the connections not yet logged in (TLS): given up at login
        self.login_required = account is None
        self._hello_seen = False
        self._failed_logins = 0
        self._handles: dict[int, _Handle] = {}
        self._next_handle = 1
        self._slots = DeferredSemaphore(MAX_BACKGROUND_JOBS)
        self._memory = ByteBudget(SESSION_MEMORY)  # put batches being verified, get groups being read and sent
        self._unadmitted = ByteBudget(PUTS_UNADMITTED)  # put data collected, its batch not yet admitted
        self._closed = False
        self.peer: Peer | None = None
        clock = services.reactor
        self._login_timer = clock.callLater(limits.LOGIN_TIMEOUT, self._login_timed_out) if account is None else None
        self._login_turn: Deferred[Attempt] | None = None
        self._idle_timer = clock.callLater(limits.IDLE_TIMEOUT, self._idle_timed_out)
        self._account_seen: int | None = None  # the account store's generation when the account last checked out
        self._revoked = False  # the account was removed or its credentials changed: the session is ending
        self._abort_timer: Any = None  # a close waiting for the peer: abort when it fires (_hang_up)
        services.sessions.add(self)

    # --- dispatch --------------------------------------------------------------------------------------

    def message_received(self, peer: Peer, message: Message) -> Deferred[None] | None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(limits.IDLE_TIMEOUT)
        kind = type(message)
        if kind is Hello:
            self.on_hello(peer, message)  # type: ignore[arg-type]
            return None
        if not self._hello_seen:
            raise ProtocolViolation(ErrorCode.PROTOCOL, f"{kind.__name__} before hello")
        if kind is Bye:
            self.on_bye(peer, message)  # type: ignore[arg-type]
            return None
        if kind is Login:
            return self.on_login(peer, message)  # type: ignore[arg-type]
        if self.account is None:
            raise NeoError(ErrorCode.AUTH_REQUIRED, "log in first (login message)")
        if self._revoked:
            raise LoginRevoked()
        handler = self._handlers.get(kind)
        if handler is None:
            raise ProtocolViolation(ErrorCode.PROTOCOL, f"{kind.__name__} is not a request")
        result = handler(self, peer, message)
        return None if result is None else result.addErrback(self._hang_up_if_revoked)

    # --- the account behind the session ------------------------------------------------------------------------

    def check_account(self) -> None:
        """Refuse (LoginRevoked) once the account this session logged in as was removed, or its password changed
        or one of its keys was removed, by neo-admin or its owner (blocking). Called before the work of every
        request that reaches the store (:meth:`run`, :meth:`_recheck`), so such a change ends the connections
        already open at their next request. Cheap while the account store is unchanged: one generation read."""
        account = self.account
        if account is None:
            return
        accounts = self.services.accounts
        seen = accounts.generation()  # read before the account: a change after it moves it on again
        if seen == self._account_seen:
            return
        if not account.same_login(accounts.get_by_id(account.id)):
            self._revoked = True
            raise LoginRevoked()
        self._account_seen = seen

    def run(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run the blocking ``f(*args)`` of a request in a worker, once :meth:`check_account` let it through."""

        def job() -> Any:
            self.check_account()
            return f(*args)

        job.__name__ = getattr(f, "__name__", "job")
        return self._work(job)

    def _work(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run the blocking ``f(*args)`` in a worker, in this account's turn (:mod:`neotwist.server.fairness`)."""
        return self.services.run(f, *args, key=None if self.account is None else self.account.id)

    def _hang_up_if_revoked(self, failure: Failure) -> Failure:
        """After the error reply to a request refused by :meth:`check_account` is queued: close the connection."""
        if failure.check(LoginRevoked) and not self._closed:
            self.services.reactor.callLater(0, self._hang_up, "login revoked")
        return failure

    # --- session -----------------------------------------------------------------------------------------

    def on_hello(self, peer: Peer, message: Hello) -> None:
        if self._hello_seen:
            raise ProtocolViolation(ErrorCode.PROTOCOL, "second hello")
        if message.version != limits.PROTOCOL_VERSION:
            raise ProtocolViolation(
                ErrorCode.UNSUPPORTED_VERSION,
                f"this server speaks protocol version {limits.PROTOCOL_VERSION}, not {message.version}",
            )
        if self.account is not None:
            self._check_connections(self.account)
        self._hello_seen = True
        peer.send(
            Welcome(
                rid=message.rid,
                version=limits.PROTOCOL_VERSION,
                software=SOFTWARE,
                window=peer.window,
                login_required=self.account is None,
                account="" if self.account is None else self.account.name,
                features=[limits.FEATURE_PING, limits.FEATURE_GET_FILES, limits.FEATURE_BYTE_NAMES],
            )
        )

    def on_login(self, peer: Peer, message: Login) -> Deferred[None]:
        if self.account is not None:
            raise NeoError(ErrorCode.PROTOCOL, f"already logged in as {self.account.name}")
        throttle = self.services.throttle
        assert throttle is not None
        # The name is client text: only a valid account name is logged or becomes a throttle key (control
        # characters could forge log lines; random names would only churn the throttle's memory).
        name = valid_login_name(message.account)
        shown = name if name is not None else "(invalid name)"

        def throttled(failure: Failure) -> None:
            failure.trap(Throttled)
            self._count_failed_login(peer)
            log.info("login throttled: account={account} address={address} method=password wait={wait:.0f}",
                     account=shown, address=self.address, wait=failure.value.wait)  # fmt: skip
            raise NeoError(ErrorCode.THROTTLED, failure.value.message)

        def refuse() -> None:
            self._count_failed_login(peer)
            log.info("login failed: account={account} address={address} method=password", account=shown,
                     address=self.address)  # fmt: skip
            raise NeoError(ErrorCode.AUTH_FAILED, "wrong account or password")

        def check(attempt: Attempt) -> Deferred[None]:
            """Admitted by the throttle (which bounds the checks of this account and address running at once, so a
            burst of connections gets no more guesses than it allows): the bcrypt check, in a thread."""
            self._login_turn = None  # admitted: no longer withdrawn when the connection goes

            def checked(account: Account | None) -> None:
                if account is None:
                    throttle.settle(attempt, False)
                    refuse()
                    return
                throttle.settle(attempt, True)
                self._check_connections(account)
                self.account = account
                self._cancel_login_timer()
                peer.max_frame, peer.max_inbox = limits.MAX_FRAME, None
                if self.ticket is not None:
                    self.ticket.authenticated()
                log.info(
                    "login: account={account} address={address} method=password",
                    account=account.name,
                    address=self.address,
                )
                peer.send(LoggedIn(rid=message.rid, account=account.name))

            def errored(failure: Failure) -> Failure:
                throttle.settle(attempt, None)  # not a wrong password: an error of ours
                return failure

            if name is None:  # no such account can exist: no bcrypt to spend
                throttle.settle(attempt, False)
                refuse()
            d = self.services.run(self.services.accounts.verify_password, message.account, message.password)
            return d.addCallbacks(checked, errored)

        # Kept so that a connection lost while its login waits for its turn withdraws it (connection_lost).
        self._login_turn = throttle.begin(name, self.address)
        return self._login_turn.addCallbacks(check, throttled)

    def _check_connections(self, account: Account) -> None:
        """Refuse (fatally) a session over MAX_CONNECTIONS_PER_ACCOUNT for ``account``: each holds memory (see
        SESSION_MEMORY) and worker time, and one tenant must not take them all."""
        others = sum(
            1 for s in self.services.sessions if s is not self and s.account is not None and s.account.id == account.id
        )
        if others >= MAX_CONNECTIONS_PER_ACCOUNT:
            log.info("connection refused: account={account} address={address}: {n} connections open",
                     account=account.name, address=self.address, n=others)  # fmt: skip
            raise NeoError(
                ErrorCode.LIMIT_EXCEEDED,
                f"account {account.name} has {others} connections open, the most this server allows: "
                "close some (or wait for them to end) and retry",
            )

    def _count_failed_login(self, peer: Peer) -> None:
        self._failed_logins += 1
        if self._failed_logins >= MAX_LOGIN_ATTEMPTS:
            self.services.reactor.callLater(0, peer.close)  # after the error reply is queued

    def on_bye(self, peer: Peer, message: Bye) -> None:
        peer.send(Bye(rid=message.rid))
        peer.close()

    # --- targets -----------------------------------------------------------------------------------------

    def on_targets(self, peer: Peer, message: ListTargets) -> Deferred[None]:
        account = self._account
        accounts, repository = self.services.accounts, self.services.repository

        def collect() -> list[TargetInfo]:
            found = [] if account.is_sub_account else repository.list_targets(account.id)
            found += [_granted_info(repository, grant) for grant in accounts.grants_held(account.id)]
            return sorted(found, key=lambda t: t.name)

        def listed(targets: list[TargetInfo]) -> None:
            peer.send(Targets(rid=message.rid, targets=targets))

        return self.run(collect).addCallback(listed)

    def on_open(self, peer: Peer, message: Open) -> Deferred[None]:
        if len(self._handles) >= limits.MAX_OPEN_HANDLES:
            raise ProtocolViolation(
                ErrorCode.LIMIT_EXCEEDED, f"at most {limits.MAX_OPEN_HANDLES} targets open on one connection"
            )
        account = self._account
        repository = self.services.repository

        def find() -> tuple[Access, Target, bool, Any]:
            access = resolve_access(self.services.accounts, account, message.target, message.path)
            access.require(Right.APPEND if message.mode == "push" else Right.READ, message.mode, account.name)
            target = repository.find_target(access.owner_id, access.target)
            try:
                return held(access, target)
            except BaseException:
                if target is not None:
                    repository.release(target)
                raise

        def held(access: Access, target: Target | None) -> tuple[Access, Target, bool, Any]:
            """The rest of find, with ``target`` held (the caller releases it if this raises)."""
            existed = target is not None
            if target is None:
                if message.mode != "push" or not message.create:
                    raise NeoError(
                        ErrorCode.NO_SUCH_TARGET,
                        f"there is no target {access.name!r} (neo-push creates it; neo-ls lists targets)",
                    )
                if message.encrypted and not message.key_check:
                    raise NeoError(
                        ErrorCode.PROTOCOL, "an encrypted target is created with its key-check record (key_check)"
                    )
                _may_create(access, account.name, keep_history=message.keep_history is not False,
                            encrypted=message.encrypted)  # fmt: skip
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
                        f"{account.name} has {access.right.label}"
                        + (f" on {access.name!r}/{message.path}" if access.root else f" on {access.name!r}"),
                    )
                refreshed = repository.set_keep_history(access.owner_id, access.target, wanted)
                if refreshed is not None:
                    repository.release(target)
                    target = refreshed
            if message.mode == "push":
                _may_push(access, target, account.name)
            if access.confined:
                seen = RootView(target, access.grant_root).latest()
                latest = None if seen is None else (seen.id, seen.time)
            else:
                info = target.latest()
                latest = None if info is None else (info.id, info.time)
            return access, target, existed, latest

        def found(result: tuple[Access, Target, bool, Any]) -> None:
            access, target, existed, latest = result
            if self._closed:
                repository.release(target)
                return
            if target.meta.id in self.services.removing:
                repository.release(target)
                raise NeoError(ErrorCode.NO_SUCH_TARGET, f"target {access.name!r} is being removed")
            number = self._next_handle
            self._next_handle = number + 1 if number < 2**31 - 1 else 1
            view = RootView(target, access.grant_root) if access.confined else None
            self._handles[number] = _Handle(number, access, message.mode, target, path=message.path, view=view)
            peer.send(
                Opened(
                    rid=message.rid,
                    handle=number,
                    exists=existed,
                    encrypted=target.meta.encrypted,
                    chunker=target.meta.chunker,
                    latest=None if latest is None else latest[0],
                    latest_time=None if latest is None else latest[1],
                    keep_history=target.meta.keep_history,
                    key_check=target.meta.key_check,
                )
            )

        return self.run(find).addCallback(found)

    def on_close(self, peer: Peer, message: Close) -> Deferred[None]:
        handle = self._handle(message.handle)
        del self._handles[message.handle]
        d = ensureDeferred(self._end_push(handle, "closed"))
        return d.addBoth(self._close_handle, handle).addCallback(lambda _: peer.send(Ok(rid=message.rid)))

    # --- push --------------------------------------------------------------------------------------------

    def on_push_begin(self, peer: Peer, message: PushBegin) -> Deferred[None]:
        handle = self._push_handle(message.handle)
        if handle.push is not None or handle.beginning:
            raise NeoError(ErrorCode.PROTOCOL, "a push is already in progress on this handle")
        target = handle.target
        assert target is not None
        account = self._account
        handle.beginning = True

        def begin() -> Push:
            access = self._recheck(handle)
            if message.delete:
                access.require(Right.WRITE, "push --delete", account.name)
            else:
                access.require(Right.APPEND, "push", account.name)
            _may_push(access, target, account.name)  # the owner may have turned history off since the open
            owner = self.services.accounts.get_by_id(access.owner_id)
            if owner is not None and owner.quota_bytes is not None:
                handle.quota_owner = owner
                handle.charges = account_usage(self.services.repository, owner).charges
            else:
                handle.quota_owner = None
            push = target.begin_push(handle.root, message.delete, message.parent)
            if access.confined:
                push.confine()
            return push

        def begun(push: Push) -> Deferred[None] | None:
            handle.beginning = False
            if self._closed or target.meta.id in self.services.removing or target.meta.id in self.services.removed:
                d = self._work(push.abort)
                d.addCallback(lambda _: self._raise_removed(handle))
                return d
            handle.push = push
            handle.failure = None
            peer.send(Ok(rid=message.rid))
            return None

        def failed(failure: Failure) -> Failure:
            handle.beginning = False
            return failure

        return self._during(handle, self._work(begin).addCallbacks(begun, failed))

    def on_have(self, peer: Peer, message: Have) -> Deferred[None]:
        handle = self._push_handle(message.handle)
        target = handle.target
        assert target is not None

        def answer(missing: list[bool]) -> None:
            bitmap = bytearray((len(missing) + 7) // 8)
            for i, m in enumerate(missing):
                if m:
                    bitmap[i >> 3] |= 1 << (i & 7)
            peer.send(Missing(rid=message.rid, bitmap=bytes(bitmap)))

        if handle.access.confined:
            # Only chunks below the grant's root, or uploaded on this push, count as present (see Push.confine).
            push = handle.push
            if push is None:
                answer([True] * len(message.ids))
                return succeed(None)
            return self._admit(
                message,
                lambda: self._run_for(handle, Right.APPEND, "push", push.missing_confined, message.ids).addCallback(
                    answer
                ),
            )
        return self._admit(
            message,
            lambda: self._run_for(handle, Right.APPEND, "push", target.missing, message.ids).addCallback(answer),
        )

    def on_put(self, peer: Peer, message: Put) -> Deferred[None] | None:
        """Collect puts into a batch stored by one worker job: one thread hop per PUT_BATCH_BYTES, not per
        chunk. A batch goes when it is full, before anything that must see its chunks (commit, abort, close),
        or at the end of the current read (``callLater(0)``), so a lone put never waits."""
        handle = self._push_handle(message.handle)
        if handle.push is None:
            # Chunks are charged to the push's owner as they arrive: outside a push there is no one to charge.
            raise NeoError(ErrorCode.PROTOCOL, "put before push_begin (chunks are uploaded within a push)")
        # Puts whose frames were released but whose batch is not admitted yet are held here, on every handle of
        # the connection: past PUTS_UNADMITTED the next message waits (a partial batch goes on the timer).
        held = self._unadmitted.acquire(len(message.data))
        handle.puts.append(message)
        handle.put_bytes += len(message.data)
        handle.put_raw += message.size
        if (
            handle.put_bytes >= PUT_BATCH_BYTES
            or handle.put_raw >= PUT_BATCH_RAW_BYTES
            or len(handle.puts) >= PUT_BATCH_COUNT
        ):
            submitted = self._submit_puts(handle)
            if submitted is not None:
                return submitted.addCallback(lambda _: held)
        if handle.put_timer is None:
            handle.put_timer = self.services.reactor.callLater(0, self._submit_puts, handle)
        return None if held.called else held

    def _submit_puts(self, handle: _Handle) -> Deferred[None] | None:
        if handle.put_timer is not None:
            if handle.put_timer.active():
                handle.put_timer.cancel()
            handle.put_timer = None
        batch, handle.puts, data, handle.put_bytes = handle.puts, [], handle.put_bytes, 0
        raw, handle.put_raw = handle.put_raw, 0
        if not batch or self._closed:
            return None
        target = handle.target
        assert target is not None
        chunks = [(m.id, m.codec, m.size, m.data) for m in batch]
        push = handle.push if handle.access.confined else None
        owner = handle.quota_owner
        repository = self.services.repository

        def store_batch() -> None:
            if handle.access.confined:
                self._store_confined(handle, chunks, owner)
            elif owner is not None and owner.quota_bytes is not None:
                # Refuse early, before the commit, once the stored bytes would pass the quota. Versions were
                # counted at push_begin (handle.charges); the commit checks everything exactly. Batches storing
                # at the same time (this push's, other connections') count by their reservations.
                measured: list[Any] = []

                def measure() -> int:
                    measured.append(account_usage(repository, owner, count_versions=False))
                    return int(measured[0].stored_bytes)

                size = sum(len(c[3]) for c in chunks)
                with self.services.reservations.hold(owner.id, size, measure) as stored:
                    usage = replace(measured[0], per_file=0, per_dir=0)
                    used = stored + handle.charges
                    try:
                        target.store_chunks(chunks, budget=max(0, owner.quota_bytes - used))
                    except OverBudget as e:
                        handle.reclaim = True
                        if handle.access.granted:
                            raise grantee_over_quota(owner.name, e.needed, "this push's upload") from None
                        raise over_quota(replace(usage, stored_bytes=used), e.needed, "this push's upload") from None
            else:
                target.store_chunks(chunks)
            if push is not None:
                push.note_uploaded([(c[0], len(c[3])) for c in chunks])

        def store() -> Deferred[None]:
            d = self._run_for(handle, Right.APPEND, "push", store_batch)
            d.addErrback(self._upload_failed, handle)
            d.addBoth(give_back)
            return d

        def give_back(result: object) -> object:
            budget.release(raw)
            return result

        def admit(_: object) -> Deferred[None]:
            self._unadmitted.release(data)
            if self._closed:
                budget.release(raw)
                return succeed(None)
            # A rejected chunk is answered with the rid of its own put.
            return self._admit(batch[0], store, handle, rids=[m.rid for m in batch])

        # Verifying decompresses what the puts declare: it is held in the connection's memory budget.
        budget = self._memory
        return budget.acquire(raw).addCallback(admit)

    def _store_confined(
        self, handle: _Handle, chunks: Sequence[tuple[bytes, int, int, bytes]], owner: Account | None
    ) -> None:
        """Store a batch for a push confined to a granted sub-path (blocking), without telling it what the rest of
        the target holds: with a quota, the early check charges every byte uploaded on this push, whether or not
        the store already had it (the owner's usage minus what this push's puts really added, plus all they
        uploaded), so being refused, and the bytes the refusal names, do not depend on deduplication against
        data outside the grant. Checks and stores of one handle run one at a time, so the counts stay exact."""
        target = handle.target
        assert target is not None
        with handle.quota_lock:
            uploading = sum(len(c[3]) for c in chunks)
            if owner is None or owner.quota_bytes is None:
                _new, added = target.store_chunks_sized(chunks)
            else:
                repository = self.services.repository

                def measure() -> int:
                    return account_usage(repository, owner, count_versions=False).stored_bytes

                with self.services.reservations.hold(owner.id, uploading, measure) as stored:
                    used = stored - handle.stored_new + handle.uploaded_bytes + handle.charges
                    if used + uploading > owner.quota_bytes:
                        handle.reclaim = True
                        raise grantee_over_quota(owner.name, handle.uploaded_bytes + uploading, "this push's upload")
                    _new, added = target.store_chunks_sized(chunks)
            handle.stored_new += added
            handle.uploaded_bytes += uploading

    def on_entries(self, peer: Peer, message: PushEntries) -> Deferred[None]:
        handle = self._push_handle(message.handle)
        push = handle.push
        if push is None:
            raise NeoError(ErrorCode.PROTOCOL, "entries before push_begin")

        def stage() -> Deferred[None]:
            d = handle.entries_lock.run(self._run_for, handle, Right.APPEND, "push", push.add, message.entries)
            d.addErrback(self._upload_failed, handle)
            return d

        return self._admit(message, stage, handle)

    def on_deleted_paths(self, peer: Peer, message: PushDeleted) -> Deferred[None]:
        handle = self._push_handle(message.handle)
        push = handle.push
        if push is None:
            raise NeoError(ErrorCode.PROTOCOL, "deleted_paths before push_begin")

        def stage() -> Deferred[None]:
            d = handle.entries_lock.run(self._run_for, handle, Right.APPEND, "push", push.add_deleted, message.paths)
            d.addErrback(self._upload_failed, handle)
            return d

        return self._admit(message, stage, handle)

    def on_commit(self, peer: Peer, message: Commit) -> Deferred[None]:
        handle = self._push_handle(message.handle)
        if handle.push is None:
            raise NeoError(ErrorCode.PROTOCOL, "commit before push_begin")
        return self._during(handle, ensureDeferred(self._commit(peer, message, handle)))

    async def _commit(self, peer: Peer, message: Commit, handle: _Handle) -> None:
        await self._uploads_done(handle)
        push = handle.push
        if push is None:  # closed meanwhile
            raise NeoError(ErrorCode.PROTOCOL, "the push was closed")
        if handle.failure is not None:
            if handle.failure.code == ErrorCode.QUOTA_EXCEEDED:
                await self._end_push(handle, "refused (quota)")
                raise NeoError(handle.failure.code, f"{handle.failure.message}; the push was aborted")
            raise NeoError(handle.failure.code, f"the push cannot commit: {handle.failure.message}")
        account = self._account
        assert handle.target is not None
        target: Target = handle.target
        label = stored_label(target.meta.encrypted, message.label, message.sealed_label)
        services = self.services

        def commit() -> tuple[Any, int, int, bool]:
            access = self._recheck(handle)
            access.require(Right.WRITE if push.delete else Right.APPEND, "commit", account.name)
            _may_push(access, target, account.name)
            # Decided here, under the same check: a target whose history is turned off after this point is pruned
            # by the next full-right commit, never right after an append-right one.
            no_history = not target.meta.keep_history
            check = None
            owner = services.accounts.get_by_id(access.owner_id)
            if owner is not None and owner.quota_bytes is not None:
                # Counted before the writer lock is taken (usage reads every target of the owner); the owner's
                # commits are serialized by the owner lock held around this job, so none slips in between.
                usage = account_usage(services.repository, owner)
                quota = owner.quota_bytes

                # A confined push is charged everything it uploaded, deduplicated or not (see _store_confined).
                used = usage.used - handle.stored_new + handle.uploaded_bytes if access.confined else usage.used

                def check(charge: CommitCharge) -> None:
                    extra = usage.charge(charge.new_files, charge.new_dirs)
                    if used + extra > quota:
                        if access.granted:
                            raise grantee_over_quota(owner.name, charge.new_bytes + extra, "this push")
                        before = replace(usage, stored_bytes=usage.stored_bytes - charge.new_bytes)
                        raise over_quota(before, charge.new_bytes + extra, "this push")

            result = push.commit(time.time(), check, label)
            if handle.view is None:
                return result, result.snapshot.files, result.stored_bytes, no_history
            # a confined handle learns nothing of the rest of the target
            return result, handle.view.files(result.snapshot.id), 0, no_history

        lock = services.owner_lock(handle.access.owner_id)
        await lock.acquire()
        try:
            result, files, stored_bytes, no_history = await self._work(commit)
        except NeoError as e:
            if e.code == ErrorCode.QUOTA_EXCEEDED:
                handle.reclaim = True
                await self._end_push(handle, "refused (quota)")
                raise NeoError(e.code, f"{e.message}; the push was aborted") from None
            raise
        finally:
            lock.release()
        handle.push = None
        snap = result.snapshot
        if no_history:
            # Before the reply: once the client hears "committed", older snapshots are already gone.
            await self._work(target.apply_no_history)
        handle.uploaded_bytes = handle.stored_new = 0
        new_chunks, new_bytes = (snap.new_chunks, snap.new_bytes)
        if handle.access.confined:
            # What this push uploaded, not what was new to the store: that would tell whether some content
            # exists elsewhere in the target (the snapshot record keeps the real numbers, for the owner).
            new_chunks, new_bytes = result.uploaded_chunks, result.uploaded_bytes
        log.info(
            "commit: account={account} target={target} root={root!r} snapshot={snapshot} files={files} "
            "changed={changed} new_bytes={new_bytes}",
            account=account.name,
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
                stored_bytes=stored_bytes,
            )
        )

    def on_abort(self, peer: Peer, message: Abort) -> Deferred[None]:
        handle = self._push_handle(message.handle)
        return ensureDeferred(self._end_push(handle, "aborted")).addCallback(lambda _: peer.send(Ok(rid=message.rid)))

    # --- pull --------------------------------------------------------------------------------------------

    def on_list(self, peer: Peer, message: List) -> Deferred[None]:
        handle = self._handle(message.handle)
        paths.check_path(message.path)
        return self._admit(message, lambda: self._during(handle, ensureDeferred(self._list(peer, message, handle))))

    async def _list(self, peer: Peer, message: List, handle: _Handle) -> None:
        target = handle.target
        assert target is not None
        root = handle.root

        def start() -> tuple[int, Iterator[Entry]]:
            self._recheck(handle)
            snapshot = self._snapshot_for(handle, message.snapshot)
            where = paths.join(root, message.path)
            try:
                return snapshot, target.list_entries(snapshot, where, message.recursive)
            except NeoError as e:  # say it in the client's terms: its path, its name for the target
                if e.code == ErrorCode.NO_SUCH_PATH:
                    raise NeoError(e.code, self._nothing_at(handle, message.path, snapshot)) from None
                if e.code == ErrorCode.NO_SUCH_SNAPSHOT:
                    raise NeoError(e.code, f"no snapshot {snapshot} in {handle.name!r}") from None
                raise

        snapshot, entries = await self._work(start)

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
            batch, done = await self._work(page)
            if done or batch:
                peer.send(Listing(rid=message.rid, snapshot=snapshot, entries=batch, done=done))
            if done:
                return
            await peer.drain()

    def on_get(self, peer: Peer, message: Get) -> Deferred[None]:
        handle = self._handle(message.handle)
        paths.check_path(message.path)
        if not message.ids:
            raise NeoError(ErrorCode.PROTOCOL, "get names no chunk ids (it is answered by one chunk per id)")
        where, named = paths.join(handle.root, message.path), self.client_path(handle, message.path)
        return self._read_chunks(peer, message, handle, [fetch.Wanted(where, named, message.ids)])

    def on_get_files(self, peer: Peer, message: GetFiles) -> Deferred[None]:
        handle = self._handle(message.handle)
        fetch.check_get_files(message.files)
        wanted = []
        for f in message.files:
            paths.check_path(f.path)
            wanted.append(fetch.Wanted(paths.join(handle.root, f.path), self.client_path(handle, f.path), f.ids))
        return self._read_chunks(peer, message, handle, wanted)

    def _read_chunks(
        self, peer: Peer, message: Get | GetFiles, handle: _Handle, files: list[fetch.Wanted]
    ) -> Deferred[None]:
        job = lambda: self._during(handle, ensureDeferred(self._get(peer, message, handle, files)))  # noqa: E731
        return self._admit(message, job)

    async def _get(self, peer: Peer, message: Get | GetFiles, handle: _Handle, files: list[fetch.Wanted]) -> None:
        """Answer a get or get_files (:func:`neotwist.server.fetch.send_chunks`), after checking in its first
        worker hop that the handle may still read, the snapshot exists and every id belongs to its file."""
        target = handle.target
        assert target is not None
        snapshot = message.snapshot

        def check() -> None:
            self._recheck(handle)  # a revoked or re-pointed grant reads nothing more
            if snapshot not in handle.snapshots_seen:
                self._snapshot_for(handle, snapshot)
                handle.snapshots_seen.add(snapshot)
            for f in files:
                # where the previous get on the same file ended: a large file's gets each read only their part
                hint = handle.get_hint[1] if handle.get_hint[0] == (snapshot, f.where) else 0
                checked = check_file_chunks(target, snapshot, f.where, f.ids, hint)
                if checked is None:
                    raise NeoError(ErrorCode.NO_SUCH_PATH, f"no file {f.named!r} in snapshot {snapshot}")
                absent, end = checked
                if absent is not None:
                    raise NeoError(ErrorCode.CHUNK_NOT_IN_FILE, f"chunk {absent.hex()} is not part of {f.named!r}")
                handle.get_hint = ((snapshot, f.where), end)

        await fetch.send_chunks(
            peer, message.rid, target, files, check, self._work, self._memory, handle.access.target
        )

    # --- target removal (account management is in manage.py) ---------------------------------------------

    def on_remove_target(self, peer: Peer, message: RemoveTarget) -> Deferred[None]:
        handle = self._handle(message.handle)
        target = handle.target
        assert target is not None
        account = self._account
        if handle.access.root:
            why = (
                f"{account.name} holds {handle.access.right.label} on a part of {handle.name!r} only"
                if handle.access.confined
                else f"{handle.name!r} is open at a sub-path: open the target itself"
            )
            raise NeoError(ErrorCode.PERMISSION_DENIED, f"removing a target needs the full right on all of it; {why}")
        tid = target.meta.id
        services = self.services
        if tid in services.removing:
            raise NeoError(ErrorCode.CONFLICT, f"{handle.name!r} is already being removed")
        busy = sum(
            1
            for session in services.sessions
            for h in session._handles.values()
            if h.target is not None and h.target.meta.id == tid and (h.push is not None or h.beginning)
        )
        if busy:
            raise NeoError(
                ErrorCode.CONFLICT,
                f"{handle.name!r} has {busy} push(es) in progress: remove it once they have ended",
            )
        services.removing.add(tid)  # from now on no handle opens it and no push begins on it

        def remove() -> tuple[Access, int, int]:
            access = self._recheck(handle)
            access.require(Right.FULL, "removing the target", account.name)
            snapshots, stored = target.snapshot_count(), target.usage().stored_bytes
            services.accounts.drop_target_grants(access.owner_id, access.target)
            services.repository.remove_target(target)
            return access, snapshots, stored

        def removed(result: tuple[Access, int, int]) -> None:
            access, snapshots, stored = result
            services.removing.discard(tid)
            services.removed.add(tid)
            if self._handles.pop(handle.number, None) is not None:
                self._close_handle(None, handle)
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

        return self._during(handle, self._work(remove).addCallbacks(removed, failed))

    # --- for the handlers in other modules (stash.py, manage.py) ------------------------------------------------------

    def handle(self, number: int) -> _Handle:
        """The open handle ``number``; NeoError(BAD_HANDLE) if there is none."""
        return self._handle(number)

    def target_of(self, handle: _Handle) -> Target:
        assert handle.target is not None
        return handle.target

    def require(self, handle: _Handle, right: Right, operation: str) -> None:
        """Refuse ``operation`` unless the handle's access includes ``right``; the error names both."""
        handle.access.require(right, operation, self._account.name)

    def run_for(self, handle: _Handle, need: Right, what: str, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run a request's blocking work on ``handle`` after re-resolving its access (see :meth:`_run_for`)."""
        return self._run_for(handle, need, what, f, *args)

    def admit(self, message: Message, job: Callable[[], Deferred[None]]) -> Deferred[None]:
        """Run a read-only ``job`` in the background once a job slot is free (see :meth:`_admit`)."""
        return self._admit(message, job)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def current_account(self) -> Account:
        """The authenticated account (handlers only run after authentication)."""
        return self._account

    @property
    def account_name(self) -> str:
        return self.account.name if self.account is not None else "-"

    # --- helpers -----------------------------------------------------------------------------------------

    @property
    def _account(self) -> Account:
        assert self.account is not None
        return self.account

    def _handle(self, number: int) -> _Handle:
        handle = self._handles.get(number)
        if handle is None:
            raise NeoError(ErrorCode.BAD_HANDLE, f"no open handle {number}")
        if handle.target is not None:
            if handle.target.meta.id in self.services.removed:
                self._raise_removed(handle)
            if handle.target.meta.id in self.services.removing:
                raise NeoError(ErrorCode.NO_SUCH_TARGET, f"target {handle.name!r} is being removed")
        return handle

    @staticmethod
    def _snapshot_for(handle: _Handle, snapshot: int | None) -> int:
        """The snapshot a read names (None: the latest), checked to exist (blocking). A confined handle sees only
        its relevant snapshots (:mod:`neotwist.server.repository.view`); any other id does not exist for it."""
        target = handle.target
        assert target is not None
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

    @staticmethod
    def client_path(handle: _Handle, path: str) -> str:
        """``path`` (relative to the handle's root) as the client knows it: below the sub-path it opened. Errors
        name paths this way, never by the handle's root: a single-file handle's requests say '', and a handle
        confined to a grant must not learn where its root lies in the owner's target."""
        return paths.join(handle.path, path)

    def _nothing_at(self, handle: _Handle, path: str, snapshot: int) -> str:
        """Why snapshot ``snapshot`` has nothing at ``path`` (relative to the handle's root), in the client's terms
        (blocking). A path that a kept snapshot before it held was deleted: say in which snapshot and which one
        to restore it from, so the user need not go looking."""
        target = handle.target
        assert target is not None
        named = self.client_path(handle, path)
        try:
            versions = target.versions(paths.join(handle.root, path))
        except NeoError:
            versions = []
        gone = [v for v in versions if v.last is not None and v.last <= snapshot]
        if gone:
            last = gone[-1]
            assert last.last is not None
            kept = (
                handle.view.snapshot_ids() if handle.view is not None else [s.id for s in target.snapshots()]
            )
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

    @staticmethod
    def _raise_removed(handle: _Handle) -> None:
        raise NeoError(ErrorCode.NO_SUCH_TARGET, f"target {handle.name!r} was removed")

    def _recheck(self, handle: _Handle, need: Right | None = None, what: str = "") -> Access:
        """The handle's access as it stands now (blocking): grants can be revoked or changed while a handle is
        open, so every request on a handle checks it again (through :meth:`_run_for`, or itself for the few
        jobs that need the result). A grant that now leads elsewhere, or a target removed meanwhile (also by
        neo-admin in another process), ends the handle's use; with ``need``, a right lowered below it refuses
        ``what`` (PERMISSION_DENIED naming both).

        Resolving costs a connection to the account store and a catalog query under the repository's lock, once
        per have, put batch, entries or get: a grantee pulling many small files would pay it per file. So the
        result is kept on the handle with the account store's and the catalog's generations, read before it was
        resolved, and resolved again only when either moved on: a generation grows after every commit to its
        file, from this process or any other, so a revoke, re-point or removal committed before a request
        started is still seen by that request. An account's own target ignores the account store: nothing but
        its removal can change it (a grant may not take the name of the grantee's own target)."""
        self.check_account()
        services = self.services
        granted = handle.access.granted
        stamp = (services.accounts.generation() if granted else 0, services.repository.generation())
        kept = handle.resolved
        if kept is not None and kept[0] == stamp:
            access = kept[1]
        else:
            access = self._resolve_again(handle)
            handle.resolved = (stamp, access)  # one assignment: jobs of one handle may run on several threads
        if need is not None:
            access.require(need, what, self._account.name)
        return access

    def _resolve_again(self, handle: _Handle) -> Access:
        """Resolve the handle's access from the account store and catalog (blocking); NO_SUCH_TARGET when the
        grant was revoked or now leads elsewhere, or the target was removed (see :meth:`_recheck`)."""
        old = handle.access
        access: Access | None
        if not old.granted:
            access = old
        else:
            try:
                access = resolve_access(self.services.accounts, self._account, handle.name, handle.path)
            except NeoError as e:
                if e.code != ErrorCode.NO_SUCH_TARGET:
                    raise
                access = None  # the grant is gone
        target = handle.target
        moved = access is None or (access.owner_id, access.target, access.root) != (old.owner_id, old.target, old.root)
        if moved or (target is not None and not self.services.repository.is_current(target)):
            raise NeoError(
                ErrorCode.NO_SUCH_TARGET,
                f"{handle.name!r} was revoked, changed or removed since it was opened: open it again",
            )
        assert access is not None
        return access

    def _run_for(self, handle: _Handle, need: Right, what: str, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run the blocking ``f(*args)`` for a request on ``handle`` in a worker, after re-resolving the handle's
        access there (:meth:`_recheck` with ``need``). Every request that reads or changes a target through a
        handle runs its work through here (or rechecks itself first), so a revoke, a narrowed right or a grant
        re-pointed elsewhere stops the very next request on a connection already open, whatever it is
        (test_grants_session checks every handle request)."""

        def job() -> Any:
            self._recheck(handle, need, what)
            return f(*args)

        job.__name__ = getattr(f, "__name__", "job")  # what the job runs, for logs and tests
        return self._during(handle, self._work(job))

    def _during(self, handle: _Handle, d: Deferred[Any]) -> Deferred[Any]:
        """``d`` (work on ``handle``'s target), keeping the target held until ``d`` has fired, even if the handle
        is closed meanwhile: the repository never closes a target under a request still using it."""
        handle.busy += 1

        def done(result: object) -> object:
            handle.busy -= 1
            self._let_go(handle)
            return result

        return d.addBoth(done)

    def _close_handle(self, result: object, handle: _Handle) -> object:
        """``handle`` was closed (taken out of the session's handles, its push ended): its target is released
        once the work still running on it has ended. Passes ``result`` through (a callback)."""
        if handle.state == "open":
            handle.state = "closing"
            self._let_go(handle)
        return result

    def _let_go(self, handle: _Handle) -> None:
        if handle.state == "closing" and handle.busy == 0:
            handle.state = "released"
            if handle.target is not None:
                self.services.repository.release(handle.target)

    def _push_handle(self, number: int) -> _Handle:
        handle = self._handle(number)
        if handle.mode != "push":
            raise NeoError(ErrorCode.PROTOCOL, f"handle {number} was opened for reading, not pushing")
        return handle

    def _admit(
        self,
        message: Message,
        job: Callable[[], Deferred[None]],
        handle: _Handle | None = None,
        rids: list[int] | None = None,
    ) -> Deferred[None]:
        """Run ``job`` in the background once a slot is free; fire (letting the next message in) once admitted.

        A job's NeoError is sent as the error reply to ``message``; anything else is a bug, logged, and
        answered with ``internal``. Upload jobs are tracked on their handle so ``commit`` can wait for them.
        """

        def admitted(_: object) -> None:
            if self._closed:
                self._slots.release()
                return
            try:
                d = job()
            except BaseException:
                d = Deferred()
                d.errback(Failure())
            d.addErrback(self._job_failed, message, rids)
            if handle is None:
                d.addBoth(lambda _: self._slots.release())
                return
            # ``called`` is no test of "finished" (a Deferred waiting on a chained one is called but paused):
            # the job leaves the handle's set from its own last callback.
            handle.jobs.add(d)

            def done(_: object) -> None:
                self._slots.release()
                handle.jobs.discard(d)

            d.addBoth(done)

        return self._slots.acquire().addCallback(admitted)

    def _job_failed(self, failure: Failure, message: Message, rids: list[int] | None = None) -> None:
        peer = self.peer
        if peer is None or self._closed:
            return
        self._hang_up_if_revoked(failure)
        error = failure.value
        if isinstance(error, NeoError):
            rid = message.rid
            if rids is not None and isinstance(error, ChunkRejected) and 0 <= error.index < len(rids):
                rid = rids[error.index]
            peer.reply_error(rid, error)
            return
        log.failure("Session job failed on {kind} (rid {rid})", failure, kind=type(message).__name__, rid=message.rid)
        peer.reply_error(message.rid, NeoError(ErrorCode.INTERNAL, "internal error; see the server log"))

    def _upload_failed(self, failure: Failure, handle: _Handle) -> Failure:
        if isinstance(failure.value, NeoError) and handle.failure is None:
            handle.failure = failure.value
        return failure

    async def _uploads_done(self, handle: _Handle) -> None:
        """Submit the puts still collected, then wait until every upload admitted on ``handle`` has finished
        (successfully or not)."""
        admitted = self._submit_puts(handle)
        if admitted is not None:
            await admitted
        while handle.jobs:
            await DeferredList([_finished(d) for d in list(handle.jobs)])

    async def _end_push(self, handle: _Handle, why: str) -> None:
        await self._during(handle, ensureDeferred(self._abort_push(handle, why)))

    async def _abort_push(self, handle: _Handle, why: str) -> None:
        await self._uploads_done(handle)
        push, handle.push = handle.push, None
        handle.uploaded_bytes = handle.stored_new = 0
        if push is not None:
            await self._work(push.abort)
            log.info(
                "push {why}: account={account} target={target}",
                why=why,
                account=self.account.name if self.account else "?",
                target=handle.access.target,
            )
        if handle.reclaim and handle.target is not None:
            handle.reclaim = False
            await self._work(reclaim, handle.target)

    # --- timers and the end --------------------------------------------------------------------------------

    def _cancel_login_timer(self) -> None:
        if self._login_timer is not None and self._login_timer.active():
            self._login_timer.cancel()
        self._login_timer = None

    def _login_timed_out(self) -> None:
        self._login_timer = None
        log.info("login timed out: address={address}", address=self.address)
        if self.peer is not None:
            self.peer.reply_error(0, NeoError(ErrorCode.AUTH_REQUIRED, "login timed out"))
            self._hang_up("login timed out")

    def _idle_timed_out(self) -> None:
        self._idle_timer = None
        log.info("idle timeout: address={address}", address=self.address)
        # Not peer.close(): that waits for queued frames, which a client that stopped reading never takes.
        self._abort("idle timeout")

    def _hang_up(self, why: str) -> None:
        """Close the connection once what is queued is written, and abort it if it is still there ABORT_GRACE
        seconds later. A close waits for the peer: one that stops reading, or over TLS one that never finished
        its handshake (``TLSMemoryBIOProtocol.loseConnection`` waits for it), would hold the connection and its
        file descriptor for ever."""
        if self.peer is None or self._closed:
            return
        self.peer.close()
        if self._abort_timer is None:
            self._abort_timer = self.services.reactor.callLater(ABORT_GRACE, self._abort, why)

    def _abort(self, why: str) -> None:
        """Drop the connection now, whatever is queued (``abortConnection``: no wait for the peer)."""
        self._abort_timer = None
        transport: Any = self.peer.transport if self.peer is not None else None
        if transport is None or self._closed:
            return
        log.info("connection aborted: account={account} address={address}: {why}", account=self.account_name,
                 address=self.address, why=why)  # fmt: skip
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.loseConnection()

    def connection_lost(self, peer: Peer, reason: Failure) -> None:
        for handle in self._handles.values():
            self._submit_puts(handle)  # chunks already received are kept for the next push
        self._closed = True
        self._cancel_login_timer()
        if self.ticket is not None:
            self.ticket.release()
        if self._login_turn is not None:
            self._login_turn.cancel()  # a login still waiting for its turn at the throttle goes
            self._login_turn = None
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        self._abort_timer = None
        self.services.sessions.discard(self)
        handles, self._handles = list(self._handles.values()), {}
        for handle in handles:
            ensureDeferred(self._end_push(handle, "abandoned")).addErrback(
                lambda f: log.failure("aborting a push after the connection was lost", f)
            ).addBoth(self._close_handle, handle)
        if not peer.ended_cleanly:
            log.info(
                "connection lost: account={account} address={address}: {why}",
                account=self.account.name if self.account else "-",
                address=self.address,
                why=reason.getErrorMessage(),
            )

    _handlers: dict[type, Callable[[ServerSession, Peer, Any], Deferred[None] | None]] = {
        ListTargets: on_targets,
        Open: on_open,
        Close: on_close,
        PushBegin: on_push_begin,
        Have: on_have,
        Put: on_put,
        PushEntries: on_entries,
        PushDeleted: on_deleted_paths,
        Commit: on_commit,
        Abort: on_abort,
        List: on_list,
        Get: on_get,
        GetFiles: on_get_files,
        RemoveTarget: on_remove_target,
        **stash.HANDLERS,
        **manage.HANDLERS,
    }


def _may_create(access: Access, account: str, *, keep_history: bool, encrypted: bool) -> None:
    """Refuse to create a target whose settings would take something from its owner.

    A target created without history drops every older version at each push: creating it so is the same as
    switching history off, which needs the full right on the whole target, so an append grantee (whose promise
    is that nothing it does deletes from history) cannot create its grant's target that way and then overwrite
    what it pushed, or the owner's files, without a trace. An encrypted target binds every path of it to the
    creator's key: a grantee of the whole target may create one (the target then holds only what it pushes, and
    the owner, who keeps the full right, can remove it), but a grantee of a sub-path may not impose its key on
    the rest of the owner's target."""
    whole = access.grant_root == ""
    if not keep_history and (access.right < Right.FULL or not whole):
        raise NeoError(
            ErrorCode.PERMISSION_DENIED,
            "creating a target that keeps no history needs the full right on the whole target; "
            f"{account} has {access.right.label} on " + ("all of" if whole else "a part of") + f" {access.name!r}",
        )
    if encrypted and not whole:
        raise NeoError(
            ErrorCode.PERMISSION_DENIED,
            "creating an encrypted target needs a grant on the whole target (its key binds every path of it); "
            f"{account} has {access.right.label} on a part of {access.name!r} only: the owner creates it first",
        )


def _may_push(access: Access, target: Target, account: str) -> None:
    """A target that keeps no history replaces the only copy of what each push changes (older snapshots are
    pruned after the commit), so pushing there is deleting: it needs the full right, whatever the grant's path.
    This keeps the append (and write) promise that nothing a push does removes anything from history."""
    if not target.meta.keep_history:
        access.require(
            Right.FULL, "pushing to a target that keeps no history (a push there replaces the only copy)", account
        )


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
    return target_info(target, grant.name, **extra)


def _unless_out_of_fds(failure: Failure, what: str) -> Failure:
    """Running out of descriptors is ``unavailable``; a full or failing disk is DISK_FULL or STORAGE (logged
    once per few seconds, without a traceback): neither is an internal error, nor, at login, a wrong password."""
    if descriptors.out_of_fds(failure.value):
        raise descriptors.unavailable(what) from None
    if index.is_storage_failure(failure.value):
        raise index.storage_error(what.replace("_", " "), failure.value) from None
    return failure



def _finished(d: Deferred[Any]) -> Deferred[None]:
    """A Deferred that fires (with None) when ``d`` has fired, leaving ``d``'s own result for its chain."""
    waiter: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        waiter.callback(None)
        return result

    d.addBoth(fire)
    return waiter


def make_server_peer(
    services: ServerServices, account: Account | None, address: str, ticket: Ticket | None = None
) -> Peer:
    """The protocol for one connection: a server Peer driving a new :class:`ServerSession`.

    ``account`` is the SSH-authenticated account, or None for TLS (the session then asks for ``login``, and
    gives ``ticket`` up once logged in).
    """
    session = ServerSession(services, account, address, ticket)
    peer = Peer(session, is_client=False, max_peer_window=PEER_WINDOW_HONOURED)
    if account is None:  # until login: small frames, few of them (see PREAUTH_MAX_FRAME)
        peer.max_frame = PREAUTH_MAX_FRAME
        peer.max_inbox = PREAUTH_MAX_INBOX
    session.peer = peer
    return peer
