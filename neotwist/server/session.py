"""One authenticated connection's commands: where every protocol request is handled on the server.

A :class:`ServerSession` is the :class:`~neotwist.wire.peer.MessageHandler` of one server-side
:class:`~neotwist.wire.peer.Peer`, whatever carries it (an SSH subsystem channel or a TLS stream). The Peer
hands it one message at a time; each ``on_<message>`` method answers it. Repository work (SQLite, pack files,
hashing) runs in the reactor's thread pool through ``services.run_blocking``; the reactor thread only routes
messages.

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

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import Deferred, DeferredList, DeferredLock, DeferredSemaphore, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

import neotwist
from neotwist import paths
from neotwist.chunking import DEFAULT_PARAMS
from neotwist.server import stash
from neotwist.server.accounts import Account, AccountStore
from neotwist.server.repository import Push, Repository, Target
from neotwist.server.repository.target import ChunkRejected
from neotwist.server.rights import Right
from neotwist.server.ssh import RunBlocking, thread_runner
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, NeoError, ProtocolViolation
from neotwist.wire.messages import (
    Abort,
    Bye,
    ChunkReply,
    Close,
    Codec,
    Commit,
    Committed,
    Entry,
    Get,
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
    PushEntries,
    Put,
    Targets,
    Welcome,
)
from neotwist.wire.peer import Peer

log = Logger()

SOFTWARE = f"neophytos-server/{neotwist.__version__}"

MAX_BACKGROUND_JOBS = 8
"""Admitted requests (uploads and reads) running at once on one connection. Bounds the memory a session holds
beyond its receive window: at most this many chunks (each at most MAX_CHUNK) or read groups."""

READ_GROUP_BYTES = 4 * 1024 * 1024
"""Stored bytes read per worker hop while answering ``get``; the session waits for the client's credit between
groups, so a request for thousands of chunks never sits in memory at once."""

MAX_LOGIN_ATTEMPTS = 3
"""Failed ``login`` messages on one connection before the server closes it (after answering the last)."""

PUT_BATCH_BYTES = 4 * 1024 * 1024
"""Chunk bytes collected from consecutive ``put`` messages before one worker job verifies and stores them."""

PUT_BATCH_COUNT = 512
"""Puts collected at most per batch (small chunks)."""

LISTING_PAGE_BYTES = 1024 * 1024
"""Approximate encoded bytes per ``listing`` page (also at most MAX_ENTRIES entries per page)."""


@dataclass(frozen=True)
class Access:
    """The outcome of :func:`resolve_access`: whose target, which sub-path is the root, and the right held."""

    owner_id: int
    target: str
    root: str
    right: Right


def resolve_access(account: Account, target: str, path: str) -> Access:
    """Where ``account`` lands when it names ``target`` and ``path``: its own target, with full rights.

    The one place access is decided, so grants to other accounts' targets fit here without touching a handler.
    Raises NeoError (BAD_NAME, BAD_PATH) for names and paths that are not allowed.
    """
    paths.check_name(target, "target name")
    paths.check_path(path)
    return Access(owner_id=account.id, target=target, root=path, right=Right.FULL)


@dataclass
class ServerServices:
    """What every session of one server shares: repository, account store, clock and thread runner."""

    repository: Repository
    accounts: AccountStore
    reactor: Any
    run_blocking: RunBlocking | None = None
    sessions: set[ServerSession] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.run_blocking is None:
            self.run_blocking = thread_runner(self.reactor)

    @classmethod
    def open(cls, data: Path, reactor: Any, *, bcrypt_rounds: int | None = None) -> ServerServices:
        """Services on a data directory laid out as ``twistd neophytos`` lays it out (accounts, repo)."""
        kwargs = {} if bcrypt_rounds is None else {"bcrypt_rounds": bcrypt_rounds}
        accounts = AccountStore(data / "accounts.sqlite", **kwargs)
        return cls(repository=Repository(data / "repo"), accounts=accounts, reactor=reactor)

    def run(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        assert self.run_blocking is not None
        return self.run_blocking(f, *args)


@dataclass
class _Handle:
    """An open target on one connection."""

    number: int
    access: Access
    mode: str  # "read" or "push"
    target: Target | None  # None: a read handle on a target that does not exist (never handed out)
    push: Push | None = None
    jobs: set[Deferred[None]] = field(default_factory=set)  # uploads of this handle still running
    puts: list[Put] = field(default_factory=list)  # puts collected for the next batch
    put_bytes: int = 0
    put_timer: Any = None  # the pending callLater that submits a partial batch
    entries_lock: DeferredLock = field(default_factory=DeferredLock)  # entries are staged in order
    failure: NeoError | None = None  # an upload failed: the push may not commit
    snapshots_seen: set[int] = field(default_factory=set)  # snapshots a get already found to exist

    @property
    def root(self) -> str:
        return self.access.root


class ServerSession:
    """The commands of one connection. ``account`` is set by SSH before the first frame, or by ``login``."""

    def __init__(self, services: ServerServices, account: Account | None, address: str) -> None:
        self.services = services
        self.account = account
        self.address = address
        self.login_required = account is None
        self._hello_seen = False
        self._failed_logins = 0
        self._handles: dict[int, _Handle] = {}
        self._next_handle = 1
        self._slots = DeferredSemaphore(MAX_BACKGROUND_JOBS)
        self._closed = False
        self.peer: Peer | None = None
        clock = services.reactor
        self._login_timer = (
            clock.callLater(limits.LOGIN_TIMEOUT, self._login_timed_out) if account is None else None
        )
        self._idle_timer = clock.callLater(limits.IDLE_TIMEOUT, self._idle_timed_out)
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
        handler = self._handlers.get(kind)
        if handler is None:
            raise ProtocolViolation(ErrorCode.PROTOCOL, f"{kind.__name__} is not a request")
        return handler(self, peer, message)

    # --- session -----------------------------------------------------------------------------------------

    def on_hello(self, peer: Peer, message: Hello) -> None:
        if self._hello_seen:
            raise ProtocolViolation(ErrorCode.PROTOCOL, "second hello")
        if message.version != limits.PROTOCOL_VERSION:
            raise ProtocolViolation(
                ErrorCode.UNSUPPORTED_VERSION,
                f"this server speaks protocol version {limits.PROTOCOL_VERSION}, not {message.version}",
            )
        self._hello_seen = True
        peer.send(
            Welcome(
                rid=message.rid,
                version=limits.PROTOCOL_VERSION,
                software=SOFTWARE,
                window=peer.window,
                login_required=self.account is None,
                account="" if self.account is None else self.account.name,
            )
        )

    def on_login(self, peer: Peer, message: Login) -> Deferred[None]:
        if self.account is not None:
            raise NeoError(ErrorCode.PROTOCOL, f"already logged in as {self.account.name}")

        def checked(account: Account | None) -> None:
            if account is None:
                self._failed_logins += 1
                if self._failed_logins >= MAX_LOGIN_ATTEMPTS:
                    self.services.reactor.callLater(0, peer.close)  # after the error reply is queued
                log.info(
                    "login failed: account={account} address={address} method=password",
                    account=message.account,
                    address=self.address,
                )
                raise NeoError(ErrorCode.AUTH_FAILED, "wrong account or password")
            self.account = account
            self._cancel_login_timer()
            log.info(
                "login: account={account} address={address} method=password",
                account=account.name,
                address=self.address,
            )
            peer.send(LoggedIn(rid=message.rid, account=account.name))

        d = self.services.run(self.services.accounts.verify_password, message.account, message.password)
        return d.addCallback(checked)

    def on_bye(self, peer: Peer, message: Bye) -> None:
        peer.send(Bye(rid=message.rid))
        peer.close()

    # --- targets -----------------------------------------------------------------------------------------

    def on_targets(self, peer: Peer, message: ListTargets) -> Deferred[None]:
        account = self._account

        def listed(targets: list[Any]) -> None:
            peer.send(Targets(rid=message.rid, targets=targets))

        return self.services.run(self.services.repository.list_targets, account.id).addCallback(listed)

    def on_open(self, peer: Peer, message: Open) -> Deferred[None]:
        if len(self._handles) >= limits.MAX_OPEN_HANDLES:
            raise ProtocolViolation(
                ErrorCode.LIMIT_EXCEEDED, f"at most {limits.MAX_OPEN_HANDLES} targets open on one connection"
            )
        access = resolve_access(self._account, message.target, message.path)
        needed = Right.APPEND if message.mode == "push" else Right.READ
        if access.right < needed:
            raise NeoError(
                ErrorCode.PERMISSION_DENIED,
                f"{self._account.name} has {access.right.name.lower()} access to {message.target}, "
                f"{message.mode} needs {needed.name.lower()}",
            )
        repository = self.services.repository

        def find() -> tuple[Target, bool, Any]:
            target = repository.find_target(access.owner_id, access.target)
            existed = target is not None
            if target is None:
                if message.mode != "push" or not message.create:
                    raise NeoError(
                        ErrorCode.NO_SUCH_TARGET,
                        f"there is no target {access.target!r} (neo-push creates it; neo-ls lists targets)",
                    )
                if message.encrypted and not message.key_check:
                    raise NeoError(
                        ErrorCode.PROTOCOL, "an encrypted target is created with its key-check record (key_check)"
                    )
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
                    f"target {access.target!r} is "
                    + ("encrypted: push with its key" if target.meta.encrypted else "not encrypted")
                    + ("" if target.meta.encrypted else ": an encrypted push needs a new target"),
                )
            wanted = message.keep_history
            if message.mode == "push" and wanted is not None and wanted != target.meta.keep_history:
                if access.right < Right.FULL or access.root:
                    raise NeoError(
                        ErrorCode.PERMISSION_DENIED,
                        "changing whether a target keeps history needs full access to the whole target; "
                        f"{self._account.name} has {access.right.name.lower()}"
                        + (f" on {access.root!r}" if access.root else ""),
                    )
                repository.set_keep_history(access.owner_id, access.target, wanted)
            return target, existed, target.latest()

        def found(result: tuple[Target, bool, Any]) -> None:
            target, existed, latest = result
            if self._closed:
                return
            number = self._next_handle
            self._next_handle = number + 1 if number < 2**31 - 1 else 1
            self._handles[number] = _Handle(number, access, message.mode, target)
            peer.send(
                Opened(
                    rid=message.rid,
                    handle=number,
                    exists=existed,
                    encrypted=target.meta.encrypted,
                    chunker=target.meta.chunker,
                    latest=None if latest is None else latest.id,
                    latest_time=None if latest is None else latest.time,
                    keep_history=target.meta.keep_history,
                    key_check=target.meta.key_check,
                )
            )

        return self.services.run(find).addCallback(found)

    def on_close(self, peer: Peer, message: Close) -> Deferred[None]:
        handle = self._handle(message.handle)
        del self._handles[message.handle]
        return ensureDeferred(self._end_push(handle, "closed")).addCallback(
            lambda _: peer.send(Ok(rid=message.rid))
        )

    # --- push --------------------------------------------------------------------------------------------

    def on_push_begin(self, peer: Peer, message: PushBegin) -> Deferred[None]:
        handle = self._push_handle(message.handle)
        if handle.push is not None:
            raise NeoError(ErrorCode.PROTOCOL, "a push is already in progress on this handle")
        if message.delete and handle.access.right < Right.WRITE:
            raise NeoError(
                ErrorCode.PERMISSION_DENIED,
                f"push --delete needs write access; {self._account.name} has "
                f"{handle.access.right.name.lower()}",
            )
        target = handle.target
        assert target is not None

        def begun(push: Push) -> None:
            handle.push = push
            handle.failure = None
            peer.send(Ok(rid=message.rid))

        return self.services.run(target.begin_push, handle.root, message.delete).addCallback(begun)

    def on_have(self, peer: Peer, message: Have) -> Deferred[None]:
        target = self._push_handle(message.handle).target
        assert target is not None

        def answer(missing: list[bool]) -> None:
            bitmap = bytearray((len(missing) + 7) // 8)
            for i, m in enumerate(missing):
                if m:
                    bitmap[i >> 3] |= 1 << (i & 7)
            peer.send(Missing(rid=message.rid, bitmap=bytes(bitmap)))

        return self._admit(
            message, lambda: self.services.run(target.missing, message.ids).addCallback(answer)
        )

    def on_put(self, peer: Peer, message: Put) -> Deferred[None] | None:
        """Collect puts into a batch stored by one worker job: one thread hop per PUT_BATCH_BYTES, not per
        chunk. A batch goes when it is full, before anything that must see its chunks (commit, abort, close),
        or at the end of the current read (``callLater(0)``), so a lone put never waits."""
        handle = self._push_handle(message.handle)
        handle.puts.append(message)
        handle.put_bytes += len(message.data)
        if handle.put_bytes >= PUT_BATCH_BYTES or len(handle.puts) >= PUT_BATCH_COUNT:
            return self._submit_puts(handle)
        if handle.put_timer is None:
            handle.put_timer = self.services.reactor.callLater(0, self._submit_puts, handle)
        return None

    def _submit_puts(self, handle: _Handle) -> Deferred[None] | None:
        if handle.put_timer is not None:
            if handle.put_timer.active():
                handle.put_timer.cancel()
            handle.put_timer = None
        batch, handle.puts, handle.put_bytes = handle.puts, [], 0
        if not batch or self._closed:
            return None
        target = handle.target
        assert target is not None
        chunks = [(m.id, m.codec, m.size, m.data) for m in batch]

        def store() -> Deferred[None]:
            d = self.services.run(target.store_chunks, chunks)
            d.addCallback(lambda _new: None)
            d.addErrback(self._upload_failed, handle)
            return d

        # A rejected chunk is answered with the rid of its own put.
        return self._admit(batch[0], store, handle, rids=[m.rid for m in batch])

    def on_entries(self, peer: Peer, message: PushEntries) -> Deferred[None]:
        handle = self._push_handle(message.handle)
        push = handle.push
        if push is None:
            raise NeoError(ErrorCode.PROTOCOL, "entries before push_begin")

        def stage() -> Deferred[None]:
            d = handle.entries_lock.run(self.services.run, push.add, message.entries)
            d.addErrback(self._upload_failed, handle)
            return d

        return self._admit(message, stage, handle)

    def on_commit(self, peer: Peer, message: Commit) -> Deferred[None]:
        handle = self._push_handle(message.handle)
        if handle.push is None:
            raise NeoError(ErrorCode.PROTOCOL, "commit before push_begin")
        return ensureDeferred(self._commit(peer, message, handle))

    async def _commit(self, peer: Peer, message: Commit, handle: _Handle) -> None:
        await self._uploads_done(handle)
        push = handle.push
        if push is None:  # closed meanwhile
            raise NeoError(ErrorCode.PROTOCOL, "the push was closed")
        if handle.failure is not None:
            raise NeoError(handle.failure.code, f"the push cannot commit: {handle.failure.message}")
        result = await self.services.run(push.commit, time.time())
        handle.push = None
        snap = result.snapshot
        target = handle.target
        assert target is not None
        if not target.meta.keep_history:
            # Before the reply: once the client hears "committed", older snapshots are already gone.
            await self.services.run(target.apply_no_history)
        log.info(
            "commit: account={account} target={target} root={root!r} snapshot={snapshot} files={files} "
            "changed={changed} new_bytes={new_bytes}",
            account=self._account.name,
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
                files=snap.files,
                changed=snap.changed,
                deleted=snap.deleted,
                new_chunks=snap.new_chunks,
                new_bytes=snap.new_bytes,
                stored_bytes=result.stored_bytes,
            )
        )

    def on_abort(self, peer: Peer, message: Abort) -> Deferred[None]:
        handle = self._push_handle(message.handle)
        return ensureDeferred(self._end_push(handle, "aborted")).addCallback(
            lambda _: peer.send(Ok(rid=message.rid))
        )

    # --- pull --------------------------------------------------------------------------------------------

    def on_list(self, peer: Peer, message: List) -> Deferred[None]:
        handle = self._handle(message.handle)
        paths.check_path(message.path)
        return self._admit(message, lambda: ensureDeferred(self._list(peer, message, handle)))

    async def _list(self, peer: Peer, message: List, handle: _Handle) -> None:
        target = handle.target
        assert target is not None
        root = handle.root

        def start() -> tuple[int, Iterator[Entry]]:
            snapshot = message.snapshot
            if snapshot is None:
                latest = target.latest()
                if latest is None:
                    raise NeoError(
                        ErrorCode.NO_SUCH_SNAPSHOT, f"target {handle.access.target!r} has no snapshot yet"
                    )
                snapshot = latest.id
            where = paths.join(root, message.path)
            return snapshot, target.list_entries(snapshot, where, message.recursive)

        snapshot, entries = await self.services.run(start)

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
            batch, done = await self.services.run(page)
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
        return self._admit(message, lambda: ensureDeferred(self._get(peer, message, handle)))

    async def _get(self, peer: Peer, message: Get, handle: _Handle) -> None:
        target = handle.target
        assert target is not None
        where = paths.join(handle.root, message.path)
        ids = message.ids

        locations: dict[bytes, Any] = {}

        def read(start: int) -> tuple[list[ChunkReply], int]:
            if start == 0:
                if message.snapshot not in handle.snapshots_seen:
                    if target.snapshot(message.snapshot) is None:
                        raise NeoError(ErrorCode.NO_SUCH_SNAPSHOT, f"no snapshot {message.snapshot}")
                    handle.snapshots_seen.add(message.snapshot)
                chunks = target.file_chunks(message.snapshot, where)
                if chunks is None:
                    raise NeoError(
                        ErrorCode.NO_SUCH_PATH, f"no file {message.path!r} in snapshot {message.snapshot}"
                    )
                size = limits.ID_SIZE
                owned = {chunks[i : i + size] for i in range(0, len(chunks), size)}
                for cid in ids:
                    if cid not in owned:
                        raise NeoError(
                            ErrorCode.CHUNK_NOT_IN_FILE, f"chunk {cid.hex()} is not part of {message.path!r}"
                        )
                locations.update(target.locate(ids))
            out: list[ChunkReply] = []
            total = 0
            i = start
            while i < len(ids) and total < READ_GROUP_BYTES:
                cid = ids[i]
                try:
                    codec, size, data = target.read_located(cid, locations.get(cid))
                except NeoError as e:
                    if e.code == ErrorCode.DAMAGED:
                        log.error(
                            "damaged chunk: target={target} path={path!r}: {why}",
                            target=handle.access.target,
                            path=where,
                            why=e.message,
                        )
                        raise NeoError(ErrorCode.DAMAGED, f"{message.path}: {e.message}") from None
                    raise
                out.append(ChunkReply(rid=message.rid, id=cid, codec=cast(Codec, codec), size=size, data=data))
                total += len(data)
                i += 1
            return out, i

        start = 0
        while True:
            replies, start = await self.services.run(read, start)
            for reply in replies:
                peer.send(reply)
            if start >= len(ids):
                return
            await peer.drain()

    # --- for the handlers in other modules (stash.py) ------------------------------------------------------

    def handle(self, number: int) -> _Handle:
        """The open handle ``number``; NeoError(BAD_HANDLE) if there is none."""
        return self._handle(number)

    def target_of(self, handle: _Handle) -> Target:
        assert handle.target is not None
        return handle.target

    def require(self, handle: _Handle, right: Right, operation: str) -> None:
        """Refuse ``operation`` unless the handle's access includes ``right``; the error names both."""
        if handle.access.right < right:
            raise NeoError(
                ErrorCode.PERMISSION_DENIED,
                f"{operation} needs {right.name.lower()} access; {self._account.name} has "
                f"{handle.access.right.name.lower()} on {handle.access.target!r}",
            )

    def admit(self, message: Message, job: Callable[[], Deferred[None]]) -> Deferred[None]:
        """Run a read-only ``job`` in the background once a job slot is free (see :meth:`_admit`)."""
        return self._admit(message, job)

    @property
    def closed(self) -> bool:
        return self._closed

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
        return handle

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
        error = failure.value
        if isinstance(error, NeoError):
            rid = message.rid
            if rids is not None and isinstance(error, ChunkRejected) and 0 <= error.index < len(rids):
                rid = rids[error.index]
            peer.reply_error(rid, error)
            return
        log.failure(
            "Session job failed on {kind} (rid {rid})", failure, kind=type(message).__name__, rid=message.rid
        )
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
        await self._uploads_done(handle)
        push, handle.push = handle.push, None
        if push is not None:
            await self.services.run(push.abort)
            log.info(
                "push {why}: account={account} target={target}",
                why=why,
                account=self.account.name if self.account else "?",
                target=handle.access.target,
            )

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
            self.peer.close()

    def _idle_timed_out(self) -> None:
        self._idle_timer = None
        log.info("idle timeout: address={address}", address=self.address)
        # Not peer.close(): that waits for queued frames, which a client that stopped reading never takes.
        transport: Any = self.peer.transport if self.peer is not None else None
        if transport is not None:
            transport.loseConnection()

    def connection_lost(self, peer: Peer, reason: Failure) -> None:
        for handle in self._handles.values():
            self._submit_puts(handle)  # chunks already received are kept for the next push
        self._closed = True
        self._cancel_login_timer()
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None
        self.services.sessions.discard(self)
        handles, self._handles = list(self._handles.values()), {}
        for handle in handles:
            ensureDeferred(self._end_push(handle, "abandoned")).addErrback(
                lambda f: log.failure("aborting a push after the connection was lost", f)
            )
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
        Commit: on_commit,
        Abort: on_abort,
        List: on_list,
        Get: on_get,
        **stash.HANDLERS,
    }


def _finished(d: Deferred[Any]) -> Deferred[None]:
    """A Deferred that fires (with None) when ``d`` has fired, leaving ``d``'s own result for its chain."""
    waiter: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        waiter.callback(None)
        return result

    d.addBoth(fire)
    return waiter


def make_server_peer(services: ServerServices, account: Account | None, address: str) -> Peer:
    """The protocol for one connection: a server Peer driving a new :class:`ServerSession`.

    ``account`` is the SSH-authenticated account, or None for TLS (the session then asks for ``login``).
    """
    session = ServerSession(services, account, address)
    peer = Peer(session, is_client=False)
    session.peer = peer
    return peer
