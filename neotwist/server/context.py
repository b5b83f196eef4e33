"""What every request handler works with: the server's shared services and one connection's request context.

:class:`ServerServices` is what every connection of one server shares (repository, account store, quotas, the
worker threads). A :class:`RequestContext` is one authenticated connection as its request handlers see it
(:mod:`.targets`, :mod:`.pushes`, :mod:`.reads`, :mod:`.stash`, :mod:`.sharing`): its account, its open
:class:`Handle` s, its job slots and memory budget, and the one way each request runs blocking work.

Blocking work: :meth:`RequestContext.run` (work of the account), :meth:`RequestContext.run_for` (work on a
handle: the handle's access is re-resolved first, in the worker, so a revoke or a narrowed grant stops the very
next request of a connection already open) and :meth:`RequestContext.admit` (background work: uploads and reads
take one of :data:`MAX_BACKGROUND_JOBS` slots and let the next message in as soon as they are admitted). Repository
work (SQLite, pack files, hashing) runs in the reactor's thread pool, in the account's turn
(:mod:`neotwist.server.fairness`); the reactor thread only routes messages.

Access: every ``open`` goes through :func:`resolve_access`, which turns (account, target name, sub-path) into
the owning account, the sub-path that becomes the handle's root, and the right the account holds there. A
handle can never reach outside its root: every path a request names is checked by :mod:`neotwist.paths` and
joined below the root.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.logger import Logger
from twisted.python.failure import Failure

from neotwist import paths
from neotwist.server import descriptors
from neotwist.server.accounts import Account, AccountStore
from neotwist.server.budget import ByteBudget
from neotwist.server.errormap import RejectedChunk, to_wire
from neotwist.server.fairness import FairRunner, RunBlocking, thread_runner
from neotwist.server.pushstate import PUT_BATCH_BYTES, PushSlot
from neotwist.server.quota import Quota
from neotwist.server.repository import Repository, Target, index
from neotwist.server.repository.view import RootView
from neotwist.server.rights import Access, GrantView, Right, resolve
from neotwist.server.throttle import LoginThrottle
from neotwist.wire.errors import ErrorCode, NeoError
from neotwist.wire.messages import Message
from neotwist.wire.peer import Peer

log = Logger()

MAX_BACKGROUND_JOBS = 8
"""Admitted requests (uploads and reads) running at once on one connection. Bounds the memory a session holds
beyond its receive window: at most this many chunks (each at most MAX_CHUNK) or read groups."""

PUTS_UNADMITTED = 2 * PUT_BATCH_BYTES
"""Put data one connection holds collected or in batches waiting for their turn, over all its handles (plus
one put): past it the session stops reading until a batch is admitted."""

SESSION_MEMORY = 32 * 1024 * 1024
"""One connection's budget (:class:`~neotwist.server.budget.ByteBudget`) for the content of put batches being
verified (decompressed) and the get groups being read and waiting for the client: what requests in flight may
make the server hold beyond the two windows (docs/admin.md adds it all up)."""


def resolve_access(accounts: AccountStore, account: Account, target: str, path: str) -> Access:
    """Where ``account`` lands when it names ``target`` and ``path``: a grant of that name (its owner's target,
    the grant's sub-path joined with ``path`` as the root, the grant's right), else its own target with FULL.

    The one place access is decided. Blocking (one SQLite lookup of the grant, made on every open and again on
    an open handle's next request once the account store changed, so a grant or revoke by neo-admin or neo-share
    applies to the next request at once; see :meth:`RequestContext.recheck`): call it in a worker thread. Raises
    NeoError (BAD_NAME, BAD_PATH; NO_SUCH_TARGET for a sub-account naming something it was not granted).
    """
    paths.check_name(target, "target name")
    paths.check_path(path)
    grant = accounts.find_grant(account.id, target)
    view = None if grant is None else GrantView(grant.owner_id, grant.target, grant.path, grant.right)
    return resolve(account.id, account.name, account.is_sub_account, target, path, view)


@dataclass
class ServerServices:
    """What every session of one server shares: repository, account store, quotas, clock and thread runner."""

    repository: Repository
    accounts: AccountStore
    reactor: Any
    run_blocking: RunBlocking | None = None
    sessions: set[RequestContext] = field(default_factory=set)  # every connection's, until it is lost
    throttle: LoginThrottle | None = None  # failed logins, shared with the SSH server (tap.py passes one)
    removing: set[int] = field(default_factory=set)  # target ids being removed: no new handle or push
    removed: set[int] = field(default_factory=set)  # target ids removed while this server ran
    quota: Quota = field(init=False)

    def __post_init__(self) -> None:
        if self.run_blocking is None:
            # The pool's threads, taken in turn by the accounts with jobs waiting (not first come first served).
            self.run_blocking = FairRunner(thread_runner(self.reactor), self.reactor.getThreadPool().max)
        if self.throttle is None:
            self.throttle = LoginThrottle(self.reactor)
        self.quota = Quota(self.repository, self.accounts)

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
        return d.addErrback(_as_answered, getattr(f, "__name__", "a request"))


@dataclass
class Handle:
    """An open target on one connection."""

    number: int
    access: Access
    mode: str  # "read" or "push"
    target: Target  # held from the repository until the handle is closed and its work has ended
    path: str = ""  # the sub-path the client asked for (re-resolved to see grant changes)
    view: RootView | None = None  # set for a handle confined to a granted sub-path: what it may learn
    pushes: PushSlot = field(default_factory=PushSlot)  # the push on this handle, if any (mode "push")
    snapshots_seen: set[int] = field(default_factory=set)  # snapshots a get already found to exist
    get_hint: tuple[tuple[int | None, str], int] = ((None, ""), 0)  # where the last get's ids ended in its file
    # The access as last re-resolved (and the target then still in the catalog), with the account store's and
    # the catalog's generations read before that: valid while both keep those values (see RequestContext.recheck).
    resolved: tuple[tuple[int, int], Access] | None = None
    # The hold on the target: "open", then "closing" once the handle is closed (its requests still running keep
    # the target held: ``busy`` counts them), then "released" (see RequestContext.close_handle).
    state: Literal["open", "closing", "released"] = "open"
    busy: int = 0

    @property
    def root(self) -> str:
        return self.access.root

    @property
    def name(self) -> str:
        """The target's name as the client knows it (a grant's name or its own target's)."""
        return self.access.name or self.access.target

    def client_path(self, path: str) -> str:
        """``path`` (relative to the handle's root) as the client knows it: below the sub-path it opened. Errors
        name paths this way, never by the handle's root: a single-file handle's requests say '', and a handle
        confined to a grant must not learn where its root lies in the owner's target."""
        return paths.join(self.path, path)

    def removed(self) -> NeoError:
        return NeoError(ErrorCode.NO_SUCH_TARGET, f"target {self.name!r} was removed")


class LoginRevoked(NeoError):
    """The session's account was removed, or its password changed or a key removed, since it logged in."""

    def __init__(self) -> None:
        super().__init__(
            ErrorCode.AUTH_REQUIRED,
            "this account was removed, or its password or keys changed, since this connection logged in: "
            "connect and log in again",
        )


class RequestContext:
    """One connection as its request handlers see it. ``account`` is set by SSH before the first frame, or by
    ``login``; handlers run only once it is set. ``hang_up(why)`` closes the connection (the session's)."""

    def __init__(self, services: ServerServices, account: Account | None, hang_up: Callable[[str], None]) -> None:
        self.services = services
        self.account = account
        self.peer: Peer | None = None
        self.closed = False
        self.revoked = False  # the account was removed or its credentials changed: the session is ending
        self.handles: dict[int, Handle] = {}
        self._hang_up = hang_up
        self._next_handle = 1
        self._slots = DeferredSemaphore(MAX_BACKGROUND_JOBS)
        self.memory = ByteBudget(SESSION_MEMORY)  # put batches being verified, get groups being read and sent
        self.unadmitted = ByteBudget(PUTS_UNADMITTED)  # put data collected, its batch not yet admitted
        self._account_seen: int | None = None  # the account store's generation when the account last checked out
        services.sessions.add(self)

    # --- the account -------------------------------------------------------------------------------------

    @property
    def current_account(self) -> Account:
        """The authenticated account (handlers only run after authentication)."""
        assert self.account is not None
        return self.account

    @property
    def account_name(self) -> str:
        return self.account.name if self.account is not None else "-"

    def check_account(self) -> None:
        """Refuse (LoginRevoked) once the account this session logged in as was removed, or its password changed
        or one of its keys was removed, by neo-admin or its owner (blocking). Called before the work of every
        request that reaches the store (:meth:`run`, :meth:`recheck`), so such a change ends the connections
        already open at their next request. Cheap while the account store is unchanged: one generation read."""
        account = self.account
        if account is None:
            return
        accounts = self.services.accounts
        seen = accounts.generation()  # read before the account: a change after it moves it on again
        if seen == self._account_seen:
            return
        if not account.same_login(accounts.get_by_id(account.id)):
            self.revoked = True
            raise LoginRevoked()
        self._account_seen = seen

    def hang_up_if_revoked(self, failure: Failure) -> Failure:
        """After the error reply to a request refused by :meth:`check_account` is queued: close the connection."""
        if failure.check(LoginRevoked) and not self.closed:
            self.services.reactor.callLater(0, self._hang_up, "login revoked")
        return failure

    # --- running work ------------------------------------------------------------------------------------

    def work(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run the blocking ``f(*args)`` in a worker, in this account's turn (:mod:`neotwist.server.fairness`)."""
        return self.services.run(f, *args, key=None if self.account is None else self.account.id)

    def run(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run the blocking ``f(*args)`` of a request in a worker, once :meth:`check_account` let it through."""

        def job() -> Any:
            self.check_account()
            return f(*args)

        job.__name__ = getattr(f, "__name__", "job")
        return self.work(job)

    def run_for(self, handle: Handle, need: Right, what: str, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run the blocking ``f(*args)`` for a request on ``handle`` in a worker, after re-resolving the handle's
        access there (:meth:`recheck` with ``need``). Every request that reads or changes a target through a
        handle runs its work through here (or rechecks itself first), so a revoke, a narrowed right or a grant
        re-pointed elsewhere stops the very next request on a connection already open, whatever it is
        (test_grants_session checks every handle request)."""

        def job() -> Any:
            self.recheck(handle, need, what)
            return f(*args)

        job.__name__ = getattr(f, "__name__", "job")  # what the job runs, for logs and tests
        return self.during(handle, self.work(job))

    def admit(
        self,
        message: Message,
        job: Callable[[], Deferred[None]],
        handle: Handle | None = None,
        rids: list[int] | None = None,
    ) -> Deferred[None]:
        """Run ``job`` in the background once a slot is free; fire (letting the next message in) once admitted.

        A job's NeoError is sent as the error reply to ``message`` (a chunk rejected from a batch of puts: to
        its own put, from ``rids``); anything else is a bug, logged, and answered with ``internal``. Upload jobs
        are tracked on their ``handle`` so ``commit`` can wait for them.
        """

        def admitted(_: object) -> None:
            if self.closed:
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
            jobs = handle.pushes.jobs
            jobs.add(d)

            def done(_: object) -> None:
                self._slots.release()
                jobs.discard(d)

            d.addBoth(done)

        return self._slots.acquire().addCallback(admitted)

    def _job_failed(self, failure: Failure, message: Message, rids: list[int] | None = None) -> None:
        peer = self.peer
        if peer is None or self.closed:
            return
        self.hang_up_if_revoked(failure)
        error = to_wire(failure.value)
        if isinstance(error, NeoError):
            rid = message.rid
            if rids is not None and isinstance(error, RejectedChunk) and 0 <= error.index < len(rids):
                rid = rids[error.index]
            peer.reply_error(rid, error)
            return
        log.failure("Session job failed on {kind} (rid {rid})", failure, kind=type(message).__name__, rid=message.rid)
        peer.reply_error(message.rid, NeoError(ErrorCode.INTERNAL, "internal error; see the server log"))

    # --- handles -----------------------------------------------------------------------------------------

    def add_handle(self, access: Access, mode: str, target: Target, path: str) -> Handle:
        """A new handle on ``target`` (held: the handle releases it once closed and idle)."""
        number = self._next_handle
        self._next_handle = number + 1 if number < 2**31 - 1 else 1
        view = RootView(target, access.grant_root) if access.confined else None
        handle = self.handles[number] = Handle(number, access, mode, target, path=path, view=view)
        return handle

    def handle(self, number: int) -> Handle:
        """The open handle ``number``; NeoError(BAD_HANDLE) if there is none, NO_SUCH_TARGET if its target was
        removed or is being removed."""
        handle = self.handles.get(number)
        if handle is None:
            raise NeoError(ErrorCode.BAD_HANDLE, f"no open handle {number}")
        if handle.target.meta.id in self.services.removed:
            raise handle.removed()
        if handle.target.meta.id in self.services.removing:
            raise NeoError(ErrorCode.NO_SUCH_TARGET, f"target {handle.name!r} is being removed")
        return handle

    def push_handle(self, number: int) -> Handle:
        """:meth:`handle`, refused (PROTOCOL) unless it was opened for pushing."""
        handle = self.handle(number)
        if handle.mode != "push":
            raise NeoError(ErrorCode.PROTOCOL, f"handle {number} was opened for reading, not pushing")
        return handle

    def require(self, handle: Handle, right: Right, operation: str) -> None:
        """Refuse ``operation`` unless the handle's access includes ``right``; the error names both."""
        handle.access.require(right, operation, self.current_account.name)

    def recheck(self, handle: Handle, need: Right | None = None, what: str = "") -> Access:
        """The handle's access as it stands now (blocking): grants can be revoked or changed while a handle is
        open, so every request on a handle checks it again (through :meth:`run_for`, or itself for the few
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
            access.require(need, what, self.current_account.name)
        return access

    def _resolve_again(self, handle: Handle) -> Access:
        """Resolve the handle's access from the account store and catalog (blocking); NO_SUCH_TARGET when the
        grant was revoked or now leads elsewhere, or the target was removed (see :meth:`recheck`)."""
        old = handle.access
        access: Access | None
        if not old.granted:
            access = old
        else:
            try:
                access = resolve_access(self.services.accounts, self.current_account, handle.name, handle.path)
            except NeoError as e:
                if e.code != ErrorCode.NO_SUCH_TARGET:
                    raise
                access = None  # the grant is gone
        moved = access is None or (access.owner_id, access.target, access.root) != (old.owner_id, old.target, old.root)
        if moved or not self.services.repository.is_current(handle.target):
            raise NeoError(
                ErrorCode.NO_SUCH_TARGET,
                f"{handle.name!r} was revoked, changed or removed since it was opened: open it again",
            )
        assert access is not None
        return access

    def during(self, handle: Handle, d: Deferred[Any]) -> Deferred[Any]:
        """``d`` (work on ``handle``'s target), keeping the target held until ``d`` has fired, even if the handle
        is closed meanwhile: the repository never closes a target under a request still using it."""
        handle.busy += 1

        def done(result: object) -> object:
            handle.busy -= 1
            self._let_go(handle)
            return result

        return d.addBoth(done)

    def close_handle(self, result: object, handle: Handle) -> object:
        """``handle`` was closed (taken out of the session's handles, its push ended): its target is released
        once the work still running on it has ended. Passes ``result`` through (a callback)."""
        if handle.state == "open":
            handle.state = "closing"
            self._let_go(handle)
        return result

    def _let_go(self, handle: Handle) -> None:
        if handle.state == "closing" and handle.busy == 0:
            handle.state = "released"
            self.services.repository.release(handle.target)


def _as_answered(failure: Failure, what: str) -> Failure:
    """A worker's failure as the session answers it: the repository's and the codec's errors become the wire's
    (:func:`neotwist.server.errormap.to_wire`, the one place they are mapped). Running out of descriptors is
    ``unavailable``; a full or failing disk is DISK_FULL or STORAGE (logged once per few seconds, without a
    traceback): neither is an internal error, nor, at login, a wrong password."""
    if descriptors.out_of_fds(failure.value):
        raise descriptors.unavailable(what) from None
    if index.is_storage_failure(failure.value):
        raise to_wire(index.storage_error(what.replace("_", " "), failure.value)) from None
    error = to_wire(failure.value)
    if error is not failure.value:
        raise error from None
    return failure
