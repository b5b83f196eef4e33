"""Reach the server's TLS port, its public key pinned (trust on first use) or its certificate checked by a CA.

Pinning works on the SHA-256 of the leaf certificate's SubjectPublicKeyInfo, so a server may renew its
certificate with the same key without tripping the pin. The check runs inside OpenSSL's verify callback for
the leaf (depth 0), that is during the handshake: a failed pin aborts the connection through
``TLSMemoryBIOProtocol.failVerification`` (the path Twisted's own hostname check takes) before the Peer is
even connected, so not one application byte reaches an unverified server. As a second guard the Peer is only
connected in ``handshakeCompleted`` and only if the pin check has passed.

With ``--tls-ca FILE`` it is ordinary X.509: the chain must lead to a certificate in FILE and the certificate
must name the host (``optionsForClientTLS``), and nothing is pinned.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IReactorTCP,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from neotwist.client.knownhosts import (
    TLS_KEY_TYPE,
    TLS_PUBLIC_KEY,
    Confirm,
    KnownHostsFile,
    check_identity,
    spki_fingerprint,
)
from neotwist.client.remote import ConnectError, Remote

log = Logger()

CONNECT_TIMEOUT = 30


@dataclass
class TLSOptions:
    """How to trust the server: pins in ``known_hosts`` (TOFU), or a CA bundle when ``ca`` is set."""

    known_hosts: KnownHostsFile
    accept_new_host_key: bool = False
    confirm: Confirm | None = None
    ca: Path | None = None


def spki_sha256(certificate: x509.Certificate) -> bytes:
    """SHA-256 of the certificate's DER SubjectPublicKeyInfo: what a TLS pin records."""
    der = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


def load_ca(path: Path) -> Any:
    """The trust root for ``--tls-ca``: every certificate in a PEM file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConnectError(f"cannot read --tls-ca file {path}: {e.strerror}") from None
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConnectError(f"--tls-ca file {path} holds no PEM certificate") from None
    return ssl.trustRootFromCertificates(
        [ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in certificates]
    )


class _PinState:
    """Outcome of the leaf check, shared by the verify callback and the link protocol."""

    def __init__(self) -> None:
        self.checked = False
        self.error: ConnectError | None = None


@implementer(IOpenSSLClientConnectionCreator)
class PinningConnectionCreator:
    """TLS client connections that accept the server only if its leaf key matches the pin (or gets pinned)."""

    def __init__(self, hostname: str, check: Callable[[bytes], None], state: _PinState) -> None:
        self._hostname = hostname
        self._check = check
        self._state = state
        self._ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self._ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        self._ctx.set_options(SSL.OP_NO_COMPRESSION)

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self._ctx, None)
        connection.set_app_data(tlsProtocol)
        if not _is_ip(self._hostname):
            connection.set_tlsext_host_name(self._hostname.encode("idna"))
        state = self._state
        check = self._check

        def verify(conn: SSL.Connection, cert: object, err: int, depth: int, ok: int) -> bool:
            if depth != 0:
                return True  # the chain is not what we trust; only the leaf's key is
            try:
                assert isinstance(cert, crypto.X509)
                check(spki_sha256(cert.to_cryptography()))
            except ConnectError as e:
                state.error = e
            except Exception as e:  # never let an exception vanish inside OpenSSL
                state.error = ConnectError(f"cannot check the TLS certificate: {e}")
            else:
                state.checked = True
                return True
            tlsProtocol.failVerification(Failure(state.error))
            return False

        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
        return connection


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


@implementer(IHandshakeListener)
class _TLSLink(Protocol):
    """Connects the Peer to the TLS stream once the handshake (and so the server check) has succeeded."""

    def __init__(self, remote: Remote, peer: Protocol, state: _PinState | None, ca: Path | None) -> None:
        self._remote = remote
        self._peer = peer
        self._state = state
        self._ca = ca
        self.ready: Deferred[None] = Deferred()
        self._peer_connected = False
        self._peer_lost = False
        self.first_bytes = b""  # what the server sent first, before any TLS (see _SniffingTLS)

    def handshakeCompleted(self) -> None:
        if self._state is not None and not self._state.checked:
            # Cannot happen with OpenSSL (the leaf is always verified) but never talk to an unchecked server.
            self._state.error = self._state.error or ConnectError(
                f"the TLS certificate of {self._remote.address} was not checked; refusing to continue"
            )
            assert self.transport is not None
            self.transport.abortConnection()
            return
        self._peer_connected = True
        self._peer.makeConnection(self.transport)
        self.ready.callback(None)

    def dataReceived(self, data: bytes) -> None:
        if self._peer_connected:
            self._peer.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._peer_connected:
            if not self._peer_lost:
                self._peer_lost = True
                self._peer.connectionLost(reason)
            return
        if self.ready.called:
            return
        if self._state is not None and self._state.error is not None:
            self.ready.errback(self._state.error)
        elif isinstance(reason.value, ConnectError):
            self.ready.errback(reason.value)
        elif self._ca is not None:
            self.ready.errback(
                ConnectError(
                    f"the TLS certificate of {self._remote.address} could not be verified with --tls-ca "
                    f"{self._ca}: {_describe(reason)}"
                )
            )
        elif self.first_bytes.startswith(b"SSH-"):
            ssh = dataclasses.replace(self._remote, scheme="ssh").display()
            self.ready.errback(
                ConnectError(f"{self._remote.address} speaks SSH, not TLS: use {ssh} (the SSH port is 4322 "
                             "by default)")
            )
        else:
            self.ready.errback(
                ConnectError(f"TLS handshake with {self._remote.address} failed: {_describe(reason)}")
            )


class _SniffingTLS(TLSMemoryBIOProtocol):
    """Keeps the first bytes the server sends, so that a port that speaks SSH can be named as such."""

    def dataReceived(self, data: bytes) -> None:
        link = self.wrappedProtocol
        if isinstance(link, _TLSLink) and len(link.first_bytes) < 8:
            link.first_bytes += data[: 8 - len(link.first_bytes)]
        super().dataReceived(data)


class _SniffingTLSFactory(TLSMemoryBIOFactory):
    protocol = _SniffingTLS


def _describe(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        parts = [str(item[-1]) for item in value.args[0] if isinstance(item, tuple)]
        if parts:
            return "; ".join(parts)
    return reason.getErrorMessage() or type(value).__name__


def open_tls(reactor: IReactorTCP, remote: Remote, peer: Protocol, options: TLSOptions) -> Deferred[None]:
    """Connect ``peer`` to ``remote``'s TLS port once the server is verified (pin or CA).

    Fires with None after the handshake, when ``peer.makeConnection`` has been called; errbacks with a
    one-line :class:`ConnectError` (cannot connect, pin mismatch, unknown key refused, CA check failed).
    """
    state: _PinState | None
    creator: Any
    if options.ca is not None:
        state = None
        creator = ssl.optionsForClientTLS(remote.host, trustRoot=load_ca(options.ca))
    else:
        state = _PinState()

        def check(digest: bytes) -> None:
            check_identity(
                options.known_hosts,
                remote.host,
                remote.port,
                TLS_KEY_TYPE,
                digest,
                display_fingerprint=spki_fingerprint(digest),
                accept_new=options.accept_new_host_key,
                confirm=options.confirm,
                kind=TLS_PUBLIC_KEY,
            )

        creator = PinningConnectionCreator(remote.host, check, state)
    link = _TLSLink(remote, peer, state, options.ca)
    tcp: Any = HostnameEndpoint(reactor, remote.host, remote.port, timeout=CONNECT_TIMEOUT)

    def tcp_failed(reason: Failure) -> None:
        if not link.ready.called:
            why = reason.getErrorMessage()
            link.ready.errback(ConnectError(f"cannot connect to {remote.address}: {why}"))

    links: Any = Factory.forProtocol(lambda: link)
    tcp.connect(_SniffingTLSFactory(creator, True, links)).addErrback(tcp_failed)
    return link.ready
