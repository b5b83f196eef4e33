"""The TLS listener in memory: our certificate verifies for localhost, the session protocol gets the client
address, and bytes flow both ways through TLS."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import FakeTransport, connect

from neotwist.server.hostkeys import load_or_create_tls
from neotwist.server.tls import make_tls_factory


class Echo(Protocol):
    def __init__(self, address: str) -> None:
        self.address = address

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data.upper())


class Collect(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"hello over tls")

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def test_tls_round_trip_with_pinned_self_signed_cert(tmp_path: Path) -> None:
    cert, key = load_or_create_tls(tmp_path, ["localhost", "127.0.0.1"])
    sessions: list[Echo] = []

    def peer_factory(address: str) -> Echo:
        sessions.append(Echo(address))
        return sessions[-1]

    clock = Clock()
    server_factory = make_tls_factory(cert, key, peer_factory, clock)
    client_options = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(cert.read_bytes()))
    collect = Collect()
    client_factory = TLSMemoryBIOFactory(
        client_options, True, ClientFactory.forProtocol(lambda: collect), clock=clock
    )

    address = IPv4Address("TCP", "10.9.8.7", 5555)
    server = server_factory.buildProtocol(address)
    client = client_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4323))
    server_transport = FakeTransport(server, isServer=True)
    pump = connect(server, server_transport, client, FakeTransport(client, isServer=False), clock=clock)
    pump.flush()
    assert collect.received == b"HELLO OVER TLS"
    assert [s.address for s in sessions] == ["10.9.8.7:5555"]


def test_certificate_is_reused_and_key_private(tmp_path: Path) -> None:
    cert, key = load_or_create_tls(tmp_path)
    first = cert.read_bytes()
    assert load_or_create_tls(tmp_path) == (cert, key)
    assert cert.read_bytes() == first
    assert key.stat().st_mode & 0o777 == 0o600
