"""An in-memory server session to drive with protocol messages: a client Peer and ``make_server_peer`` joined by
iosim, a real repository and account store on disk, repository calls run inline and timers on a test clock.

Used by the session, stash, rights, quota and removal tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import blake3
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient

from neotwist.server.accounts import Account, AccountStore
from neotwist.server.repository import Repository
from neotwist.server.session import ServerServices, make_server_peer
from neotwist.wire import limits
from neotwist.wire.errors import RemoteError
from neotwist.wire.messages import (
    Commit,
    Committed,
    Entry,
    Hello,
    List,
    Listing,
    Message,
    Ok,
    Open,
    Opened,
    PushBegin,
    PushEntries,
    Put,
    Welcome,
)
from neotwist.wire.peer import Peer

PASSWORD = "s3cret password"


def chunk(data: bytes) -> tuple[bytes, bytes]:
    return blake3.blake3(data).digest(), data


class Client:
    def message_received(self, peer: Peer, message: Message) -> None:
        return None

    def connection_lost(self, peer: Peer, reason: Failure) -> None:
        self.lost = reason


def call(client: Peer, pump: Any, message: Message, more: Any = None) -> Any:
    """Send a request over an iosim connection, pump until it is answered; return the reply or the RemoteError."""
    d = client.request(message, more)
    out: list[Any] = []
    d.addBoth(out.append)
    for _ in range(50):
        pump.flush()
        if out:
            break
    assert out, f"no reply to {type(message).__name__}"
    result = out[0]
    if isinstance(result, Failure):
        if result.check(RemoteError):
            return result.value
        result.raiseException()
    return result


class Conn:
    """One client connection, logged in (SSH-style) as an account."""

    def __init__(self, kit: Kit, account: Account) -> None:
        self.kit = kit
        self.account = account
        self.client, self.server, self.pump = connectedServerAndClient(
            lambda: make_server_peer(kit.services, account, "test:1"),
            lambda: Peer(Client(), is_client=True),
        )
        welcome = self.call(Hello(rid=0, version=limits.PROTOCOL_VERSION, software="t", window=self.client.window))
        assert isinstance(welcome, Welcome)

    def call(self, message: Message, more: Any = None) -> Any:
        """Send a request, pump until it is answered; return the reply or the RemoteError."""
        return call(self.client, self.pump, message, more)

    def post(self, message: Message) -> None:
        self.client.post(message)

    def open(self, target: str, path: str = "", mode: str = "read", create: bool = False) -> Any:
        return self.call(Open(rid=0, target=target, path=path, mode=mode, create=create))  # type: ignore[arg-type]

    def listing(self, handle: int, snapshot: int | None = None, path: str = "") -> Any:
        pages: list[Listing] = []
        reply = self.call(
            List(rid=0, handle=handle, snapshot=snapshot, path=path), more=lambda m: pages.append(m) or not m.done
        )
        if isinstance(reply, RemoteError):
            return reply
        return {e.path: e for page in pages for e in page.entries}

    def push(
        self,
        files: dict[str, bytes],
        target: str = "t",
        path: str = "",
        delete: bool = False,
        upload: bool = True,
        extra_entries: list[Entry] | None = None,
        **commit: Any,
    ) -> Any:
        """Push ``files`` (name -> content, one chunk each) as a snapshot; the reply to commit (or the first
        error on the way). ``commit``: more fields of the commit message (its label)."""
        opened = self.open(target, path, "push", create=True)
        if not isinstance(opened, Opened):
            return opened
        h = opened.handle
        begun = self.call(PushBegin(rid=0, handle=h, delete=delete))
        if not isinstance(begun, Ok):
            return begun
        entries = [Entry("", "d", 0o755, 0, 0)]
        dirs = sorted({"/".join(name.split("/")[:i]) for name in files for i in range(1, name.count("/") + 1)})
        entries += [Entry(d, "d", 0o755, 0, 0) for d in dirs]
        for name, data in files.items():
            cid, raw = chunk(data)
            if upload:
                self.post(Put(rid=0, handle=h, id=cid, codec=0, size=len(raw), data=raw))
            entries.append(Entry(name, "f", 0o644, 1, len(data), cid))
        entries += extra_entries or []
        self.post(PushEntries(rid=0, handle=h, entries=entries))
        return self.call(Commit(rid=0, handle=h, **commit))


class Workers:
    """A thread pool stand-in whose jobs run only when the test says: ``kit.services.run_blocking = w.submit``."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []

    def submit(self, f: Any, *args: Any) -> Deferred[Any]:
        self.jobs.append((f, args, Deferred()))
        return self.jobs[-1][2]

    def finish_one(self) -> str:
        """Run the oldest job here and fire its Deferred with the result; return the job's name."""
        f, args, d = self.jobs.pop(0)
        d.callback(f(*args))
        return str(getattr(f, "__name__", ""))


class Kit:
    """Server services on a temp dir; accounts are made with :meth:`account`. ``repository`` are options of the
    :class:`Repository` (``max_open``, ``idle``, ``clock``)."""

    def __init__(self, tmp: Path, **repository: Any) -> None:
        self.tmp = tmp
        self.clock = MemoryReactorClock()
        self.accounts = AccountStore(tmp / "accounts.sqlite", bcrypt_rounds=4)
        self.repository = Repository(tmp / "repo", **repository)
        self.services = ServerServices(
            repository=self.repository, accounts=self.accounts, reactor=self.clock, run_blocking=maybeDeferred
        )

    def account(self, name: str, parent: str | None = None) -> Account:
        return self.accounts.add(name, PASSWORD, parent=parent)

    def connect(self, account: Account | str) -> Conn:
        if isinstance(account, str):
            found = self.accounts.get(account)
            assert found is not None
            account = found
        return Conn(self, account)

    def close(self) -> None:
        self.repository.close()


def committed(reply: Any) -> Committed:
    assert isinstance(reply, Committed), reply
    return reply
