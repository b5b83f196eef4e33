"""One connection on the server: the thin dispatcher in front of the request handlers.

A :class:`ServerSession` is the :class:`~neotwist.wire.peer.MessageHandler` of one server-side
:class:`~neotwist.wire.peer.Peer`, whatever carries it (an SSH subsystem channel or a TLS stream). It owns what
belongs to the connection itself: ``hello``, ``login`` and ``bye``, its timers (login, idle, the grace a closing
connection gets) and its end. Every other request goes, through one dispatch table, to the module whose job it
is, with the connection's :class:`~neotwist.server.context.RequestContext`:

- :mod:`.targets`: list, open, close and remove targets;
- :mod:`.pushes`: push_begin, have, put, entries, commit, abort (push state: :mod:`.pushstate`; quotas:
  :mod:`.quota`);
- :mod:`.reads`: list and get;
- :mod:`.stash`: snapshots, versions, deleted, prune, check;
- :mod:`.sharing`: sub-accounts, grants, shares, usage.

Back-pressure: a handler's Deferred holds the next message back, and only then is the frame's credit returned
to the client. Uploads and reads are *admitted* rather than awaited (see
:meth:`~neotwist.server.context.RequestContext.admit`): when every job slot is taken the session stops reading,
and the client stops sending.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

import neotwist
from neotwist.codec import CodecError
from neotwist.server import pushes, reads, sharing, stash, targets
from neotwist.server.accounts import Account
from neotwist.server.admission import Ticket
from neotwist.server.context import LoginRevoked, RequestContext, ServerServices, resolve_access
from neotwist.server.errormap import answered, to_wire
from neotwist.server.repository.errors import RepositoryError
from neotwist.server.rights import Access, Right
from neotwist.server.throttle import Attempt, Throttled, valid_login_name
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, NeoError, ProtocolViolation
from neotwist.wire.messages import Bye, Hello, LoggedIn, Login, Message, Welcome
from neotwist.wire.peer import Peer

__all__ = ["Access", "Right", "ServerServices", "ServerSession", "make_server_peer", "resolve_access"]

log = Logger()

SOFTWARE = f"neophytos-server/{neotwist.__version__}"

MAX_LOGIN_ATTEMPTS = 3
"""Failed ``login`` messages on one connection before the server closes it (after answering the last)."""

PREAUTH_MAX_FRAME = 64 * 1024
"""Largest frame a TLS client may send before it has logged in (hello and login need a few KiB): a connection
that has proved nothing holds at most this much of a partial frame, not MAX_FRAME."""

PREAUTH_MAX_INBOX = 256 * 1024
"""Bytes of requests a TLS client may have queued before it has logged in (while its login is checked)."""

MAX_CONNECTIONS_PER_ACCOUNT = 32
"""Sessions one account may have open at once, over SSH and TLS (bench runs 16 clients of one account)."""

PEER_WINDOW_HONOURED = limits.WINDOW
"""The most of a client's advertised window (up to 256 MiB) the server sends into before the client's credit
returns: those bytes sit in the server's socket buffers while the client does not read."""

ABORT_GRACE = 10.0
"""Seconds a closing connection may take to flush its last frames (an error saying why) before it is aborted."""

Handler = Callable[[RequestContext, Peer, Any], "Deferred[None] | None"]


class ServerSession:
    """The commands of one connection. ``account`` is set by SSH before the first frame, or by ``login``."""

    _handlers: dict[type, Handler] = {
        **targets.HANDLERS,
        **pushes.HANDLERS,
        **reads.HANDLERS,
        **stash.HANDLERS,
        **sharing.HANDLERS,
    }

    def __init__(
        self, services: ServerServices, account: Account | None, address: str, ticket: Ticket | None = None
    ) -> None:
        self.services = services
        self.address = address
        self.ticket = ticket  # a place among the connections not yet logged in (TLS): given up at login
        self.login_required = account is None
        self.context = RequestContext(services, account, self._hang_up)
        self._hello_seen = False
        self._failed_logins = 0
        clock = services.reactor
        self._login_timer = clock.callLater(limits.LOGIN_TIMEOUT, self._login_timed_out) if account is None else None
        self._login_turn: Deferred[Attempt] | None = None
        self._idle_timer = clock.callLater(limits.IDLE_TIMEOUT, self._idle_timed_out)
        self._abort_timer: Any = None  # a close waiting for the peer: abort when it fires (_hang_up)

    @property
    def account(self) -> Account | None:
        return self.context.account

    @property
    def peer(self) -> Peer | None:
        return self.context.peer

    @peer.setter
    def peer(self, peer: Peer | None) -> None:
        self.context.peer = peer

    @property
    def account_name(self) -> str:
        return self.context.account_name

    @property
    def _closed(self) -> bool:
        return self.context.closed

    # --- dispatch --------------------------------------------------------------------------------------

    def message_received(self, peer: Peer, message: Message) -> Deferred[None] | None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(limits.IDLE_TIMEOUT)
        kind = type(message)
        if kind is Hello:
            self.on_hello(peer, message)  # type: ignore[arg-type]
            return None
        if not self._hello_seen:
            raise ProtocolViolation(ErrorCode.PROTOCOL, f"{kind.__name__} before hello")
        if kind is Bye:
            self.on_bye(peer, message)  # type: ignore[arg-type]
            return None
        if kind is Login:
            return self.on_login(peer, message)  # type: ignore[arg-type]
        if self.account is None:
            raise NeoError(ErrorCode.AUTH_REQUIRED, "log in first (login message)")
        if self.context.revoked:
            raise LoginRevoked()
        handler = self._handlers.get(kind)
        if handler is None:
            raise ProtocolViolation(ErrorCode.PROTOCOL, f"{kind.__name__} is not a request")
        try:
            result = handler(self.context, peer, message)
        except (RepositoryError, CodecError) as e:
            raise to_wire(e) from None
        return None if result is None else result.addErrback(answered).addErrback(self.context.hang_up_if_revoked)

    # --- session -----------------------------------------------------------------------------------------

    def on_hello(self, peer: Peer, message: Hello) -> None:
        if self._hello_seen:
            raise ProtocolViolation(ErrorCode.PROTOCOL, "second hello")
        if message.version != limits.PROTOCOL_VERSION:
            raise ProtocolViolation(
                ErrorCode.UNSUPPORTED_VERSION,
                f"this server speaks protocol version {limits.PROTOCOL_VERSION}, not {message.version}",
            )
        if self.account is not None:
            self._check_connections(self.account)
        self._hello_seen = True
        peer.send(
            Welcome(
                rid=message.rid,
                version=limits.PROTOCOL_VERSION,
                software=SOFTWARE,
                window=peer.window,
                login_required=self.account is None,
                account="" if self.account is None else self.account.name,
                features=[limits.FEATURE_PING, limits.FEATURE_GET_FILES, limits.FEATURE_BYTE_NAMES],
            )
        )

    def on_login(self, peer: Peer, message: Login) -> Deferred[None]:
        if self.account is not None:
            raise NeoError(ErrorCode.PROTOCOL, f"already logged in as {self.account.name}")
        throttle = self.services.throttle
        assert throttle is not None
        # The name is client text: only a valid account name is logged or becomes a throttle key (control
        # characters could forge log lines; random names would only churn the throttle's memory).
        name = valid_login_name(message.account)
        shown = name if name is not None else "(invalid name)"

        def throttled(failure: Failure) -> None:
            failure.trap(Throttled)
            self._count_failed_login(peer)
            log.info("login throttled: account={account} address={address} method=password wait={wait:.0f}",
                     account=shown, address=self.address, wait=failure.value.wait)  # fmt: skip
            raise NeoError(ErrorCode.THROTTLED, failure.value.message)

        def refuse() -> None:
            self._count_failed_login(peer)
            log.info("login failed: account={account} address={address} method=password", account=shown,
                     address=self.address)  # fmt: skip
            raise NeoError(ErrorCode.AUTH_FAILED, "wrong account or password")

        def check(attempt: Attempt) -> Deferred[None]:
            """Admitted by the throttle (which bounds the checks of this account and address running at once, so a
            burst of connections gets no more guesses than it allows): the bcrypt check, in a thread."""
            self._login_turn = None  # admitted: no longer withdrawn when the connection goes

            def checked(account: Account | None) -> None:
                if account is None:
                    throttle.settle(attempt, False)
                    refuse()
                    return
                throttle.settle(attempt, True)
                self._check_connections(account)
                self.context.account = account
                self._cancel_login_timer()
                peer.max_frame, peer.max_inbox = limits.MAX_FRAME, None
                if self.ticket is not None:
                    self.ticket.authenticated()
                log.info(
                    "login: account={account} address={address} method=password",
                    account=account.name,
                    address=self.address,
                )
                peer.send(LoggedIn(rid=message.rid, account=account.name))

            def errored(failure: Failure) -> Failure:
                throttle.settle(attempt, None)  # not a wrong password: an error of ours
                return failure

            if name is None:  # no such account can exist: no bcrypt to spend
                throttle.settle(attempt, False)
                refuse()
            d = self.services.run(self.services.accounts.verify_password, message.account, message.password)
            return d.addCallbacks(checked, errored)

        # Kept so that a connection lost while its login waits for its turn withdraws it (connection_lost).
        self._login_turn = throttle.begin(name, self.address)
        return self._login_turn.addCallbacks(check, throttled)

    def _check_connections(self, account: Account) -> None:
        """Refuse (fatally) a session over MAX_CONNECTIONS_PER_ACCOUNT for ``account``: each holds memory (see
        SESSION_MEMORY) and worker time, and one tenant must not take them all."""
        others = sum(
            1
            for s in self.services.sessions
            if s is not self.context and s.account is not None and s.account.id == account.id
        )
        if others >= MAX_CONNECTIONS_PER_ACCOUNT:
            log.info("connection refused: account={account} address={address}: {n} connections open",
                     account=account.name, address=self.address, n=others)  # fmt: skip
            raise NeoError(
                ErrorCode.LIMIT_EXCEEDED,
                f"account {account.name} has {others} connections open, the most this server allows: "
                "close some (or wait for them to end) and retry",
            )

    def _count_failed_login(self, peer: Peer) -> None:
        self._failed_logins += 1
        if self._failed_logins >= MAX_LOGIN_ATTEMPTS:
            self.services.reactor.callLater(0, peer.close)  # after the error reply is queued

    def on_bye(self, peer: Peer, message: Bye) -> None:
        peer.send(Bye(rid=message.rid))
        peer.close()

    # --- timers and the end --------------------------------------------------------------------------------

    def _cancel_login_timer(self) -> None:
        if self._login_timer is not None and self._login_timer.active():
            self._login_timer.cancel()
        self._login_timer = None

    def _login_timed_out(self) -> None:
        self._login_timer = None
        log.info("login timed out: address={address}", address=self.address)
        if self.peer is not None:
            self.peer.reply_error(0, NeoError(ErrorCode.AUTH_REQUIRED, "login timed out"))
            self._hang_up("login timed out")

    def _idle_timed_out(self) -> None:
        self._idle_timer = None
        log.info("idle timeout: address={address}", address=self.address)
        # Not peer.close(): that waits for queued frames, which a client that stopped reading never takes.
        self._abort("idle timeout")

    def _hang_up(self, why: str) -> None:
        """Close the connection once what is queued is written, and abort it if it is still there ABORT_GRACE
        seconds later. A close waits for the peer: one that stops reading, or over TLS one that never finished
        its handshake (``TLSMemoryBIOProtocol.loseConnection`` waits for it), would hold the connection and its
        file descriptor for ever."""
        if self.peer is None or self._closed:
            return
        self.peer.close()
        if self._abort_timer is None:
            self._abort_timer = self.services.reactor.callLater(ABORT_GRACE, self._abort, why)

    def _abort(self, why: str) -> None:
        """Drop the connection now, whatever is queued (``abortConnection``: no wait for the peer)."""
        self._abort_timer = None
        transport: Any = self.peer.transport if self.peer is not None else None
        if transport is None or self._closed:
            return
        log.info("connection aborted: account={account} address={address}: {why}", account=self.account_name,
                 address=self.address, why=why)  # fmt: skip
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.loseConnection()

    def connection_lost(self, peer: Peer, reason: Failure) -> None:
        ctx = self.context
        for handle in ctx.handles.values():
            pushes.submit_puts(ctx, handle)  # chunks already received are kept for the next push
        ctx.closed = True
        self._cancel_login_timer()
        if self.ticket is not None:
            self.ticket.release()
        if self._login_turn is not None:
            self._login_turn.cancel()  # a login still waiting for its turn at the throttle goes
            self._login_turn = None
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        self._abort_timer = None
        self.services.sessions.discard(ctx)
        handles, ctx.handles = list(ctx.handles.values()), {}
        for handle in handles:
            ensureDeferred(pushes.end_push(ctx, handle, "abandoned")).addErrback(
                lambda f: log.failure("aborting a push after the connection was lost", f)
            ).addBoth(ctx.close_handle, handle)
        if not peer.ended_cleanly:
            log.info(
                "connection lost: account={account} address={address}: {why}",
                account=self.account.name if self.account else "-",
                address=self.address,
                why=reason.getErrorMessage(),
            )


def make_server_peer(
    services: ServerServices, account: Account | None, address: str, ticket: Ticket | None = None
) -> Peer:
    """The protocol for one connection: a server Peer driving a new :class:`ServerSession`.

    ``account`` is the SSH-authenticated account, or None for TLS (the session then asks for ``login``, and
    gives ``ticket`` up once logged in).
    """
    session = ServerSession(services, account, address, ticket)
    peer = Peer(session, is_client=False, max_peer_window=PEER_WINDOW_HONOURED)
    if account is None:  # until login: small frames, few of them (see PREAUTH_MAX_FRAME)
        peer.max_frame = PREAUTH_MAX_FRAME
        peer.max_inbox = PREAUTH_MAX_INBOX
    session.peer = peer
    return peer
