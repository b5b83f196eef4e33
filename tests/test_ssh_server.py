"""The conch SSH server, driven in memory by a real conch client over iosim (no sockets, no threads)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import common
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.connection import SSHConnection
from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.service import SSHService
from twisted.conch.ssh.transport import MSG_SERVICE_REQUEST, SSHClientTransport
from twisted.conch.ssh.userauth import MSG_USERAUTH_REQUEST, SSHUserAuthClient
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect

from neotwist.server import ssh as neossh
from neotwist.server.accounts import Account, AccountStore
from neotwist.wire import limits
from neotwist.wire.messages import Bye, Hello, Message, Welcome
from neotwist.wire.peer import Peer

# --- server side: a tiny session in place of neotwist.server.session ----------------------------------------


class TinySession:
    """Answers hello with welcome and bye with bye (then closes), like the real session's first and last
    steps; records how the connection ended."""

    def __init__(self, account: Account, address: str) -> None:
        self.account = account
        self.address = address
        self.lost: list[Failure] = []

    def message_received(self, peer: Peer, message: Message) -> None:
        if isinstance(message, Hello):
            peer.send(
                Welcome(
                    rid=message.rid,
                    version=limits.PROTOCOL_VERSION,
                    software="tiny",
                    window=peer.window,
                    login_required=False,
                    account=self.account.name,
                )
            )
        elif isinstance(message, Bye):
            peer.send(Bye(rid=message.rid))
            peer.close()

    def connection_lost(self, peer: Peer, reason: Failure) -> None:
        self.lost.append(reason)


class ClientHandler:
    def message_received(self, peer: Peer, message: Message) -> None:
        raise AssertionError(f"unexpected {message!r}")

    def connection_lost(self, peer: Peer, reason: Failure) -> None:
        pass


# --- client side: conch client pieces -----------------------------------------------------------------------


class ClientChannel(SSHChannel):
    name = b"session"

    def __init__(self, requests: list[tuple[bytes, bytes]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.requests = requests
        self.replies: list[tuple[bytes, bool]] = []
        self.received = b""
        self.stderr = b""
        self.exit_status: int | None = None
        self.is_closed = False
        self.opened = False
        self.open_failure: Any = None
        self.peer: Peer | None = None

    def channelOpen(self, specificData: bytes) -> None:
        self.opened = True
        for kind, payload in self.requests:
            d = self.conn.sendRequest(self, kind, payload, wantReply=True)
            d.addCallbacks(
                lambda _, kind=kind: self.replies.append((kind, True)),
                lambda _, kind=kind: self.replies.append((kind, False)),
            )
            if kind == b"subsystem":
                d.addCallback(lambda _: self._start_peer())

    def _start_peer(self) -> None:
        self.peer = Peer(ClientHandler(), is_client=True)
        self.peer.makeConnection(self)

    def openFailed(self, reason: Any) -> None:
        self.open_failure = reason

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.dataReceived(data)
        else:
            self.received += data

    def extReceived(self, dataType: int, data: bytes) -> None:
        self.stderr += data

    def request_exit_status(self, data: bytes) -> int:
        self.exit_status = struct.unpack(">L", data)[0]
        return 1

    def closed(self) -> None:
        self.is_closed = True
        if self.peer is not None:
            self.peer.connectionLost(Failure(Exception("closed")))


class ClientConnection(SSHConnection):
    def __init__(self) -> None:
        super().__init__()
        self.started = False

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.started = True


class ClientAuth(SSHUserAuthClient):
    def __init__(self, user: bytes, conn: SSHConnection, passwords: list[str], key: Key | None) -> None:
        super().__init__(user, conn)
        self.passwords = list(passwords)
        self.key = key
        self.key_offered = False

    def getPassword(self, prompt: bytes | None = None) -> defer.Deferred[bytes] | None:
        if not self.passwords:
            return None
        return defer.succeed(self.passwords.pop(0).encode())

    def getPublicKey(self) -> Key | None:
        if self.key is None or self.key_offered:
            return None
        self.key_offered = True
        return self.key.public()

    def getPrivateKey(self) -> defer.Deferred[Key]:
        assert self.key is not None
        return defer.succeed(self.key)


class Client(SSHClientTransport):
    def __init__(self, auth: ClientAuth, host_key: Key) -> None:
        self.auth = auth
        self.expected_host_key = host_key
        self.disconnected_reason: bytes | None = None

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> defer.Deferred[bool]:
        assert hostKey == self.expected_host_key.public().blob()
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        self.requestService(self.auth)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self.disconnected_reason = description


# --- fixtures -----------------------------------------------------------------------------------------------


class Server:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = MemoryReactorClock()
        self.accounts = AccountStore(tmp_path / "accounts.sqlite", bcrypt_rounds=4)
        self.host_key = Key(ed25519.Ed25519PrivateKey.generate())
        self.sessions: list[TinySession] = []

        def peer_factory(account: Account, address: str) -> Peer:
            session = TinySession(account, address)
            self.sessions.append(session)
            return Peer(session, is_client=False)

        def run_now(f: Any, *args: Any) -> defer.Deferred[Any]:
            return defer.maybeDeferred(f, *args)

        self.factory = neossh.make_ssh_factory(
            self.host_key, self.accounts, peer_factory, self.clock, run_blocking=run_now
        )
        self.factory.doStart()

    def connect(
        self, user: str, passwords: list[str] = (), key: Key | None = None, authenticate: bool = True,  # type: ignore[assignment]
        host: str = "10.1.2.3",
    ) -> tuple[Client, ClientConnection, IOPump]:
        server = self.factory.buildProtocol(None)
        conn = ClientConnection()
        client = Client(ClientAuth(user.encode(), conn, list(passwords), key), self.host_key)
        client.factory = Factory()
        if not authenticate:  # the client connects, then never asks to log in
            client.connectionSecure = lambda: None  # type: ignore[method-assign]
        address = IPv4Address("TCP", host, 40000 + len(self.sessions))
        server_transport = FakeTransport(server, isServer=True, peerAddress=address)
        pump = connect(server, server_transport, client, FakeTransport(client, isServer=False), greet=True)
        self.flush(pump)
        return client, conn, pump

    def flush(self, pump: IOPump) -> None:
        for _ in range(10):
            pump.flush()
            self.clock.advance(0)
        pump.flush()


@pytest.fixture
def server(tmp_path: Path) -> Server:
    return Server(tmp_path)


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        text = formatEvent(event)
        if event.get("log_failure") is not None:
            text += " " + event["log_failure"].getTraceback()
        lines.append(text)

    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


def assert_clean_log(lines: list[str]) -> None:
    text = "\n".join(lines)
    for bad in ("Unhandled", "Traceback", "Could not adapt", "password="):
        assert bad not in text, text


def open_channel(
    server: Server, conn: ClientConnection, pump: IOPump, requests: list[tuple[bytes, bytes]]
) -> ClientChannel:
    channel = ClientChannel(requests, conn=conn)
    conn.openChannel(channel)
    server.flush(pump)
    return channel


SUBSYSTEM = (b"subsystem", common.NS(b"neophytos"))


# --- tests --------------------------------------------------------------------------------------------------


def test_password_login_subsystem_hello_bye_exit_status_0(server: Server, log_lines: list[str]) -> None:
    server.accounts.add("alice", "correct horse")
    _client, conn, pump = server.connect("alice", ["correct horse"])
    assert conn.started
    env = (b"env", common.NS(b"LANG") + common.NS(b"C.UTF-8"))
    channel = open_channel(server, conn, pump, [env, SUBSYSTEM])
    assert channel.replies == [(b"env", False), (b"subsystem", True)]
    assert channel.remoteWindowLeft == neossh.CHANNEL_WINDOW  # the 8 MiB window was offered

    assert channel.peer is not None
    welcomes: list[Message] = []
    channel.peer.request(Hello(rid=0, version=1, software="test", window=limits.WINDOW)).addCallback(
        welcomes.append
    )
    server.flush(pump)
    assert isinstance(welcomes[0], Welcome) and welcomes[0].account == "alice"
    (session,) = server.sessions
    assert session.address == "10.1.2.3:40000"

    byes: list[Message] = []
    channel.peer.request(Bye(rid=0)).addCallback(byes.append)
    server.flush(pump)
    assert isinstance(byes[0], Bye)
    assert channel.exit_status == 0
    assert channel.is_closed
    assert len(session.lost) == 1
    assert any("login: account=alice" in line and "method=password" in line for line in log_lines)
    assert_clean_log(log_lines)


def test_public_key_login(server: Server, log_lines: list[str]) -> None:
    key = Key(ed25519.Ed25519PrivateKey.generate())
    server.accounts.add("alice", None)
    server.accounts.add_key("alice", key.public().toString("openssh") + b" laptop")
    _client, conn, pump = server.connect("alice", key=key)
    assert conn.started
    channel = open_channel(server, conn, pump, [SUBSYSTEM])
    assert channel.replies == [(b"subsystem", True)]
    assert any("method=publickey" in line and "login: account=alice" in line for line in log_lines)
    assert_clean_log(log_lines)


def test_unauthorized_key_and_wrong_password_fail(server: Server, log_lines: list[str]) -> None:
    key = Key(ed25519.Ed25519PrivateKey.generate())
    server.accounts.add("alice", "correct horse")
    _client, conn, pump = server.connect("alice", ["wrong"], key=key)
    server.clock.advance(2)  # conch delays a password failure by a second
    server.flush(pump)
    assert not conn.started
    failures = [line for line in log_lines if "login failed: account=alice" in line]
    assert {("publickey" in f, "password" in f) for f in failures} == {(True, False), (False, True)}
    assert_clean_log(log_lines)


def test_auth_attempts_are_limited(server: Server) -> None:
    server.accounts.add("alice", "correct horse")
    client, conn, pump = server.connect("alice", ["wrong"] * 10 + ["correct horse"])
    for _ in range(12):
        server.clock.advance(2)
        server.flush(pump)
    assert not conn.started
    assert client.auth.passwords == ["wrong"] * (10 - neossh.MAX_AUTH_ATTEMPTS) + ["correct horse"]


def test_login_timeout(server: Server) -> None:
    server.accounts.add("alice", "correct horse")
    client, _conn, pump = server.connect("alice", ["correct horse"], authenticate=False)
    server.clock.advance(limits.LOGIN_TIMEOUT - 1)
    server.flush(pump)
    assert client.disconnected_reason is None
    server.clock.advance(limits.LOGIN_TIMEOUT + 1)
    server.flush(pump)
    assert client.disconnected_reason == b"login timed out"


def test_unknown_account_fails_like_wrong_password(server: Server, log_lines: list[str]) -> None:
    _client, conn, pump = server.connect("nobody", ["whatever"])
    server.clock.advance(2)
    server.flush(pump)
    assert not conn.started
    assert any("login failed: account=nobody" in line for line in log_lines)


@pytest.mark.parametrize("kind", [b"exec", b"shell"])
def test_exec_and_shell_are_refused_with_a_message(server: Server, log_lines: list[str], kind: bytes) -> None:
    server.accounts.add("alice", "correct horse")
    _client, conn, pump = server.connect("alice", ["correct horse"])
    pty = (b"pty-req", common.NS(b"xterm") + struct.pack(">4L", 80, 24, 0, 0) + common.NS(b""))
    request = (kind, common.NS(b"ls -la") if kind == b"exec" else b"")
    x11 = (b"x11-req", b"\x00" + common.NS(b"MIT-MAGIC-COOKIE-1") + common.NS(b"00") + struct.pack(">L", 0))
    channel = open_channel(server, conn, pump, [pty, x11, request])
    assert channel.replies == [(b"pty-req", False), (b"x11-req", False), (kind, True)]
    assert b"only offers the 'neophytos' subsystem" in channel.stderr
    assert channel.exit_status == 1
    assert channel.is_closed
    assert server.sessions == []
    assert_clean_log(log_lines)


def test_unknown_subsystem_refused(server: Server, log_lines: list[str]) -> None:
    server.accounts.add("alice", "correct horse")
    _client, conn, pump = server.connect("alice", ["correct horse"])
    channel = open_channel(server, conn, pump, [(b"subsystem", common.NS(b"sftp")), SUBSYSTEM, SUBSYSTEM])
    assert channel.replies == [(b"subsystem", False), (b"subsystem", True), (b"subsystem", False)]
    assert len(server.sessions) == 1
    assert_clean_log(log_lines)


def test_port_forwarding_channel_refused_without_traceback(server: Server, log_lines: list[str]) -> None:
    server.accounts.add("alice", "correct horse")
    _client, conn, pump = server.connect("alice", ["correct horse"])

    class DirectTCP(ClientChannel):
        name = b"direct-tcpip"

    channel = DirectTCP([], conn=conn)
    conn.openChannel(channel, common.NS(b"127.0.0.1") + struct.pack(">L", 22) + common.NS(b"x") + b"\0\0\0\0")
    server.flush(pump)
    assert not channel.opened and channel.open_failure is not None
    assert any("refused channel" in line for line in log_lines)
    assert_clean_log(log_lines)


def test_session_channels_are_limited(server: Server) -> None:
    server.accounts.add("alice", "correct horse")
    _client, conn, pump = server.connect("alice", ["correct horse"])
    channels = [open_channel(server, conn, pump, [SUBSYSTEM]) for _ in range(neossh.MAX_SESSION_CHANNELS + 1)]
    assert [c.opened for c in channels] == [True] * neossh.MAX_SESSION_CHANNELS + [False]


def test_close_without_bye_exit_status_1(server: Server, log_lines: list[str]) -> None:
    server.accounts.add("alice", "correct horse")
    _client, conn, pump = server.connect("alice", ["correct horse"])
    channel = open_channel(server, conn, pump, [SUBSYSTEM])
    conn.sendEOF(channel)  # conch clients have no half-close: EOF ends the session
    server.flush(pump)
    assert channel.exit_status == 1
    assert channel.is_closed
    (session,) = server.sessions
    assert len(session.lost) == 1
    assert_clean_log(log_lines)


def test_connection_drop_tells_the_session_once(server: Server) -> None:
    server.accounts.add("alice", "correct horse")
    client, conn, pump = server.connect("alice", ["correct horse"])
    open_channel(server, conn, pump, [SUBSYSTEM])
    client.transport.loseConnection()
    server.flush(pump)
    (session,) = server.sessions
    assert len(session.lost) == 1


def test_failed_logins_are_throttled_without_bcrypt(server: Server, log_lines: list[str]) -> None:
    """Five wrong passwords: the next password attempt for that account (from anywhere) or from that address (for
    any account) is refused with a disconnect saying how long to wait, and runs no bcrypt; a key still works
    from another address, and the log never holds a password."""
    from unittest import mock

    from neotwist.server import throttle

    key = Key(ed25519.Ed25519PrivateKey.generate())
    server.accounts.add("alice", "correct horse")
    server.accounts.add_key("alice", key.public().toString("openssh") + b" laptop")
    server.accounts.add("bob", "bobs password")
    for _ in range(throttle.LIMIT):
        _client, conn, pump = server.connect("alice", ["wrong guess"])
        server.clock.advance(2)
        server.flush(pump)
        assert not conn.started
    calls: list[bytes] = []
    real = neossh.AccountStore.verify_password

    def counting(self: AccountStore, name: str, password: str) -> Any:
        calls.append(name.encode())
        return real(self, name, password)

    with mock.patch.object(neossh.AccountStore, "verify_password", counting):
        client, conn, pump = server.connect("alice", ["correct horse"], host="10.9.9.9")
        server.clock.advance(2)
        server.flush(pump)
        assert not conn.started and calls == []
        assert client.disconnected_reason == b"too many failed logins; try again in 30 s"
        client, conn, pump = server.connect("bob", ["bobs password"])  # same address, other account
        server.flush(pump)
        assert not conn.started and calls == []
        # a key login of the blocked account from another address is not refused
        _client, conn, pump = server.connect("alice", key=key, host="10.9.9.9")
        assert conn.started
    server.clock.advance(throttle.BASE_DELAY)
    _client, conn, pump = server.connect("alice", ["correct horse"], host="10.9.9.9")
    server.flush(pump)
    assert conn.started
    text = "\n".join(log_lines)
    assert "login throttled: account=alice address=10.9.9.9" in text
    assert "wrong guess" not in text and "correct horse" not in text


Jobs = list[tuple[defer.Deferred[Any], Any, tuple[Any, ...]]]


def hold_checks(server: Server) -> tuple[Jobs, list[tuple[Any, ...]]]:
    """Make the server's password checks wait (still running) until the test releases them from the returned
    jobs; the second list records the arguments of every check started."""
    jobs: Jobs = []
    checked: list[tuple[Any, ...]] = []

    def queued(f: Any, *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        jobs.append((d, f, args))
        checked.append(args)
        return d

    for checker in server.factory.portal.checkers.values():  # type: ignore[attr-defined]
        if hasattr(checker, "_run"):
            checker._run = queued
    return jobs, checked


def test_a_burst_of_good_logins_from_one_address_all_get_in(server: Server) -> None:
    """Sixteen SSH clients of one account from one address log in at once (a fleet behind NAT, a benchmark):
    LIMIT password checks run at a time, the others wait their turn, and every one gets in."""
    from neotwist.server import throttle

    server.accounts.add("alice", "correct horse")
    jobs, _checked = hold_checks(server)
    clients = [server.connect("alice", ["correct horse"]) for _ in range(16)]
    assert len(jobs) == throttle.LIMIT
    while jobs:
        d, f, args = jobs.pop(0)
        defer.maybeDeferred(f, *args).chainDeferred(d)
        for _client, _conn, pump in clients:
            server.flush(pump)
    assert all(conn.started for _client, conn, _pump in clients)
    assert all(client.disconnected_reason is None for client, _conn, _pump in clients)


def test_a_login_waiting_for_its_turn_goes_with_its_connection(server: Server, log_lines: list[str]) -> None:
    from neotwist.server import throttle

    server.accounts.add("alice", "correct horse")
    jobs, checked = hold_checks(server)
    clients = [server.connect("alice", ["correct horse"]) for _ in range(throttle.LIMIT)]
    leaving, _conn, pump = server.connect("alice", ["the one that leaves"])
    assert len(jobs) == throttle.LIMIT
    leaving.transport.loseConnection()
    server.flush(pump)
    while jobs:  # the running logins succeed, which would admit a waiting one
        d, f, args = jobs.pop(0)
        defer.maybeDeferred(f, *args).chainDeferred(d)
        for _client, _c, p in clients:
            server.flush(p)
    assert all(conn.started for _client, conn, _p in clients)
    assert len(checked) == throttle.LIMIT and all("the one that leaves" not in args for args in checked)
    assert_clean_log(log_lines)


def userauth_service(server: Server, user: str) -> tuple[Client, IOPump, Any]:
    """A connection whose client asks for ``ssh-userauth`` and nothing more: the test sends the requests itself."""
    client, _conn, pump = server.connect(user, [], authenticate=False)
    client.instance = SSHService()  # type: ignore[attr-defined]
    client.instance.name = b"ssh-userauth"  # type: ignore[attr-defined]
    client.sendPacket(MSG_SERVICE_REQUEST, common.NS(b"ssh-userauth"))
    server.flush(pump)
    return client, pump, pump.server.service  # type: ignore[attr-defined]


def send_userauth(client: Client, user: bytes, method: bytes, data: bytes) -> None:
    client.sendPacket(MSG_USERAUTH_REQUEST, common.NS(user) + common.NS(b"ssh-connection") + common.NS(method) + data)


def test_a_malformed_login_request_is_a_failure_and_gives_its_turn_back(server: Server, log_lines: list[str]) -> None:
    """A password request cut short makes conch's parser raise: it is answered as a failed attempt, and its turn at
    the throttle is given back (it does not hold a check of the account, or of the address, for ever)."""
    from neotwist.server import throttle

    server.accounts.add("alice", "correct horse")
    for _ in range(throttle.LIMIT):
        client, pump, _service = userauth_service(server, "alice")
        send_userauth(client, b"alice", b"password", b"")
        server.flush(pump)
    _client, conn, pump = server.connect("alice", ["correct horse"], host="10.7.7.7")
    server.flush(pump)
    assert conn.started  # no check of alice is left running, so this one was admitted at once
    assert_clean_log(log_lines)


def test_one_counted_attempt_at_a_time_per_connection(server: Server) -> None:
    """The protocol lets a client send a request before the last is answered: a second counted attempt of one
    connection fails at once (no bcrypt, no place at the throttle); after the answer the next is checked."""
    server.accounts.add("alice", "correct horse")
    jobs, _checked = hold_checks(server)
    client, pump, service = userauth_service(server, "alice")
    guess = b"\x00" + common.NS(b"guess")
    send_userauth(client, b"alice", b"password", guess)
    send_userauth(client, b"alice", b"password", guess)  # before the first is answered
    server.flush(pump)
    assert len(jobs) == 1 and service.loginAttempts == 1  # the second failed at once, counted by conch
    d, f, args = jobs.pop()
    defer.maybeDeferred(f, *args).chainDeferred(d)
    server.clock.advance(2)  # conch answers a wrong password after a delay
    server.flush(pump)
    send_userauth(client, b"alice", b"password", guess)
    server.flush(pump)
    assert len(jobs) == 1  # after the answer the next attempt is checked


def test_a_credential_check_that_fails_is_no_authentication_failure(
    server: Server, tmp_path: Path, log_lines: list[str]
) -> None:
    server.accounts.add("alice", "correct horse")
    store = tmp_path / "accounts.sqlite"
    store.rename(tmp_path / "moved.sqlite")
    store.mkdir()  # the account store cannot be opened: the check fails, it does not answer "wrong password"
    client, conn, pump = server.connect("alice", ["correct horse"])
    server.clock.advance(2)
    server.flush(pump)
    assert not conn.started
    assert client.disconnected_reason == b"internal error while checking credentials; see the server log"
    assert not any("login failed" in line for line in log_lines)
    assert any("checking the password of alice" in line and "Traceback" in line for line in log_lines)
