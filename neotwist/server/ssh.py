"""The SSH transport: a conch server whose only service is the ``neophytos`` subsystem.

Layers, outermost first:

- :class:`NeoSSHFactory` holds the host key and the portal; ``getPrimes`` returns None so only
  curve25519/ECDH key exchange is offered (no moduli file needed).
- :class:`NeoUserAuthServer` bounds login time and attempts and logs every login and failure (never a
  password).
- Two checkers: :class:`PasswordChecker` (bcrypt in a thread) and :class:`PublicKeyChecker` (key lookup in a
  thread, signature check by conch). Only keys the account really has get a ``PK_OK``.
- :class:`NeoConnection` refuses every channel type but ``session`` without the traceback conch logs by
  default (port forwarding is administratively prohibited).
- :class:`NeoAvatar` / :class:`NeoSessionChannel`: the channel runs the subsystem's protocol directly (no
  process-protocol wrapping) with an 8 MiB receive window, refuses ``env``, ``pty-req``, ``x11-req`` and
  friends quietly, answers ``shell``/``exec`` with a one-line explanation and exit status 1, and sends
  ``exit-status`` 0 when the session ended with a bye/bye exchange (otherwise ``ssh`` would exit 255).

Why one file of over 500 lines: these are the pieces conch wires into one another (factory -> user auth ->
checkers -> realm -> avatar -> channel), each small and each meaningful only beside the others; splitting them
would scatter one transport's security decisions over several files that must be read together anyway.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from twisted.conch import error as conch_error
from twisted.conch.avatar import ConchUser
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import common
from twisted.conch.ssh.address import SSHTransportAddress
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.connection import (
    EXTENDED_DATA_STDERR,
    MSG_CHANNEL_OPEN_FAILURE,
    OPEN_ADMINISTRATIVELY_PROHIBITED,
    SSHConnection,
)
from twisted.conch.ssh.factory import SSHFactory
from twisted.conch.ssh.keys import BadKeyError, Key
from twisted.conch.ssh.transport import (
    DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
    DISCONNECT_PROTOCOL_ERROR,
    DISCONNECT_SERVICE_NOT_AVAILABLE,
    SSHServerTransport,
)
from twisted.conch.ssh.userauth import SSHUserAuthServer
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey, IUsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IAddress, ITransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from neotwist import tcpkeepalive
from neotwist.server import descriptors
from neotwist.server.accounts import Account, AccountStore
from neotwist.server.admission import Admission, Ticket, address_host
from neotwist.server.fairness import RunBlocking, thread_runner
from neotwist.server.logs import conch_log
from neotwist.server.repository import index
from neotwist.server.throttle import Attempt, LoginThrottle, Throttled, valid_login_name
from neotwist.sshchannel import CHANNEL_MAX_PACKET, CHANNEL_WINDOW, LinearBacklog
from neotwist.wire import limits

log = Logger()

SUBSYSTEM = b"neophytos"



MAX_AUTH_ATTEMPTS = 6
"""Failed authentication attempts allowed on one connection (OpenSSH's MaxAuthTries default)."""

LOGIN_ABORT_GRACE = 10.0
"""Seconds the disconnect message of a login timeout may take to leave before the connection is aborted."""

MAX_SESSION_CHANNELS = 4
"""Session channels open at once on one SSH connection: each holds a repository session."""

REFUSED_COMMAND = (
    b"neophytos: this server only offers the 'neophytos' subsystem; use neo-push / neo-pull, "
    b"or: ssh -s HOST neophytos\n"
)

PeerFactory = Callable[[Account, str], Protocol]
"""Builds the protocol for one subsystem session from the authenticated account and the client address
(``functools.partial(neotwist.server.session.make_server_peer, services)`` in the server)."""

def format_address(address: IAddress | None) -> str:
    """``host:port`` for an IPv4/IPv6 address (also inside an SSH channel's address), else its repr."""
    if isinstance(address, SSHTransportAddress):
        address = address.address
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _account_name(username: bytes) -> str | None:
    try:
        return username.decode("utf-8")
    except UnicodeDecodeError:
        return None


# --- authentication ----------------------------------------------------------------------------------------


@implementer(ICredentialsChecker)
class PasswordChecker:
    """Passwords, checked with bcrypt off the reactor. The avatar id is the :class:`Account`."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, accounts: AccountStore, run_blocking: RunBlocking) -> None:
        self._accounts = accounts
        self._run = run_blocking

    def requestAvatarId(self, credentials: IUsernamePassword) -> defer.Deferred[Account]:
        name = _account_name(credentials.username)
        try:
            password = credentials.password.decode("utf-8")
        except UnicodeDecodeError:
            password = None
        if name is None or password is None:
            # Still spend the bcrypt time, so a malformed name answers no faster than a wrong password.
            name, password = "", ""
        d = self._run(self._accounts.verify_password, name, password)

        def checked(account: Account | None) -> Account:
            if account is None:
                raise UnauthorizedLogin("wrong account or password")
            return account

        return d.addCallback(checked)


@implementer(ICredentialsChecker)
class PublicKeyChecker:
    """SSH public keys listed for the account in the store.

    Unlike conch's ``SSHPublicKeyChecker`` it answers a signature-less query with ``ValidPublicKey`` only for
    a key the account really has, and it looks keys up in a thread. The signature itself is verified by
    conch's :meth:`Key.verify`.
    """

    credentialInterfaces = (ISSHPrivateKey,)

    def __init__(self, accounts: AccountStore, run_blocking: RunBlocking) -> None:
        self._accounts = accounts
        self._run = run_blocking

    def requestAvatarId(self, credentials: ISSHPrivateKey) -> defer.Deferred[Account]:
        name = _account_name(credentials.username)
        if name is None:
            return defer.fail(UnauthorizedLogin("bad account name"))

        def lookup() -> Account | None:
            if not self._accounts.authorized(name, credentials.blob):
                return None
            return self._accounts.get(name)

        def checked(account: Account | None) -> Account:
            if account is None:
                raise UnauthorizedLogin("key not authorized")
            if not credentials.signature:
                raise conch_error.ValidPublicKey()
            try:
                key = Key.fromString(credentials.blob)
                valid = key.verify(credentials.signature, credentials.sigData)
            except (BadKeyError, ValueError, IndexError, struct.error):
                valid = False
            if not valid:
                raise UnauthorizedLogin("bad signature")
            return account

        return self._run(lookup).addCallback(checked)


class NeoUserAuthServer(SSHUserAuthServer):
    """``ssh-userauth`` with a short login timeout, few attempts, and a log line per login or failure."""

    _log = conch_log  # the protocol chatter, filtered (neotwist.server.logs)

    loginTimeout = limits.LOGIN_TIMEOUT
    attemptsBeforeDisconnect = MAX_AUTH_ATTEMPTS - 1  # conch disconnects when attempts exceed this

    def serviceStarted(self) -> None:
        # The factory's reactor times the login (a test's clock in tests) rather than the global reactor.
        assert self.transport is not None
        self.clock = getattr(self.transport.factory, "clock", None) or self.clock
        super().serviceStarted()
        self._turn: defer.Deferred[Any] | None = None  # this connection's login waiting for its turn
        self._checking = False  # a counted attempt of this connection is waiting or being checked

    def serviceStopped(self) -> None:
        # A login still waiting for its turn at the throttle goes with its connection (no check runs for it).
        if self._turn is not None:
            turn, self._turn = self._turn, None
            turn.cancel()
        super().serviceStopped()

    def tryAuth(self, kind: bytes, user: bytes, data: bytes) -> defer.Deferred[Any]:
        if kind == b"none":
            return super().tryAuth(kind, user, data)
        transport: Any = self.transport
        address = format_address(transport.transport.getPeer())
        # Client text: only a valid account name is logged or counted per account (see throttle.py).
        name = valid_login_name(user.decode("utf-8", "replace"))
        account = name if name is not None else "(invalid name)"
        method = kind.decode("ascii", "replace")
        throttle: LoginThrottle | None = getattr(transport.factory, "throttle", None)
        # Counted attempts: passwords, and public keys offered with a signature. A key offered without one is
        # only a question ("would this key do?"): clients ask about several keys before signing with one.
        counted = kind == b"password" or (kind == b"publickey" and data[:1] not in (b"", b"\x00"))
        if throttle is None or not counted:
            return self._check(kind, user, data, name, address, method, None)
        if self._checking:
            # The protocol lets a client send requests before the last is answered; OpenSSH never does. One
            # counted attempt at a time per connection, so one connection cannot queue many at the throttle.
            return defer.fail(conch_error.ConchError("one login attempt at a time"))
        self._checking = True
        # A password attempt counts against the account and the address; a signed key only against the address
        # (a key cannot be guessed, so a password-guessing attacker must not lock its owner's keys out).
        turn = self._turn = throttle.begin(name if kind == b"password" else None, address)

        def throttled(reason: Failure) -> Failure:
            if reason.check(defer.CancelledError):  # withdrawn: the connection went while it waited
                return Failure(conch_error.IgnoreAuthentication())
            reason.trap(Throttled)
            log.info("login throttled: account={account} address={address} method={method} wait={wait:.0f}",
                     account=account, address=address, method=method, wait=reason.value.wait)  # fmt: skip
            transport.sendDisconnect(DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE, reason.value.message.encode("ascii"))
            return Failure(conch_error.IgnoreAuthentication())

        def admitted(attempt: Attempt) -> defer.Deferred[Any]:
            self._turn = None
            return self._check(kind, user, data, name, address, method, attempt)

        def answered(result: Any) -> Any:
            self._checking = False
            return result

        return turn.addCallbacks(admitted, throttled).addBoth(answered)

    def _check(
        self, kind: bytes, user: bytes, data: bytes, name: str | None, address: str, method: str, attempt: Any
    ) -> defer.Deferred[Any]:
        """The check itself (admitted by the throttle when ``attempt`` is not None, which is then settled)."""
        transport: Any = self.transport
        throttle: LoginThrottle | None = getattr(transport.factory, "throttle", None)
        account = name if name is not None else "(invalid name)"
        if name is None and kind in (b"password", b"publickey"):
            d: defer.Deferred[Any] = defer.fail(UnauthorizedLogin("bad account name"))  # no such account can exist
        else:
            try:
                d = super().tryAuth(kind, user, data)
            except Exception:  # conch parses the method's data here: a short or malformed request
                d = defer.fail(conch_error.ConchError(f"malformed {method} request"))

        def succeeded(result: Any) -> Any:
            if throttle is not None:
                if attempt is not None:
                    throttle.settle(attempt, True)
                if name is not None:
                    throttle.succeeded(name, address)
            log.info(
                "login: account={account} address={address} method={method}",
                account=account,
                address=address,
                method=method,
            )
            return result

        def failed(reason: Failure) -> Failure:
            if throttle is not None and attempt is not None:
                throttle.settle(attempt, False if reason.check(UnauthorizedLogin) else None)
            expected = (LoginFailed, conch_error.ConchError, conch_error.IgnoreAuthentication,
                        conch_error.NotEnoughAuthentication)  # fmt: skip
            if not reason.check(*expected):
                # The check itself failed (no file descriptor left, say): no verdict on the credentials, so no
                # "authentication failed" either; the client hears why, and the connection ends.
                if descriptors.out_of_fds(reason.value):
                    why = descriptors.unavailable(f"checking the {method} of {account}").message
                elif index.is_storage_failure(reason.value):  # a full or failing disk: logged, said as such
                    error = index.storage_error(f"check the {method} of {account}", reason.value)
                    why = f"{error.message}; try again later"
                else:
                    log.failure("checking the {method} of {account}", reason, method=method, account=account)
                    why = "internal error while checking credentials; see the server log"
                transport.sendDisconnect(DISCONNECT_SERVICE_NOT_AVAILABLE, why.encode("ascii", "replace"))
                return Failure(conch_error.IgnoreAuthentication())
            if not reason.check(conch_error.IgnoreAuthentication, conch_error.NotEnoughAuthentication):
                log.info(
                    "login failed: account={account} address={address} method={method}",
                    account=account,
                    address=address,
                    method=method,
                )
            return reason

        return d.addCallbacks(succeeded, failed)


@implementer(IRealm)
class NeoRealm:
    """Turns an authenticated :class:`Account` into a :class:`NeoAvatar`."""

    def __init__(self, peer_factory: PeerFactory, reactor: Any) -> None:
        self._peer_factory = peer_factory
        self._reactor = reactor

    def requestAvatar(
        self, avatarId: Any, mind: Any, *interfaces: Any
    ) -> tuple[Any, NeoAvatar, Callable[[], None]]:
        if IConchUser not in interfaces or not isinstance(avatarId, Account):
            raise NotImplementedError("only conch users with a neophytos account")
        avatar = NeoAvatar(avatarId, self._peer_factory, self._reactor)
        return IConchUser, avatar, avatar.logout


# --- connection, avatar, channel -----------------------------------------------------------------------


class NeoConnection(SSHConnection):
    """``ssh-connection`` that refuses every channel type but ``session``, and more than
    MAX_SESSION_CHANNELS of those, with an open-failure reply and a log line instead of a traceback."""

    _log = conch_log  # the protocol chatter, filtered (neotwist.server.logs)

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        try:
            channel_type, rest = common.getNS(packet)
            sender_channel = struct.unpack(">L", rest[:4])[0]
        except (ValueError, struct.error):
            assert self.transport is not None
            self.transport.sendDisconnect(DISCONNECT_PROTOCOL_ERROR, b"malformed channel open")
            return
        sessions = sum(1 for c in self.channels.values() if isinstance(c, NeoSessionChannel))
        if channel_type == b"session" and sessions < MAX_SESSION_CHANNELS:
            super().ssh_CHANNEL_OPEN(packet)
            return
        why = "only session channels are allowed" if channel_type != b"session" else "too many sessions"
        log.info("refused channel {kind!r}: {why}", kind=channel_type, why=why)
        assert self.transport is not None
        self.transport.sendPacket(
            MSG_CHANNEL_OPEN_FAILURE,
            struct.pack(">2L", sender_channel, OPEN_ADMINISTRATIVELY_PROHIBITED)
            + common.NS(why.encode("ascii"))
            + common.NS(b""),
        )


class NeoAvatar(ConchUser):
    """An authenticated account on one SSH connection."""

    def __init__(self, account: Account, peer_factory: PeerFactory, reactor: Any) -> None:
        super().__init__()
        self.account = account
        self.peer_factory = peer_factory
        self.reactor = reactor
        self.channelLookup[b"session"] = NeoSessionChannel

    def logout(self) -> None:
        log.debug("logout: account={account}", account=self.account.name)


@implementer(ITransport)
class _ChannelTransport:
    """What the subsystem's protocol writes to: the channel, with closing routed through its exit status."""

    disconnecting = False

    def __init__(self, channel: NeoSessionChannel) -> None:
        self._channel = channel

    def write(self, data: bytes) -> None:
        self._channel.write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self._channel.write(b"".join(data))

    def loseConnection(self) -> None:
        self.disconnecting = True
        self._channel.loseConnection()

    def abortConnection(self) -> None:
        self.loseConnection()

    def getPeer(self) -> IAddress:
        return self._channel.getPeer()

    def getHost(self) -> IAddress:
        return self._channel.getHost()


class NeoSessionChannel(LinearBacklog, SSHChannel):
    """A ``session`` channel that can only become the ``neophytos`` subsystem.

    Attribute names avoid SSHChannel's own (``buf``, ``extBuf``, ``data``, ``closing``).
    """

    _log = conch_log  # the protocol chatter, filtered (neotwist.server.logs)

    name = b"session"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("localWindow", CHANNEL_WINDOW)
        kwargs.setdefault("localMaxPacket", CHANNEL_MAX_PACKET)
        super().__init__(*args, **kwargs)
        self.protocol: Protocol | None = None
        self._exit_code: int | None = None
        self._exit_sent = False
        self._protocol_lost = False

    @property
    def _avatar(self) -> NeoAvatar:
        assert isinstance(self.avatar, NeoAvatar)
        return self.avatar

    # --- requests ------------------------------------------------------------------------------------------

    def requestReceived(self, requestType: bytes, data: bytes) -> int:
        handler = getattr(self, "request_" + requestType.replace(b"-", b"_").decode("ascii", "replace"), None)
        if handler is None:
            log.info("refused channel request {kind!r}", kind=requestType)
            return 0
        return int(handler(data))

    def request_subsystem(self, data: bytes) -> int:
        name = common.getNS(data)[0]
        if self.protocol is not None or self._exit_code is not None:
            log.info("refused second subsystem/command on one channel")
            return 0
        if name != SUBSYSTEM:
            log.info("refused unknown subsystem {name!r}", name=name)
            return 0
        avatar = self._avatar
        address = format_address(self.getPeer())
        protocol = avatar.peer_factory(avatar.account, address)
        self.protocol = protocol
        protocol.makeConnection(_ChannelTransport(self))
        return 1

    def _refuse_command(self, what: str) -> int:
        if self.protocol is not None or self._exit_code is not None:
            return 0
        log.info(
            "refused {what}: account={account} address={address}",
            what=what,
            account=self._avatar.account.name,
            address=format_address(self.getPeer()),
        )
        self._exit_code = 1
        # After the request's success reply has gone out: explain on stderr, exit status 1, close.
        self._avatar.reactor.callLater(0, self._explain_and_close)
        return 1

    def _explain_and_close(self) -> None:
        if not self.localClosed:
            self.writeExtended(EXTENDED_DATA_STDERR, REFUSED_COMMAND)
            self.loseConnection()

    def request_shell(self, data: bytes) -> int:
        return self._refuse_command("shell")

    def request_exec(self, data: bytes) -> int:
        return self._refuse_command("exec")

    def request_pty_req(self, data: bytes) -> int:
        log.debug("refused pty-req")
        return 0

    def request_env(self, data: bytes) -> int:
        return 0

    # --- data and closing -------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.protocol is not None and not self._protocol_lost:
            self.protocol.dataReceived(data)

    def eofReceived(self) -> None:
        # conch has no half-close for subsystems: the client's EOF ends the session. A refused shell/exec
        # closes itself once its explanation is written (ssh sends EOF at once when stdin is empty).
        if self._exit_code is None:
            self.loseConnection()

    def loseConnection(self) -> None:
        """Close once everything written has left; first send the exit status (0 only after bye/bye)."""
        if self.buf or self.extBuf:
            self.closing = 1  # SSHChannel calls loseConnection again when its buffers drain
            return
        if not self._exit_sent and (self.protocol is not None or self._exit_code is not None):
            self._exit_sent = True
            code = self._exit_code
            if code is None:
                code = 0 if getattr(self.protocol, "ended_cleanly", False) else 1
            assert self.conn is not None
            self.conn.sendRequest(self, b"exit-status", struct.pack(">L", code))
        super().loseConnection()

    def closed(self) -> None:
        self._lose_protocol()

    def _lose_protocol(self) -> None:
        if self.protocol is None or self._protocol_lost:
            return
        self._protocol_lost = True
        if getattr(self.protocol, "ended_cleanly", False):
            reason = Failure(ConnectionDone("session ended"))
        else:
            reason = Failure(ConnectionLost("SSH channel closed"))
        self.protocol.connectionLost(reason)


class NeoServerTransport(SSHServerTransport):
    """The server transport, with the login timeout counted from the TCP connection (conch's own starts only
    when the client asks for ``ssh-userauth``, so a client that never asks would be held forever)."""

    _log = conch_log  # the protocol chatter, filtered (neotwist.server.logs)

    _login_timer: Any = None
    ticket: Ticket | None = None  # a place among the connections not yet logged in: given up at login
    _gone = False

    def connectionMade(self) -> None:
        super().connectionMade()
        tcpkeepalive.enable(self.transport)
        clock = getattr(self.factory, "clock", None)
        if clock is not None:
            self._login_timer = clock.callLater(limits.LOGIN_TIMEOUT, self._login_timed_out)

    def _login_timed_out(self) -> None:
        self._login_timer = None
        transport: Any = self.transport
        log.info("login timed out: address={address}", address=format_address(transport.getPeer()))
        self.sendDisconnect(DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE, b"login timed out")
        # The disconnect closes once written; a client that does not read would hold the descriptor: abort later.
        if clock := getattr(self.factory, "clock", None):
            clock.callLater(LOGIN_ABORT_GRACE, self._abort_if_open)

    def _abort_if_open(self) -> None:
        transport: Any = self.transport
        if transport is not None and not self._gone:
            transport.abortConnection()

    def _cancel_login_timer(self) -> None:
        if self._login_timer is not None and self._login_timer.active():
            self._login_timer.cancel()
        self._login_timer = None

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        # A client's disconnect message (OpenSSH sends one on every normal exit) is no server error.
        transport: Any = self.transport
        log.debug(
            "client disconnected: address={address} code={code} reason={reason!r}",
            address=format_address(transport.getPeer()) if transport else "?",
            code=reasonCode,
            reason=description,
        )

    def setService(self, service: Any) -> None:
        if service.name == b"ssh-connection":  # only set after a successful login
            self._cancel_login_timer()
            if self.ticket is not None:
                self.ticket.authenticated()
        super().setService(service)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._gone = True
        self._cancel_login_timer()
        if self.ticket is not None:
            self.ticket.release()
            self.ticket = None
        super().connectionLost(reason)


class NeoSSHFactory(SSHFactory):
    """The SSH server factory (one host key, our auth and connection services)."""

    _log = conch_log  # the protocol chatter, filtered (neotwist.server.logs)

    protocol = NeoServerTransport
    services = {
        b"ssh-userauth": NeoUserAuthServer,
        b"ssh-connection": NeoConnection,
    }

    def __init__(
        self,
        host_key: Key,
        portal: Portal,
        clock: Any,
        throttle: LoginThrottle | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.portal = portal
        self.clock = clock
        self.admission = admission
        self.throttle = throttle if throttle is not None else LoginThrottle(clock)
        self.privateKeys = {host_key.sshType(): host_key}
        self.publicKeys = {host_key.sshType(): host_key.public()}
        self.primes = None

    def getPrimes(self) -> None:
        return None

    def buildProtocol(self, addr: Any) -> Any:
        """The transport for a new connection; none (closed at once) once too many wait to log in."""
        ticket = None
        if self.admission is not None:
            ticket = self.admission.admit(address_host(addr))
            if ticket is None:
                return None
        protocol: Any = super().buildProtocol(addr)
        protocol.ticket = ticket
        return protocol


def make_ssh_factory(
    host_key: Key,
    accounts: AccountStore,
    peer_factory: PeerFactory,
    reactor: Any,
    run_blocking: RunBlocking | None = None,
    throttle: LoginThrottle | None = None,
    admission: Admission | None = None,
) -> NeoSSHFactory:
    """The SSH server factory for ``accounts``, running each session's protocol from ``peer_factory``.

    ``run_blocking`` runs bcrypt and SQLite work; by default the reactor's thread pool. ``throttle`` counts
    failed logins (share the TLS sessions' one so both transports count together); ``admission`` bounds the
    connections not yet logged in (shared with the TLS listener).
    """
    run = run_blocking if run_blocking is not None else thread_runner(reactor)
    checkers: list[Any] = [PasswordChecker(accounts, run), PublicKeyChecker(accounts, run)]
    realm: Any = NeoRealm(peer_factory, reactor)
    portal = Portal(realm, checkers)
    return NeoSSHFactory(host_key, portal, reactor, throttle, admission)
