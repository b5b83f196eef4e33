"""The client transports against real servers on 127.0.0.1: conch SSH, TLS, and the OpenSSH client binary.

The servers are minimal and live here (the real server is tested elsewhere): an SSHFactory whose session
channel offers only a ``neophytos`` subsystem that echoes, and a TLS echo server. The client side is the real
code; the Protocol it connects is a byte collector (the transports carry bytes for any Protocol, the Peer
included).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from twisted.conch.avatar import ConchUser
from twisted.conch.checkers import InMemorySSHKeyDB, SSHPublicKeyChecker
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import keys
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.connection import SSHConnection
from twisted.conch.ssh.factory import SSHFactory
from twisted.conch.ssh.transport import SSHServerTransport
from twisted.conch.ssh.userauth import SSHUserAuthServer
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from neotwist.client.connect import ConnectOptions, Session, connect
from neotwist.client.knownhosts import HostKeyError, KnownHostsFile
from neotwist.client.openssh import open_openssh, ssh_argv
from neotwist.client.remote import ConnectError, Remote
from neotwist.client.sshclient import SSHOptions, open_ssh
from neotwist.client.tlsclient import TLSOptions, open_tls
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, NeoError
from neotwist.wire.messages import Bye, Hello, ListTargets, LoggedIn, Login, Message, Targets, Welcome
from neotwist.wire.peer import Peer

PASSWORD = b"correct horse"


# --- a byte collector standing in for the Peer --------------------------------------------------------------


class Collector(Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        self.made = False
        self.lost: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self._waiting: list[tuple[int, Deferred[bytes]]] = []

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for item in list(self._waiting):
            if len(self.received) >= item[0]:
                self._waiting.remove(item)
                item[1].callback(bytes(self.received))

    def wait_for(self, n: int) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self._waiting.append((n, d))
        self.dataReceived(b"")
        return d

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        if not self.lost.called:
            self.reason = reason
            self.lost.callback(None)


# --- a minimal conch server with a "neophytos" echo subsystem -----------------------------------------------


@dataclass
class ServerState:
    allow_subsystem: bool = True
    handler: Any = None  # a MessageHandler: run a server Peer on the subsystem instead of echoing
    sessions: int = 0
    received: bytearray = field(default_factory=bytearray)
    closed: list[Deferred[None]] = field(default_factory=list)


class EchoSessionChannel(SSHChannel):
    name = b"session"

    def request_subsystem(self, data: bytes) -> int:
        name, _ = getNS(data)
        state: ServerState = self.avatar.state  # type: ignore[union-attr]
        if name != b"neophytos" or not state.allow_subsystem:
            return 0
        state.sessions += 1
        self.server_peer: Peer | None = None
        if state.handler is not None:
            self.server_peer = Peer(state.handler, is_client=False)
            self.server_peer.makeConnection(ChannelStream(self))
        return 1

    def request_env(self, data: bytes) -> int:
        return 0

    def dataReceived(self, data: bytes) -> None:
        if getattr(self, "server_peer", None) is not None:
            self.server_peer.dataReceived(data)  # type: ignore[union-attr]
            return
        self.avatar.state.received += data  # type: ignore[union-attr]
        self.write(data)

    def closed(self) -> None:
        if getattr(self, "server_peer", None) is not None:
            self.server_peer.connectionLost(Failure(ConnectionDone()))  # type: ignore[union-attr]
        super().closed()

    def eofReceived(self) -> None:
        self.conn.sendRequest(self, b"exit-status", struct.pack(">L", 0))  # type: ignore[union-attr]
        self.loseConnection()


class ChannelStream:
    """The server Peer's transport on the test server's channel."""

    def __init__(self, channel: SSHChannel) -> None:
        self.channel = channel

    def write(self, data: bytes) -> None:
        self.channel.write(data)

    def writeSequence(self, seq: list[bytes]) -> None:
        self.channel.write(b"".join(seq))

    def loseConnection(self) -> None:
        self.channel.conn.sendRequest(self.channel, b"exit-status", struct.pack(">L", 0))  # type: ignore[union-attr]
        self.channel.loseConnection()


class HelloHandler:
    """A tiny server session: welcome, optional in-band login, an empty target list, bye."""

    def __init__(self, login_required: bool = False, version: int = limits.PROTOCOL_VERSION) -> None:
        self.login_required = login_required
        self.version = version
        self.logins: list[str] = []

    def message_received(self, peer: Peer, message: Message) -> None:
        if isinstance(message, Hello):
            peer.send(
                Welcome(
                    rid=message.rid,
                    version=self.version,
                    software="test/1",
                    window=limits.WINDOW,
                    login_required=self.login_required,
                    account="" if self.login_required else "alice",
                )
            )
        elif isinstance(message, Login):
            self.logins.append(message.password)
            if message.account == "alice" and hmac.compare_digest(message.password, PASSWORD.decode()):
                peer.send(LoggedIn(rid=message.rid, account="alice"))
            else:
                peer.reply_error(message.rid, NeoError(ErrorCode.AUTH_FAILED, "wrong account or password"))
        elif isinstance(message, ListTargets):
            peer.send(Targets(rid=message.rid, targets=[]))
        elif isinstance(message, Bye):
            peer.send(Bye(rid=message.rid))
            peer.close()

    def connection_lost(self, peer: Peer, reason: Failure) -> None:
        pass


class EchoAvatar(ConchUser):
    def __init__(self, state: ServerState) -> None:
        super().__init__()
        self.state = state
        self.channelLookup[b"session"] = EchoSessionChannel


@implementer(IRealm)
class EchoRealm:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        return IConchUser, EchoAvatar(self.state), lambda: None


class TrackedServerTransport(SSHServerTransport):
    def connectionMade(self) -> None:
        self._done: Deferred[None] = Deferred()
        self.factory.state.closed.append(self._done)
        super().connectionMade()

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        if not self._done.called:
            self._done.callback(None)


def scratch_dir(case: unittest.TestCase) -> Path:
    """A private temporary directory removed after the test (trial's mktemp would litter the working dir)."""
    path = Path(tempfile.mkdtemp(prefix="neo-client-test-"))
    case.addCleanup(shutil.rmtree, path, True)
    return path


def new_ssh_key() -> keys.Key:
    return keys.Key(ed25519.Ed25519PrivateKey.generate())


def write_key(path: Path, key: keys.Key) -> Path:
    path.write_bytes(key.toString("OPENSSH"))
    path.chmod(0o600)
    return path


class SSHServerMixin:
    """Starts an echo SSH server on 127.0.0.1:0; waits, after each test, for its connections to close."""

    def start_ssh_server(
        self: Any, client_key: keys.Key, host_key: keys.Key | None = None
    ) -> tuple[int, Any]:
        state = ServerState()
        host_key = host_key or new_ssh_key()
        factory = SSHFactory()
        factory.protocol = TrackedServerTransport
        factory.state = state  # type: ignore[attr-defined]
        factory.publicKeys = {b"ssh-ed25519": host_key.public()}
        factory.privateKeys = {b"ssh-ed25519": host_key}
        factory.services = {b"ssh-userauth": SSHUserAuthServer, b"ssh-connection": SSHConnection}
        factory.getPrimes = lambda: None  # type: ignore[method-assign]
        portal = Portal(EchoRealm(state))
        portal.registerChecker(SSHPublicKeyChecker(InMemorySSHKeyDB({b"alice": [client_key.public()]})))
        portal.registerChecker(InMemoryUsernamePasswordDatabaseDontUse(alice=PASSWORD))
        factory.portal = portal
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: defer.DeferredList(list(state.closed)))
        return port.getHost().port, state


# --- conch SSH ----------------------------------------------------------------------------------------------


class SSHTransportTests(SSHServerMixin, unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dir = scratch_dir(self)
        self.client_key = new_ssh_key()
        self.host_key = new_ssh_key()
        self.port, self.state = self.start_ssh_server(self.client_key, self.host_key)
        self.key_file = write_key(self.dir / "id_test", self.client_key)
        self.known = KnownHostsFile(self.dir / "known_hosts")
        self.remote = Remote("ssh", "alice", "127.0.0.1", self.port, "t", "")

    def options(self, **kw: Any) -> SSHOptions:
        kw.setdefault("known_hosts", self.known)
        kw.setdefault("identity_files", [self.key_file])
        kw.setdefault("use_agent", False)
        kw.setdefault("default_identities", ())
        return SSHOptions(**kw)

    async def _round_trip(self, options: SSHOptions, size: int = 64) -> Collector:
        peer = Collector()
        await open_ssh(reactor, self.remote, peer, options)
        self.assertTrue(peer.made)
        payload = os.urandom(size)
        assert peer.transport is not None
        for i in range(0, size, 100_000):
            peer.transport.write(payload[i : i + 100_000])
        echoed = await peer.wait_for(size)
        self.assertEqual(echoed, payload)
        peer.transport.loseConnection()
        await peer.lost
        return peer

    @defer.inlineCallbacks
    def test_key_auth_pins_then_matches_and_round_trips(self) -> Any:
        yield defer.ensureDeferred(self._round_trip(self.options(accept_new_host_key=True), size=3_000_000))
        line = (self.dir / "known_hosts").read_text()
        expected = base64.b64encode(self.host_key.public().blob()).decode()
        self.assertEqual(line, f"[127.0.0.1]:{self.port} ssh-ed25519 {expected}\n")
        # Second time: the pin matches, no acceptance needed.
        yield defer.ensureDeferred(self._round_trip(self.options()))
        self.assertEqual(self.state.sessions, 2)
        self.assertEqual(len(self.state.received), 3_000_000 + 64)

    @defer.inlineCallbacks
    def test_password_only_when_keys_fail(self) -> Any:
        asked: list[int] = []

        def get_password() -> str:
            asked.append(1)
            return PASSWORD.decode()

        # An authorized key: the password callable is never called.
        yield defer.ensureDeferred(
            self._round_trip(self.options(accept_new_host_key=True, get_password=get_password))
        )
        self.assertEqual(asked, [])
        # An unauthorized key: falls back to the password, asked once.
        other = write_key(self.dir / "id_other", new_ssh_key())
        yield defer.ensureDeferred(
            self._round_trip(self.options(identity_files=[other], get_password=get_password))
        )
        self.assertEqual(asked, [1])

    @defer.inlineCallbacks
    def test_wrong_password_fails_clearly(self) -> Any:
        asked: list[int] = []

        def get_password() -> str:
            asked.append(1)
            return "wrong"

        peer = Collector()
        other = write_key(self.dir / "id_other", new_ssh_key())
        options = self.options(identity_files=[other], accept_new_host_key=True, get_password=get_password)
        with self.assertRaises(ConnectError) as info:
            yield open_ssh(reactor, self.remote, peer, options)
        self.assertIn(f"authentication failed for alice@127.0.0.1:{self.port}", str(info.exception))
        self.assertEqual(asked, [1])
        self.assertFalse(peer.made)

    @defer.inlineCallbacks
    def test_unknown_host_key_refused_without_accept(self) -> Any:
        peer = Collector()
        with self.assertRaises(HostKeyError) as info:
            yield open_ssh(reactor, self.remote, peer, self.options())
        self.assertIn("--accept-new-host-key", str(info.exception))
        self.assertFalse((self.dir / "known_hosts").exists())
        self.assertFalse(peer.made)
        self.assertEqual(self.state.sessions, 0)

    @defer.inlineCallbacks
    def test_prompt_decides(self) -> Any:
        prompts: list[str] = []

        def say(answer: bool) -> Any:
            def confirm(prompt: str) -> bool:
                prompts.append(prompt)
                return answer

            return confirm

        with self.assertRaises(HostKeyError):
            yield open_ssh(reactor, self.remote, Collector(), self.options(confirm=say(False)))
        self.assertFalse((self.dir / "known_hosts").exists())
        yield defer.ensureDeferred(self._round_trip(self.options(confirm=say(True))))
        self.assertEqual(len(prompts), 2)
        self.assertIn("SHA256:", prompts[0])
        self.assertTrue((self.dir / "known_hosts").exists())

    @defer.inlineCallbacks
    def test_changed_host_key_refused(self) -> Any:
        old = new_ssh_key().public().blob()
        (self.dir / "known_hosts").write_text(
            f"[127.0.0.1]:{self.port} ssh-ed25519 {base64.b64encode(old).decode()}\n"
        )
        peer = Collector()
        with self.assertRaises(HostKeyError) as info:
            yield open_ssh(reactor, self.remote, peer, self.options(accept_new_host_key=True))
        self.assertIn("HAS CHANGED", str(info.exception))
        self.assertIn("remove line 1 of", str(info.exception))
        self.assertFalse(peer.made)
        self.assertEqual(self.state.sessions, 0)

    @defer.inlineCallbacks
    def test_subsystem_refused(self) -> Any:
        self.state.allow_subsystem = False
        with self.assertRaises(ConnectError) as info:
            yield open_ssh(reactor, self.remote, Collector(), self.options(accept_new_host_key=True))
        self.assertIn("refused the 'neophytos' subsystem", str(info.exception))

    @defer.inlineCallbacks
    def test_nothing_listening(self) -> Any:
        factory = Factory.forProtocol(Protocol)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        number = port.getHost().port
        yield port.stopListening()
        remote = Remote("ssh", "alice", "127.0.0.1", number, "t", "")
        with self.assertRaises(ConnectError) as info:
            yield open_ssh(reactor, remote, Collector(), self.options())
        self.assertIn(f"cannot connect to 127.0.0.1:{number}", str(info.exception))


# --- TLS ----------------------------------------------------------------------------------------------------


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def make_cert(
    subject: str, key: Any, issuer_key: Any = None, issuer: x509.Certificate | None = None, ca: bool = False
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


def pem(cert: x509.Certificate, key: Any) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class TLSEcho(Protocol):
    def __init__(self, received: bytearray, closed: list[Deferred[None]]) -> None:
        self.received_into = received
        self.done: Deferred[None] = Deferred()
        closed.append(self.done)

    def dataReceived(self, data: bytes) -> None:
        self.received_into += data
        assert self.transport is not None
        self.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(None)


class TLSTransportTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dir = scratch_dir(self)
        self.known = KnownHostsFile(self.dir / "tls_known_hosts")

    def start_server(self, cert: x509.Certificate, key: Any) -> tuple[int, bytearray]:
        received = bytearray()
        closed: list[Deferred[None]] = []
        options = ssl.PrivateCertificate.loadPEM(pem(cert, key)).options()
        factory = Factory.forProtocol(lambda: TLSEcho(received, closed))
        port = reactor.listenSSL(0, factory, options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: defer.DeferredList(list(closed)))
        return port.getHost().port, received

    def self_signed(self) -> tuple[x509.Certificate, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        return make_cert("neophytos test", key), key

    async def _round_trip(self, port: int, options: TLSOptions) -> Collector:
        peer = Collector()
        await open_tls(reactor, Remote("tls", "alice", "127.0.0.1", port, "t", ""), peer, options)
        self.assertTrue(peer.made)
        assert peer.transport is not None
        peer.transport.write(b"ping" * 1000)
        self.assertEqual(await peer.wait_for(4000), b"ping" * 1000)
        peer.transport.loseConnection()
        await peer.lost
        return peer

    @defer.inlineCallbacks
    def test_tofu_pins_then_matches(self) -> Any:
        cert, key = self.self_signed()
        port, _ = self.start_server(cert, key)
        yield defer.ensureDeferred(self._round_trip(port, TLSOptions(self.known, accept_new_host_key=True)))
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        digest = base64.b64encode(hashlib.sha256(spki).digest()).decode()
        self.assertEqual(
            (self.dir / "tls_known_hosts").read_text(), f"[127.0.0.1]:{port} sha256-spki {digest}\n"
        )
        yield defer.ensureDeferred(self._round_trip(port, TLSOptions(self.known)))

    @defer.inlineCallbacks
    def test_unknown_refused_non_interactive(self) -> Any:
        cert, key = self.self_signed()
        port, received = self.start_server(cert, key)
        peer = Collector()
        remote = Remote("tls", "alice", "127.0.0.1", port, "t", "")
        with self.assertRaises(HostKeyError) as info:
            yield open_tls(reactor, remote, peer, TLSOptions(self.known))
        self.assertIn("--accept-new-host-key", str(info.exception))
        self.assertFalse(peer.made)
        self.assertEqual(received, b"")

    @defer.inlineCallbacks
    def test_changed_key_refused_before_any_data(self) -> Any:
        cert_a, key_a = self.self_signed()
        port_a, _ = self.start_server(cert_a, key_a)
        yield defer.ensureDeferred(self._round_trip(port_a, TLSOptions(self.known, accept_new_host_key=True)))
        # Another server claims the pinned address with another key.
        cert_b, key_b = self.self_signed()
        port_b, received_b = self.start_server(cert_b, key_b)
        pin = (self.dir / "tls_known_hosts").read_text().replace(f":{port_a} ", f":{port_b} ")
        (self.dir / "tls_known_hosts").write_text(pin)
        peer = Collector()
        remote = Remote("tls", "alice", "127.0.0.1", port_b, "t", "")
        with self.assertRaises(HostKeyError) as info:
            yield open_tls(reactor, remote, peer, TLSOptions(self.known, accept_new_host_key=True))
        self.assertIn("TLS PUBLIC KEY", str(info.exception))
        self.assertIn("HAS CHANGED", str(info.exception))
        self.assertFalse(peer.made)
        self.assertEqual(received_b, b"")

    @defer.inlineCallbacks
    def test_tls_ca_verifies_without_pinning(self) -> Any:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = make_cert("test CA", ca_key, ca=True)
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = make_cert("server", key, issuer_key=ca_key, issuer=ca)
        port, _ = self.start_server(leaf, key)
        ca_file = self.dir / "ca.pem"
        ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        yield defer.ensureDeferred(self._round_trip(port, TLSOptions(self.known, ca=ca_file)))
        self.assertFalse((self.dir / "tls_known_hosts").exists())
        # A CA that did not sign the server's certificate: refused.
        other_key = ec.generate_private_key(ec.SECP256R1())
        other_file = self.dir / "other.pem"
        other_ca = make_cert("other CA", other_key, ca=True)
        other_file.write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))
        peer = Collector()
        remote = Remote("tls", "alice", "127.0.0.1", port, "t", "")
        with self.assertRaises(ConnectError) as info:
            yield open_tls(reactor, remote, peer, TLSOptions(self.known, ca=other_file))
        self.assertIn("could not be verified with --tls-ca", str(info.exception))
        self.assertFalse(peer.made)


# --- OpenSSH client binary ----------------------------------------------------------------------------------

SSH = shutil.which("ssh")
SSH_OPTS = (
    "-F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
    "-o IdentitiesOnly=yes -o LogLevel=ERROR"
)


class OpenSSHTransportTests(SSHServerMixin, unittest.TestCase):
    timeout = 60

    if SSH is None:
        skip = "no ssh binary"

    def setUp(self) -> None:
        self.dir = scratch_dir(self)
        self.client_key = new_ssh_key()
        self.port, self.state = self.start_ssh_server(self.client_key)
        self.remote = Remote("ssh", "alice", "127.0.0.1", self.port, "t", "")

    def test_argv(self) -> None:
        self.assertEqual(
            ssh_argv("ssh -o 'BatchMode yes'", self.remote),
            [
                "ssh",
                "-o",
                "BatchMode yes",
                "-p",
                str(self.port),
                "-l",
                "alice",
                "127.0.0.1",
                "-s",
                "neophytos",
            ],
        )

    @defer.inlineCallbacks
    def test_round_trip_through_ssh(self) -> Any:
        key = write_key(self.dir / "id", self.client_key)
        peer = Collector()
        link = open_openssh(reactor, self.remote, peer, f"{SSH} {SSH_OPTS} -i {key}", forward_stderr=False)
        self.assertTrue(peer.made)
        payload = os.urandom(500_000)
        assert peer.transport is not None
        peer.transport.write(payload)
        echoed = yield peer.wait_for(len(payload))
        self.assertEqual(echoed, payload)
        peer.transport.loseConnection()
        yield peer.lost
        self.assertEqual(self.state.sessions, 1)
        self.assertIsNone(link.failure())

    @defer.inlineCallbacks
    def test_ssh_failure_reports_stderr(self) -> Any:
        wrong = write_key(self.dir / "id_wrong", new_ssh_key())
        peer = Collector()
        link = open_openssh(reactor, self.remote, peer, f"{SSH} {SSH_OPTS} -i {wrong}", forward_stderr=False)
        yield peer.lost
        error = link.failure()
        assert error is not None
        self.assertIn("Permission denied", str(error))
        self.assertIn("exited with status 255", str(error))
        assert peer.reason is not None
        self.assertIsInstance(peer.reason.value, ConnectError)
        self.assertEqual(self.state.sessions, 0)


# --- connect(): transport + hello + login, against servers running a real server-side Peer ------------------


class ConnectTests(SSHServerMixin, unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dir = scratch_dir(self)
        self.client_key = new_ssh_key()
        self.key_file = write_key(self.dir / "id", self.client_key)

    def ssh_options(self, **kw: Any) -> ConnectOptions:
        kw.setdefault("known_hosts", self.dir / "known_hosts")
        kw.setdefault("accept_new_host_key", True)
        kw.setdefault("use_agent", False)
        return ConnectOptions(**kw)

    def start_tls_peer_server(self, handler: HelloHandler) -> int:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = make_cert("neophytos test", key)
        closed: list[Deferred[None]] = []

        class Tracked(Peer):
            def connectionMade(self) -> None:
                self.done: Deferred[None] = Deferred()
                closed.append(self.done)
                super().connectionMade()

            def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
                super().connectionLost(reason)
                if not self.done.called:
                    self.done.callback(None)

        factory = Factory.forProtocol(lambda: Tracked(handler, is_client=False))
        options = ssl.PrivateCertificate.loadPEM(pem(cert, key)).options()
        port = reactor.listenSSL(0, factory, options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: defer.DeferredList(list(closed)))
        return port.getHost().port  # type: ignore[no-any-return]

    async def _use_and_close(self, session: Session) -> None:
        reply = await session.peer.request(ListTargets(rid=0))
        self.assertIsInstance(reply, Targets)
        await session.close()
        self.assertTrue(session.peer.ended_cleanly)

    @defer.inlineCallbacks
    def test_ssh_session(self) -> Any:
        port, state = self.start_ssh_server(self.client_key)
        state.handler = HelloHandler()
        remote = Remote("ssh", "alice", "127.0.0.1", port, "t", "")
        session = yield connect(reactor, remote, self.ssh_options(identity_files=[str(self.key_file)]))
        self.assertEqual(session.welcome.account, "alice")
        self.assertFalse(session.welcome.login_required)
        yield defer.ensureDeferred(self._use_and_close(session))

    @defer.inlineCallbacks
    def test_openssh_session_and_failure(self) -> Any:
        if SSH is None:
            raise unittest.SkipTest("no ssh binary")
        port, state = self.start_ssh_server(self.client_key)
        state.handler = HelloHandler()
        remote = Remote("ssh", "alice", "127.0.0.1", port, "t", "")
        options = self.ssh_options(ssh_command=f"{SSH} {SSH_OPTS} -i {self.key_file}")
        session = yield connect(reactor, remote, options)
        yield defer.ensureDeferred(self._use_and_close(session))
        wrong = write_key(self.dir / "id_wrong", new_ssh_key())
        options = self.ssh_options(ssh_command=f"{SSH} {SSH_OPTS} -i {wrong}")
        with self.assertRaises(ConnectError) as info:
            yield connect(reactor, remote, options)
        self.assertIn("Permission denied", str(info.exception))

    @defer.inlineCallbacks
    def test_tls_login(self) -> Any:
        handler = HelloHandler(login_required=True)
        port = self.start_tls_peer_server(handler)
        remote = Remote("tls", "alice", "127.0.0.1", port, "t", "")
        asked: list[int] = []

        def get_password() -> str:
            asked.append(1)
            return PASSWORD.decode()

        options = ConnectOptions(
            tls_known_hosts=self.dir / "tls_known_hosts", accept_new_host_key=True, get_password=get_password
        )
        session = yield connect(reactor, remote, options)
        self.assertTrue(session.welcome.login_required)
        self.assertEqual(asked, [1])
        yield defer.ensureDeferred(self._use_and_close(session))
        options.get_password = lambda: "wrong"
        with self.assertRaises(ConnectError) as info:
            yield connect(reactor, remote, options)
        self.assertEqual(str(info.exception), f"authentication failed for alice@127.0.0.1:{port}")
        self.assertEqual(handler.logins, [PASSWORD.decode(), "wrong"])

    @defer.inlineCallbacks
    def test_version_mismatch(self) -> Any:
        port = self.start_tls_peer_server(HelloHandler(version=99))
        remote = Remote("tls", "alice", "127.0.0.1", port, "t", "")
        options = ConnectOptions(tls_known_hosts=self.dir / "tls_known_hosts", accept_new_host_key=True)
        with self.assertRaises(ConnectError) as info:
            yield connect(reactor, remote, options)
        self.assertIn("protocol version 99", str(info.exception))

    @defer.inlineCallbacks
    def test_missing_identity_file(self) -> Any:
        remote = Remote("ssh", "alice", "127.0.0.1", 1, "t", "")
        with self.assertRaises(ConnectError) as info:
            yield connect(reactor, remote, self.ssh_options(identity_files=[str(self.dir / "nope")]))
        self.assertIn("does not exist", str(info.exception))
