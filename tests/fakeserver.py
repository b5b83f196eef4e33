"""A scripted, hostile Neophytos server in memory, to drive the real client code against lies.

:class:`FakeServer` is a server-side ``MessageHandler`` whose answers a test writes: what ``open`` says about
the target, the ``listing`` pages, and what each ``get`` is answered with (one ``chunk`` per pump step, so the
fake itself never buffers more than a chunk). :func:`run_client` connects it to a client ``Peer`` with
Twisted's in-memory transports (iosim) and runs a client coroutine (``pull``) to its end, delivering the
results of the client's worker threads through a hand-driven reactor.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient

from neotwist.chunking import DEFAULT_PARAMS
from neotwist.wire.messages import (
    Bye,
    ChunkerParams,
    ChunkReply,
    Close,
    Entry,
    Error,
    Get,
    GetFiles,
    Hello,
    List,
    Listing,
    ListVersions,
    Message,
    Ok,
    Open,
    Opened,
    VersionList,
    VersionRecord,
    Welcome,
)
from neotwist.wire.peer import Peer


class ManualReactor:
    """Just what the client's thread hops need: ``callFromThread`` queues, :meth:`run_pending` runs."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = queue.SimpleQueue()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self._calls.put((f, args, kw))

    def run_pending(self, wait: float) -> bool:
        try:
            f, args, kw = self._calls.get(timeout=wait)
        except queue.Empty:
            return False
        f(*args, **kw)
        while True:
            try:
                f, args, kw = self._calls.get_nowait()
            except queue.Empty:
                return True
            f(*args, **kw)


class FakeServer:
    """Answers hello, open, list, versions, get (and get_files, with ``batches``), close and bye as the test
    scripted it (listing pages and chunks one per :meth:`step`)."""

    def __init__(
        self,
        pages: list[list[Entry]],
        chunks: Callable[[Get], Iterator[ChunkReply]] | None = None,
        *,
        chunker: ChunkerParams = DEFAULT_PARAMS,
        encrypted: bool = False,
        key_check: bytes = b"",
        versions: list[VersionRecord] | None = None,
        batches: bool = False,
        get_files: Callable[[GetFiles], Iterator[ChunkReply | Error]] | None = None,
    ) -> None:
        self.versions = versions or []
        self.get_files = get_files  # answers get_files as scripted (default: each file as get answers it)
        self.features = ["ping", "get_files"] if batches else ["ping"]  # get_files: answered file by file
        self.pages = pages
        self.chunks = chunks
        self.chunker = chunker
        self.encrypted = encrypted
        self.key_check = key_check
        self.requests: list[Message] = []
        self._streams: list[tuple[int, Iterator[ChunkReply | Listing | Error]]] = []
        self.peer: Peer | None = None

    def message_received(self, peer: Peer, message: Message) -> Deferred[None] | None:
        self.peer = peer
        self.requests.append(message)
        rid = message.rid
        if isinstance(message, Hello):
            peer.send(Welcome(rid=rid, version=1, software="fake", window=peer.window, login_required=False,
                              account="alice", features=self.features))  # fmt: skip
        elif isinstance(message, Open):
            peer.send(Opened(rid=rid, handle=1, exists=True, encrypted=self.encrypted, chunker=self.chunker,
                             latest=1, latest_time=1.0, key_check=self.key_check))  # fmt: skip
        elif isinstance(message, List):
            last = len(self.pages) - 1
            pages = (Listing(rid=0, snapshot=1, entries=e, done=i == last) for i, e in enumerate(self.pages))
            self._streams.append((rid, pages))
        elif isinstance(message, Get):
            assert self.chunks is not None
            self._streams.append((rid, self.chunks(message)))
        elif isinstance(message, GetFiles) and self.get_files is not None:
            self._streams.append((rid, self.get_files(message)))
        elif isinstance(message, GetFiles):
            chunks = self.chunks
            assert chunks is not None

            def replies(m: GetFiles) -> Iterator[ChunkReply]:
                for f in m.files:
                    yield from chunks(Get(rid=m.rid, handle=m.handle, snapshot=m.snapshot, path=f.path, ids=f.ids))

            self._streams.append((rid, replies(message)))
        elif isinstance(message, ListVersions):
            peer.send(VersionList(rid=rid, versions=self.versions, done=True))
        elif isinstance(message, (Close,)):
            peer.send(Ok(rid=rid))
        elif isinstance(message, Bye):
            peer.send(Bye(rid=rid))
        return None

    def step(self) -> bool:
        """Send the next page or chunk of each list or get being answered; False when none is left."""
        if self.peer is None:
            return False
        sent = False
        for rid, stream in list(self._streams):
            reply = next(stream, None)
            if reply is None:
                self._streams.remove((rid, stream))
                continue
            reply.rid = rid
            self.peer.send(reply)
            sent = True
        return sent

    def connection_lost(self, peer: Peer, reason: Failure) -> None:
        pass


class _ClientHandler:
    def message_received(self, peer: Peer, message: Message) -> None:
        return None

    def connection_lost(self, peer: Peer, reason: Failure) -> None:
        pass


def run_client(
    fake: FakeServer, client: Callable[[ManualReactor, Peer], Coroutine[Any, Any, Any]], timeout: float = 30
) -> Any:
    """Run ``client(reactor, peer)`` against ``fake`` until it ends; its result, or its exception raised."""
    reactor = ManualReactor()
    client_peer, _server_peer, pump = connectedServerAndClient(
        lambda: Peer(fake, is_client=False), lambda: Peer(_ClientHandler(), is_client=True)
    )
    outcome: list[Any] = []
    ensureDeferred(client(reactor, client_peer)).addBoth(outcome.append)
    deadline = time.monotonic() + timeout
    while not outcome:
        assert time.monotonic() < deadline, "the client did not finish"
        pump.flush()
        if fake.step():
            continue
        reactor.run_pending(0.01)
    pump.flush()
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result
