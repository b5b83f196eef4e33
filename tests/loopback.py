"""A client :class:`Peer` on a real server session over loopback TCP, for tests that drive the real push and pull
pipelines against a real repository without a twistd (the session, the repository and the pipelines are the
real ones; only the SSH or TLS layer is left out)."""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet import endpoints, protocol
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from neotwist.server import session
from neotwist.wire import limits
from neotwist.wire.messages import Bye, Hello
from neotwist.wire.peer import Peer

P = TypeVar("P", bound=Peer)


class ClientHandler:
    """A client that takes no unrequested messages (every answer goes to its request's Deferred)."""

    def message_received(self, peer: Peer, message: Any) -> None:
        return None

    def connection_lost(self, peer: Peer, reason: Any) -> None:
        pass


async def loopback_peer(case: TestCase, services: Any, peer_class: type[P]) -> P:
    """A logged-in client peer of ``services.account`` (hello answered, the server's features noted as the real
    client's connect notes them), closed with ``bye`` at the test's cleanup."""
    from twisted.internet import reactor

    class Factory(protocol.Factory):
        def buildProtocol(self, addr: Any) -> Any:
            return session.make_server_peer(services, services.account, str(addr))

    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory())
    case.addCleanup(port.stopListening)
    peer = peer_class(ClientHandler(), is_client=True)
    await endpoints.connectProtocol(endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), peer)
    welcome = await peer.request(Hello(rid=0, version=limits.PROTOCOL_VERSION, software="test", window=peer.window))
    peer.features = frozenset(welcome.features)

    async def bye() -> None:
        closed = peer.when_closed()
        try:
            await peer.request(Bye(rid=0))
        except Exception:
            peer.close()
        await closed

    case.addCleanup(lambda: ensureDeferred(bye()))
    return peer
