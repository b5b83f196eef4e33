"""The public Python API: what the neo-* command lines do, for scripts (docs/api.md).

Every neo-* client command is a thin shell over this module: it parses its arguments, calls what is here, and
prints. A script does the same::

    from twisted.internet.task import react
    from neotwist.client import api

    async def main(reactor):
        client = await api.connect(reactor, "alice@nas/docs", api.ConnectOptions(identity_files=["~/.ssh/backup"]))
        try:
            summary = await client.push("/home/alice/docs", "docs")
            print(summary.snapshot, summary.new_bytes)
        finally:
            await client.close()

    react(lambda reactor: defer.ensureDeferred(main(reactor)))

Each method returns a Deferred (awaitable in a coroutine). :func:`connect_blocking` gives the same calls for a
script without a reactor of its own (the reactor then runs in a thread).

Failures are typed exceptions, never text to match: :class:`ConnectError` (and its :class:`AccessRefused` for
refused credentials or host keys), :class:`~neotwist.wire.errors.RemoteError` with the server's ``code`` (an
:class:`~neotwist.wire.errors.ErrorCode`) and, where it names one, ``path``; :class:`EncryptionRefused` /
:class:`EncryptionDowngrade` for a target's encryption; :class:`StashError`, :class:`PushError`,
:class:`PullError` (and :class:`PullIncomplete`, which carries the summary of what was restored). Every one
has a one-line message fit to print as is.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.threads import blockingCallFromThread

from neotwist.client import stash
from neotwist.client.connect import AccessRefused, ConnectError, ConnectOptions, Session
from neotwist.client.connect import connect as _connect
from neotwist.client.encryption import EncryptionDowngrade, EncryptionRefused, KeySource
from neotwist.client.remote import Remote, UsageError, parse_remote
from neotwist.client.remotetarget import Access, RemoteTarget
from neotwist.client.stash import StashError
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, RemoteError
from neotwist.wire.messages import (
    CheckReport,
    Entry,
    GetUsage,
    Pruned,
    SnapshotRecord,
    TargetInfo,
    TargetRemoved,
    UsageInfo,
)

if TYPE_CHECKING:
    from neotwist.client.pull import PullError, PullIncomplete, PullOptions, PullSummary
    from neotwist.client.push import PushError, PushOptions, PushSummary

_LAZY = {
    "PullError": "neotwist.client.pull",
    "PullIncomplete": "neotwist.client.pull",
    "PullOptions": "neotwist.client.pull",
    "PullSummary": "neotwist.client.pull",
    "PushError": "neotwist.client.push",
    "PushOptions": "neotwist.client.push",
    "PushSummary": "neotwist.client.push",
}
"""Names this module exports from the push and pull pipelines, loaded on first use: a push never needs the
pull's modules nor a pull the push's (each was 10-15 ms of every run's start-up)."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Access",
    "AccessRefused",
    "BlockingClient",
    "Client",
    "ConnectError",
    "ConnectOptions",
    "EncryptionDowngrade",
    "EncryptionRefused",
    "ErrorCode",
    "KeySource",
    "PullError",
    "PullIncomplete",
    "PullOptions",
    "PullSummary",
    "PushError",
    "PushOptions",
    "PushSummary",
    "Remote",
    "RemoteError",
    "RemoteTarget",
    "StashError",
    "UsageError",
    "connect",
    "connect_blocking",
]

_T = TypeVar("_T")

NO_KEY = Access()
"""No key, no pin, nothing required: plaintext targets only (an encrypted one is refused with EncryptionRefused)."""


def _deferred(coroutine: Coroutine[Any, Any, _T]) -> Deferred[_T]:
    return ensureDeferred(coroutine)


class Client:
    """One authenticated session with a server (from :func:`connect`). Targets are named by their name and a
    sub-path; a method that needs a target opens it, does its work and closes it. ``access`` (an
    :class:`Access`) brings the key of encrypted targets, their pin and ``require_encryption``."""

    def __init__(self, reactor: Any, session: Session) -> None:
        self.reactor = reactor
        self.session = session

    @property
    def remote(self) -> Remote:
        return self.session.remote

    @property
    def peer(self) -> Any:
        """The session's :class:`~neotwist.wire.peer.Peer`, for requests this API does not wrap."""
        return self.session.peer

    # --- the account ---

    def targets(self) -> Deferred[list[TargetInfo]]:
        """The targets this account can reach: its own and those granted to it."""
        return _deferred(stash.list_targets(self.peer))

    def usage(self) -> Deferred[UsageInfo]:
        """The account's space used against its quota."""

        async def run() -> UsageInfo:
            info = await self.peer.request(GetUsage(rid=0))
            if not isinstance(info, UsageInfo):
                raise StashError(f"the server answered usage with {type(info).__name__}")
            return info

        return _deferred(run())

    # --- one target ---

    def open(self, target: str, path: str = "", access: Access = NO_KEY) -> Deferred[RemoteTarget]:
        """A read handle on ``target`` at ``path`` (close it with :meth:`RemoteTarget.close`)."""
        return _deferred(RemoteTarget.open_read(self.peer, target, path, access))

    def open_root(self, target: str) -> Deferred[RemoteTarget]:
        """A read handle on the whole of ``target`` without its key (prune and remove name no path)."""
        return _deferred(RemoteTarget.open_root(self.peer, target))

    async def _with(
        self, opening: Coroutine[Any, Any, RemoteTarget], work: Callable[[RemoteTarget], Coroutine[Any, Any, _T]]
    ) -> _T:
        target = await opening
        try:
            return await work(target)
        finally:
            try:
                await target.close()
            except Exception:  # noqa: S110 - the result is decided; the session's end closes the handle too
                pass

    def snapshots(self, target: str, access: Access = NO_KEY) -> Deferred[list[SnapshotRecord]]:
        """The target's kept snapshots, oldest first."""
        return _deferred(self._with(RemoteTarget.open_read(self.peer, target, "", access), _snapshots))

    def ls(
        self,
        target: str,
        path: str = "",
        snapshot: int | None = None,
        recursive: bool = False,
        access: Access = NO_KEY,
    ) -> Deferred[tuple[int, list[Entry]]]:
        """(snapshot id, entries) of ``path`` in ``snapshot`` (None: the latest); the path itself comes first,
        with the path ``""``; ``recursive`` lists the whole tree below it."""

        async def work(remote: RemoteTarget) -> tuple[int, list[Entry]]:
            remote.require_snapshot()
            return await remote.entries(snapshot, "", recursive)

        return _deferred(self._with(RemoteTarget.open_read(self.peer, target, path, access), work))

    def check(
        self,
        target: str,
        path: str = "",
        verify_data: bool = False,
        repair: bool = False,
        on_progress: Callable[[int, int], None] | None = None,
        access: Access = NO_KEY,
    ) -> Deferred[CheckReport]:
        """The server's check of the target (``verify_data``: every chunk read and hashed; ``repair``: mark
        what is damaged so the next push heals it). ``on_progress(done_bytes, total_bytes)`` hears progress."""

        async def work(remote: RemoteTarget) -> CheckReport:
            remote.require_snapshot()
            return await remote.check(verify_data, on_progress, repair)

        return _deferred(self._with(RemoteTarget.open_read(self.peer, target, path, access), work))

    def prune(self, target: str, policy: dict[str, Any], dry_run: bool = False) -> Deferred[Pruned]:
        """Remove snapshots by a retention policy (``keep_last``, ``keep_hourly``, ``keep_daily``,
        ``keep_weekly``, ``keep_monthly``: counts; ``keep_within``: seconds) and reclaim their space."""

        async def work(remote: RemoteTarget) -> Pruned:
            return await remote.prune(policy, dry_run)

        return _deferred(self._with(RemoteTarget.open_root(self.peer, target), work))

    def remove_target(self, target: str) -> Deferred[TargetRemoved]:
        """Remove ``target`` with every snapshot (needs the full right on the whole target)."""
        return _deferred(_remove(self.peer, target))

    def push(
        self, local: str, target: str, path: str = "", options: PushOptions | None = None
    ) -> Deferred[PushSummary]:
        """Push the directory ``local`` to ``target`` at ``path`` as one new snapshot (created on first push).
        A server that stores only UTF-8 names (no ``byte-names`` in its welcome) gets the rest: each other name is
        left out and named in the summary's warnings."""
        byte_names = limits.FEATURE_BYTE_NAMES in self.session.welcome.features
        from neotwist.client.push import PushOptions, push

        options = dataclasses.replace(options or PushOptions(), byte_names=byte_names)
        return _deferred(push(self.reactor, self.peer, local, target, path, options))

    def pull(
        self, target: str, local: str, path: str = "", options: PullOptions | None = None
    ) -> Deferred[PullSummary]:
        """Bring the directory ``local`` up to date with ``target`` at ``path`` (the latest snapshot, unless
        ``options`` name another)."""
        from neotwist.client.pull import PullOptions, pull

        return _deferred(pull(self.reactor, self.peer, target, path, local, options or PullOptions()))

    def close(self) -> Deferred[None]:
        """Say bye and wait for the connection to end."""
        return self.session.close()


async def _snapshots(remote: RemoteTarget) -> list[SnapshotRecord]:
    remote.require_snapshot()
    return await remote.snapshots()


async def _remove(peer: Any, target: str) -> TargetRemoved:
    remote = await RemoteTarget.open_root(peer, target, need_snapshot=False)
    return await remote.remove()


def connect(reactor: Any, remote: str | Remote, options: ConnectOptions | None = None) -> Deferred[Client]:
    """Connect to ``remote`` (``[ssh://|tls://][USER@]HOST[:PORT][/TARGET...]``, or a parsed :class:`Remote`),
    check the server's host key or certificate, authenticate, and return the :class:`Client`.

    ``options`` (a :class:`ConnectOptions`): identity files, where a password comes from, known-hosts files,
    whether a new host key may be trusted, ``--ssh-command``, the silence timeout. Errbacks with
    :class:`ConnectError` (:class:`AccessRefused` when credentials or the host key are refused) or
    :class:`UsageError` (a remote that cannot be parsed)."""
    try:
        parsed = remote if isinstance(remote, Remote) else parse_remote(remote, need_target=False)
    except UsageError as e:
        failed: Deferred[Client] = Deferred()
        failed.errback(e)
        return failed
    return _connect(reactor, parsed, options or ConnectOptions()).addCallback(lambda s: Client(reactor, s))


# --- blocking ------------------------------------------------------------------------------------------------

_reactor_lock = threading.Lock()
_reactor_thread: threading.Thread | None = None


def _running_reactor() -> Any:
    """The global reactor, running in a daemon thread of its own (started on first use)."""
    global _reactor_thread
    from twisted.internet import reactor as installed

    reactor: Any = installed
    with _reactor_lock:
        if _reactor_thread is None:
            _reactor_thread = threading.Thread(
                target=reactor.run, kwargs={"installSignalHandlers": False}, name="neophytos-reactor", daemon=True
            )
            _reactor_thread.start()
    return reactor


class BlockingClient:
    """:class:`Client`'s calls for code without a reactor: each blocks until its result is there (or raises
    its exception). Made by :func:`connect_blocking`; use it as a context manager to say bye at the end."""

    def __init__(self, reactor: Any, client: Client) -> None:
        self._reactor = reactor
        self.client = client

    def _call(self, f: Callable[..., Deferred[_T]], *args: Any, **kwargs: Any) -> _T:
        call: Any = blockingCallFromThread
        result: _T = call(self._reactor, f, *args, **kwargs)
        return result

    def targets(self) -> list[TargetInfo]:
        return self._call(self.client.targets)

    def usage(self) -> UsageInfo:
        return self._call(self.client.usage)

    def snapshots(self, target: str, access: Access = NO_KEY) -> list[SnapshotRecord]:
        return self._call(self.client.snapshots, target, access)

    def ls(self, target: str, path: str = "", snapshot: int | None = None, recursive: bool = False,
           access: Access = NO_KEY) -> tuple[int, list[Entry]]:  # fmt: skip
        return self._call(self.client.ls, target, path, snapshot, recursive, access)

    def check(self, target: str, path: str = "", verify_data: bool = False, repair: bool = False,
              access: Access = NO_KEY) -> CheckReport:  # fmt: skip
        return self._call(self.client.check, target, path, verify_data, repair, None, access)

    def prune(self, target: str, policy: dict[str, Any], dry_run: bool = False) -> Pruned:
        return self._call(self.client.prune, target, policy, dry_run)

    def push(self, local: str, target: str, path: str = "", options: PushOptions | None = None) -> PushSummary:
        return self._call(self.client.push, local, target, path, options)

    def pull(self, target: str, local: str, path: str = "", options: PullOptions | None = None) -> PullSummary:
        return self._call(self.client.pull, target, local, path, options)

    def close(self) -> None:
        self._call(self.client.close)

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect_blocking(remote: str | Remote, options: ConnectOptions | None = None) -> BlockingClient:
    """:func:`connect` for code without a reactor: Twisted's reactor is started in a daemon thread (once per
    process) and every call of the :class:`BlockingClient` waits for its result."""
    reactor = _running_reactor()
    call: Any = blockingCallFromThread
    client: Client = call(reactor, connect, reactor, remote, options)
    return BlockingClient(reactor, client)
