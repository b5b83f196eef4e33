"""Test a script that uses Neophytos without a server process, the way ``treq.testing`` tests HTTP code.

A :class:`Kit` is a real server in this process: an account store and a repository on disk (in a directory
the test gives), the real server session, repository calls run inline and server timers on a test clock. It
serves two kinds of client:

- :meth:`Kit.client` gives a :class:`neotwist.client.api.Client` over an in-memory link (Twisted's loopback,
  pumped by the running reactor): the API a script uses against a real server, push and pull included (they
  use worker threads, so run it under a reactor: a ``twisted.trial`` test, or ``pytest-twisted``)::

      class BackupTests(twisted.trial.unittest.TestCase):
          async def test_backup_then_restore(self):
              kit = Kit(Path(tempfile.mkdtemp()))
              self.addCleanup(kit.close)
              kit.account("alice")
              client = await kit.client("alice")
              await client.push(str(src), "docs")
              ...
              await client.close()

- :meth:`Kit.connect` gives a :class:`Conn`, a raw protocol connection over ``twisted.test.iosim`` with no
  reactor at all: send messages with :meth:`Conn.call` and the pump runs until they are answered. This is how
  the project's own session tests drive the server, and :class:`SessionTestCase` packs it for trial.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import blake3
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.loopback import loopbackAsync
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import TestCase

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

__all__ = ["PASSWORD", "Client", "Conn", "Kit", "SessionTestCase", "Workers", "call", "chunk", "committed"]

PASSWORD = "s3cret password"  # noqa: S105 - a test account's, in a throwaway directory
"""The password of the accounts :meth:`Kit.account` makes."""


def chunk(data: bytes) -> tuple[bytes, bytes]:
    """(id, data) of a plaintext chunk, as ``put`` sends it uncompressed."""
    return blake3.blake3(data).digest(), data


class Client:
    """The MessageHandler of a raw client Peer (the server originates no requests): ``lost`` is the reason the
    connection ended."""

    lost: Failure | None = None

    def message_received(self, peer: Peer, message: Message) -> None:
        return None

    def connection_lost(self, peer: Peer, reason: Failure) -> None:
        self.lost = reason


def call(client: Peer, pump: IOPump, message: Message, more: Any = None) -> Any:
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
    """One raw client connection over iosim, logged in (as SSH would have it) as ``account``."""

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
        """{path: entry} of a listing (or the RemoteError)."""
        pages: list[Listing] = []

        def more(m: Any) -> bool:
            pages.append(m)
            return not m.done

        reply = self.call(List(rid=0, handle=handle, snapshot=snapshot, path=path), more=more)
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
    """Server services on the directory ``tmp``; accounts are made with :meth:`account`. ``repository`` are
    options of the :class:`~neotwist.server.repository.Repository` (``max_open``, ``idle``, ``clock``)."""

    def __init__(self, tmp: Path, **repository: Any) -> None:
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.clock = MemoryReactorClock()
        self.accounts = AccountStore(self.tmp / "accounts.sqlite", bcrypt_rounds=4)
        self.repository = Repository(self.tmp / "repo", **repository)
        self.services = ServerServices(
            repository=self.repository, accounts=self.accounts, reactor=self.clock, run_blocking=maybeDeferred
        )

    def account(self, name: str, parent: str | None = None) -> Account:
        """A new account (password :data:`PASSWORD`; ``parent``: a sub-account of that account)."""
        return self.accounts.add(name, PASSWORD, parent=parent)

    def _account(self, account: Account | str) -> Account:
        if isinstance(account, str):
            found = self.accounts.get(account)
            assert found is not None, f"no account {account}: make it with Kit.account"
            return found
        return account

    def connect(self, account: Account | str) -> Conn:
        """A raw protocol connection as ``account`` (no reactor needed)."""
        return Conn(self, self._account(account))

    def client(self, account: Account | str, reactor: Any = None) -> Deferred[Any]:
        """A :class:`neotwist.client.api.Client` logged in as ``account`` over an in-memory link that the
        running reactor (``reactor``, default the global one) pumps."""
        from neotwist.client.api import Client
        from neotwist.client.connect import ClientHandler, start_session
        from neotwist.client.remote import Remote

        if reactor is None:
            from twisted.internet import reactor as installed

            reactor = installed
        who = self._account(account)
        server = make_server_peer(self.services, who, "memory:1")
        peer = Peer(ClientHandler(), is_client=True)
        loopbackAsync(server, peer)
        remote = Remote("ssh", who.name, "memory", 0, "", "")
        return Deferred.fromCoroutine(start_session(peer, remote)).addCallback(lambda s: Client(reactor, s))

    def close(self) -> None:
        self.repository.close()


def committed(reply: Any) -> Committed:
    """``reply``, asserted to be a ``committed``."""
    assert isinstance(reply, Committed), reply
    return reply


class SessionTestCase(TestCase):
    """A trial TestCase with a :class:`Kit` on a temporary directory, the accounts ``alice`` and ``bob``, and
    raw iosim connections to its server session: :meth:`connect` (not yet said hello), :meth:`ready` (hello
    said), :meth:`call` and :meth:`push`."""

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="neo-session-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.kit = Kit(self.tmp)
        self.addCleanup(self.kit.close)
        self.clock = self.kit.clock
        self.services = self.kit.services
        self.alice = self.kit.account("alice")
        self.bob = self.kit.account("bob")

    def connect(
        self, tls: bool = False, account: Account | None = None, window: int = limits.WINDOW
    ) -> tuple[Peer, Peer, IOPump]:
        """(server, client, pump): a client and a server Peer over iosim (SSH-authenticated as alice unless
        ``tls``), before the hello; ``window``: the client's receive window (its hello advertises it)."""
        who = None if tls else (account or self.alice)
        client, server, pump = connectedServerAndClient(
            lambda: make_server_peer(self.services, who, "test:1"),
            lambda: Peer(Client(), is_client=True, window=window),
        )
        return server, client, pump

    def call(self, client: Peer, pump: IOPump, message: Message, more: Any = None) -> Any:
        """Send a request, pump until it is answered; return the reply or the RemoteError."""
        return call(client, pump, message, more)

    def hello(self, client: Peer, pump: IOPump) -> Welcome:
        welcome = self.call(
            client, pump, Hello(rid=0, version=limits.PROTOCOL_VERSION, software="t", window=client.window)
        )
        assert isinstance(welcome, Welcome)
        return welcome

    def ready(self, **kw: Any) -> tuple[Peer, Peer, IOPump]:
        server, client, pump = self.connect(**kw)
        self.hello(client, pump)
        return server, client, pump

    def open_push(self, client: Peer, pump: IOPump, target: str = "t", path: str = "") -> Opened:
        opened = self.call(client, pump, Open(rid=0, target=target, path=path, mode="push", create=True))
        assert isinstance(opened, Opened), opened
        return opened

    def push(self, client: Peer, pump: IOPump, files: dict[str, bytes], target: str = "t", path: str = "") -> Committed:
        """Push ``files`` (name -> content, one chunk each) as one snapshot of ``target``."""
        opened = self.open_push(client, pump, target, path)
        h = opened.handle
        assert isinstance(self.call(client, pump, PushBegin(rid=0, handle=h)), Ok)
        entries = [Entry("", "d", 0o755, 0, 0)]
        for name, data in files.items():
            cid, raw = chunk(data)
            client.post(Put(rid=0, handle=h, id=cid, codec=0, size=len(raw), data=raw))
            entries.append(Entry(name, "f", 0o644, 1, len(data), cid))
        client.post(PushEntries(rid=0, handle=h, entries=entries))
        return committed(self.call(client, pump, Commit(rid=0, handle=h)))
