"""Open a Neophytos session: pick the transport, connect a client Peer, say hello, log in if TLS asks for it.

This is the one place neo-push and neo-pull get a :class:`Session` from; every way it can fail surfaces as a
:class:`ConnectError` with a one-line message fit to print as is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

import neotwist
from neotwist import tcpkeepalive
from neotwist.client.keepalive import Watchdog, limit_setup
from neotwist.client.knownhosts import KnownHostsFile, default_known_hosts, default_tls_known_hosts
from neotwist.client.remote import AccessRefused, ConnectError, Remote
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, NeoError, RemoteError
from neotwist.wire.messages import Bye, Hello, LoggedIn, Login, Message, Welcome
from neotwist.wire.peer import Peer

if TYPE_CHECKING:
    from neotwist.client.openssh import OpenSSHLink

log = Logger()

SOFTWARE = f"neophytos/{neotwist.__version__}"

SEND_AHEAD = limits.MIN_WINDOW
"""The most of the server's receive window this client sends into before credit returns (see connect)."""

__all__ = ["AccessRefused", "ConnectError", "ConnectOptions", "Session", "connect", "start_session"]


@dataclass
class ConnectOptions:
    """How to reach and authenticate to a remote (filled from the command line by the CLI)."""

    identity_files: list[str] = field(default_factory=list)
    get_password: Callable[[], str | None] | None = None  # called at most once, only when needed
    known_hosts: Path | None = None  # None: default in the user config dir
    tls_known_hosts: Path | None = None
    accept_new_host_key: bool = False
    confirm: Callable[[str], bool] | None = None  # interactive yes/no prompt; None: non-interactive
    tls_ca: Path | None = None
    ssh_command: str | None = None
    window: int = limits.WINDOW
    use_agent: bool = True
    get_passphrase: Callable[[str], str | None] | None = None  # for encrypted identity files; None: skip them
    timeout: float | None = limits.SILENCE_TIMEOUT  # seconds of silence before the link counts as dead; None: never


class ClientHandler:
    """The client's MessageHandler: in protocol v1 the server sends no requests, so there is nothing to do."""

    def __init__(self) -> None:
        self.lost: Failure | None = None

    def message_received(self, peer: Peer, message: Message) -> Deferred[None] | None:
        log.warn("ignoring unexpected {type} message from the server", type=type(message).__name__)
        return None

    def connection_lost(self, peer: Peer, reason: Failure) -> None:
        self.lost = reason


@dataclass
class Session:
    """One open, authenticated session: send requests with ``peer``; end it with :meth:`close`."""

    peer: Peer
    welcome: Welcome
    remote: Remote

    def close(self) -> Deferred[None]:
        """Say bye (EOF alone is not a clean end), then wait for the server to close the connection."""
        closed = self.peer.when_closed()

        def said_bye(result: object) -> Deferred[None]:
            if isinstance(result, Failure):
                log.debug("bye failed: {why}", why=result.getErrorMessage())
                self.peer.close()
            return closed

        self.peer.request(Bye(rid=0)).addBoth(said_bye)
        return closed


def _open_password(options: ConnectOptions) -> Callable[[], str | None] | None:
    """``options.get_password`` wrapped so it runs at most once, whatever asks (SSH auth or TLS login)."""
    if options.get_password is None:
        return None
    asked: list[str | None] = []
    get = options.get_password

    def once() -> str | None:
        if not asked:
            asked.append(get())
        return asked[0]

    return once


async def _connect(reactor: Any, remote: Remote, options: ConnectOptions) -> Session:
    for name in options.identity_files:
        if not Path(name).expanduser().is_file():
            raise ConnectError(f"identity file {name} does not exist")
    get_password = _open_password(options)
    # What we send ahead of the server's credit is held here, copied again by the SSH channel and transport
    # buffers (about three times over): the smallest window honoured keeps a push's memory bounded, and on a
    # local link it still keeps the server busy.
    peer = Peer(ClientHandler(), window=options.window, is_client=True, max_peer_window=SEND_AHEAD)
    link: OpenSSHLink | None = None
    # Each transport's module is imported only when it is the one used (tests/test_startup_e2e.py): the TLS
    # client's imports (twisted.internet.endpoints among them) cost an SSH push or pull start-up time for nothing.
    if remote.scheme == "tls":
        from neotwist.client.tlsclient import TLSOptions, open_tls

        await open_tls(
            reactor,
            remote,
            peer,
            TLSOptions(
                known_hosts=KnownHostsFile(options.tls_known_hosts or default_tls_known_hosts()),
                accept_new_host_key=options.accept_new_host_key,
                confirm=options.confirm,
                ca=options.tls_ca,
            ),
        )
    elif options.ssh_command is not None:
        from neotwist.client.openssh import open_openssh

        link = open_openssh(reactor, remote, peer, options.ssh_command)
    else:
        from neotwist.client.sshclient import SSHOptions, open_ssh

        await open_ssh(
            reactor,
            remote,
            peer,
            SSHOptions(
                known_hosts=KnownHostsFile(options.known_hosts or default_known_hosts()),
                accept_new_host_key=options.accept_new_host_key,
                confirm=options.confirm,
                identity_files=[Path(p) for p in options.identity_files],
                use_agent=options.use_agent,
                get_password=get_password,
                get_passphrase=options.get_passphrase,
            ),
        )
    try:
        welcome = await _handshake(peer, remote, get_password, options.window)
    except ConnectError:
        peer.close()
        raise
    except Exception as e:
        peer.close()
        if link is not None and link.failure() is not None:
            raise link.failure() from None  # type: ignore[misc]
        if isinstance(e, NeoError):
            refused = e.code in (ErrorCode.AUTH_FAILED, ErrorCode.THROTTLED)  # a verdict on the credentials
            raise (AccessRefused if refused else ConnectError)(f"{remote.address}: {e.message}") from None
        raise ConnectError(f"session with {remote.address} failed during hello: {e}") from None
    tcpkeepalive.enable(peer.transport)
    peer.features = frozenset(welcome.features)
    if options.timeout and limits.FEATURE_PING in welcome.features:
        Watchdog(reactor, peer, remote.address, options.timeout).start()
    return Session(peer=peer, welcome=welcome, remote=remote)


async def _handshake(
    peer: Peer, remote: Remote, get_password: Callable[[], str | None] | None, window: int
) -> Welcome:
    hello = Hello(rid=0, version=limits.PROTOCOL_VERSION, software=SOFTWARE, window=window)
    try:
        welcome = await peer.request(hello)
    except RemoteError as e:
        if e.code == ErrorCode.UNSUPPORTED_VERSION:
            raise ConnectError(
                f"{remote.address} does not speak protocol version {limits.PROTOCOL_VERSION}: {e.message}"
            ) from None
        raise
    if not isinstance(welcome, Welcome):
        raise ConnectError(f"{remote.address} answered hello with {type(welcome).__name__}, not welcome")
    if welcome.version != limits.PROTOCOL_VERSION:
        raise ConnectError(
            f"{remote.address} runs {welcome.software} with protocol version {welcome.version}; this client "
            f"({SOFTWARE}) speaks version {limits.PROTOCOL_VERSION}: upgrade the older side"
        )
    if welcome.login_required:
        password = get_password() if get_password is not None else None
        if password is None:
            raise AccessRefused(f"{remote.address} requires a password for {remote.user} and none was given")
        if len(password.encode("utf-8")) > limits.MAX_PASSWORD:
            raise ConnectError(f"passwords are limited to {limits.MAX_PASSWORD} bytes")
        try:
            reply = await peer.request(Login(rid=0, account=remote.user, password=password))
        except RemoteError as e:
            if e.code == ErrorCode.AUTH_FAILED:
                raise AccessRefused(f"authentication failed for {remote.user}@{remote.address}") from None
            raise
        if not isinstance(reply, LoggedIn):
            raise ConnectError(f"{remote.address} answered login with {type(reply).__name__}, not logged_in")
    return welcome


async def start_session(
    peer: Peer, remote: Remote, get_password: Callable[[], str | None] | None = None
) -> Session:
    """The hello (and a login, if the server asks) over ``peer``, already joined to a server by other means than
    :func:`connect`'s transports (an in-memory link: :mod:`neotwist.testing`)."""
    welcome = await _handshake(peer, remote, get_password, peer.window)
    peer.features = frozenset(welcome.features)
    return Session(peer=peer, welcome=welcome, remote=remote)


def connect(reactor: Any, remote: Remote, options: ConnectOptions) -> Deferred[Session]:
    """Open a session with ``remote``: transport, host/server check, authentication, hello, TLS login.

    Errbacks with :class:`ConnectError` (one-line message) on every failure.
    """
    setup = ensureDeferred(_connect(reactor, remote, options))
    if not options.timeout:
        return setup
    silent = ConnectError(f"no answer from {remote.address} within {options.timeout:g} s (--timeout): is the "
                          "server up, and the address and port right?")  # fmt: skip
    return limit_setup(reactor, setup, options.timeout, silent)
