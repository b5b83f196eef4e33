"""Connections that have not logged in are bounded (in total and per address, SSH and TLS together) and never
outlive the login timeout: a connection that never finishes its TLS handshake is aborted, not closed politely
(a polite close waits for the handshake for ever), so idle connects cannot take the server's descriptors."""

from __future__ import annotations

import functools
import resource
import socket
import time
from pathlib import Path

from support import PASSWORD as SERVER_PASSWORD
from support import RunningServer
from test_ssh_server import Server
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.test.iosim import connectedServerAndClient

from neotwist.server.admission import Admission, descriptor_share
from neotwist.server.hostkeys import load_or_create_tls
from neotwist.server.session import ABORT_GRACE, make_server_peer
from neotwist.server.tls import make_tls_factory
from neotwist.testing import PASSWORD, Client, Kit, call
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, RemoteError
from neotwist.wire.messages import Hello, LoggedIn, Login, Open, Welcome
from neotwist.wire.peer import Peer


def test_admission_bounds_per_address_and_in_total() -> None:
    admission = Admission(total=4, per_address=2)
    a1, a2 = admission.admit("10.0.0.1"), admission.admit("10.0.0.1")
    assert a1 is not None and a2 is not None
    assert admission.admit("10.0.0.1") is None  # a third from the same address
    b1, b2 = admission.admit("10.0.0.2"), admission.admit("10.0.0.2")
    assert b1 is not None and b2 is not None
    assert admission.admit("10.0.0.3") is None  # four in total
    a1.authenticated()
    a1.release()  # idempotent: the ticket left once
    assert admission.pending == 3
    assert admission.admit("10.0.0.3") is not None
    assert admission.admit("10.0.0.1") is None  # total again
    b1.release()
    assert admission.admit("10.0.0.1") is not None
    assert admission.refused == 3


def test_the_bound_is_at_most_a_quarter_of_the_descriptors() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert descriptor_share(10**9) == max(8, soft // 4)
    assert descriptor_share(5) == 5


def _tls_server(kit: Kit, admission: Admission | None = None) -> object:
    cert, key = load_or_create_tls(kit.tmp, ["localhost"])
    return make_tls_factory(cert, key, functools.partial(make_server_peer, kit.services, None), kit.clock, admission)


def test_a_tls_connection_that_never_shakes_hands_is_aborted(kit: Kit) -> None:
    """The login timeout queues its error before a handshake that never comes: closing would wait for ever."""
    factory = _tls_server(kit)
    protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.0.9", 5000))  # type: ignore[attr-defined]
    transport = StringTransport()
    protocol.makeConnection(transport)
    kit.clock.advance(limits.LOGIN_TIMEOUT + 1)
    assert not transport.disconnected
    kit.clock.advance(ABORT_GRACE)
    assert transport.disconnected  # aborted (StringTransport.abortConnection), not waiting on the peer
    protocol.connectionLost(None)


def test_tls_connections_beyond_the_bound_are_closed_before_the_handshake(kit: Kit) -> None:
    admission = Admission(total=8, per_address=2)
    factory = _tls_server(kit, admission)
    here = IPv4Address("TCP", "10.0.0.9", 5000)
    held = [factory.buildProtocol(here) for _ in range(2)]  # type: ignore[attr-defined]
    assert all(p is not None for p in held)
    assert factory.buildProtocol(here) is None  # type: ignore[attr-defined]
    assert factory.buildProtocol(IPv4Address("TCP", "10.0.0.10", 5000)) is not None  # type: ignore[attr-defined]
    transport = StringTransport()
    held[0].makeConnection(transport)
    held[0].connectionLost(None)  # one ended: its place is free
    assert factory.buildProtocol(here) is not None  # type: ignore[attr-defined]


def test_a_tls_login_gives_its_place_up(kit: Kit) -> None:
    admission = Admission(total=1, per_address=1)
    ticket = admission.admit("10.0.0.9")
    client, _server, pump = connectedServerAndClient(
        lambda: make_server_peer(kit.services, None, "10.0.0.9:5000", ticket),
        lambda: Peer(Client(), is_client=True),
    )
    welcome = call(client, pump, Hello(rid=0, version=limits.PROTOCOL_VERSION, software="t", window=client.window))
    assert isinstance(welcome, Welcome) and admission.pending == 1
    assert isinstance(call(client, pump, Login(rid=0, account="alice", password=PASSWORD)), LoggedIn)
    assert admission.pending == 0
    assert admission.admit("10.0.0.9") is not None


def test_ssh_connections_are_bounded_until_they_log_in(tmp_path: Path) -> None:
    server = Server(tmp_path)
    server.accounts.add("alice", "correct horse")
    server.factory.admission = Admission(total=2, per_address=2)
    server.connect("alice", ["correct horse"])  # logged in: no longer counted
    idle = [server.connect("alice", authenticate=False) for _ in range(2)]
    assert server.factory.buildProtocol(None) is None  # two wait to log in: a third is closed at once
    server.clock.advance(limits.LOGIN_TIMEOUT + 1)
    for _client, _conn, pump in idle:
        server.flush(pump)
    assert all(client.disconnected_reason == b"login timed out" for client, _conn, _pump in idle)
    assert server.factory.buildProtocol(None) is not None


def test_idle_connects_cannot_starve_logins_of_descriptors(tmp_path: Path) -> None:
    """The attack on a real server limited to 400 descriptors: 420 connects that never send a byte, to both
    ports, from one address; a legitimate client from another address still lists over TLS and SSH."""
    server = RunningServer(tmp_path)
    try:
        resource.prlimit(server.process.pid, resource.RLIMIT_NOFILE, (400, 400))
        idle: list[socket.socket] = []
        for i in range(420):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", server.tls_port if i % 2 else server.ssh_port))
            except OSError:
                s.close()
                continue
            idle.append(s)
        time.sleep(1.0)  # the server accepts (and refuses) them
        for scheme in ("tls", "ssh"):
            env = server.env(NEO_PASSWORD=SERVER_PASSWORD)
            ran = server.cli("neo-ls", "--accept-new-host-key", server.remote("", scheme), env=env, timeout=60)
            assert ran.returncode == 0, (scheme, ran.stderr, server.log_text()[-3000:])
        assert "refusing connections before login" in server.log_text()
        for s in idle:
            s.close()
    finally:
        server.stop()


def test_before_login_only_small_frames_and_few_requests_are_held(kit: Kit) -> None:
    """40 connections that had not logged in, each holding a partial 4 MiB frame, took 165 MiB."""
    import struct

    client, server, pump = connectedServerAndClient(
        lambda: make_server_peer(kit.services, None, "10.0.0.9:5000"), lambda: Peer(Client(), is_client=True)
    )
    call(client, pump, Hello(rid=0, version=limits.PROTOCOL_VERSION, software="t", window=client.window))
    server.dataReceived(struct.pack(">I", limits.MAX_FRAME) + b"x" * 1000)  # the start of a 4 MiB frame
    assert server.held_bytes == 0 and pump.serverIO.disconnecting  # refused from its header
    # Requests queued behind a login that is being checked: a few are fine, a flood is refused.
    client, server, pump = connectedServerAndClient(
        lambda: make_server_peer(kit.services, None, "10.0.0.9:5001"), lambda: Peer(Client(), is_client=True)
    )
    call(client, pump, Hello(rid=0, version=limits.PROTOCOL_VERSION, software="t", window=client.window))
    assert isinstance(call(client, pump, Login(rid=0, account="alice", password=PASSWORD)), LoggedIn)
    assert server.max_frame == limits.MAX_FRAME and server.max_inbox is None  # logged in: the usual bounds
    client, server, pump = connectedServerAndClient(
        lambda: make_server_peer(kit.services, None, "10.0.0.9:5002"), lambda: Peer(Client(), is_client=True)
    )
    call(client, pump, Hello(rid=0, version=limits.PROTOCOL_VERSION, software="t", window=client.window))
    kit.services.run_blocking = lambda f, *args: Deferred()  # the password check never finishes
    client.request(Login(rid=0, account="alice", password=PASSWORD))
    for _ in range(100):
        client.request(Open(rid=0, target="t", path="p" * 4000, mode="read"))
    pump.flush()
    assert isinstance(client.failure, RemoteError) and client.failure.code == ErrorCode.LIMIT_EXCEEDED
    assert pump.clientIO.disconnected
