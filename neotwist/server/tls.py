"""The TLS transport: the same protocol as the SSH subsystem, on a TLS 1.2+ stream, with in-band login.

TLS is layered here (``TLSMemoryBIOFactory``) over whatever stream endpoint the operator names
(``tcp:4323``, ``tcp6:4323:interface=::``, ``systemd:domain=INET:index=1``...), so every Twisted stream
endpoint works and the TLS settings stay ours: the server's certificate and key, TLS 1.2 or newer only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from twisted.internet import ssl
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

from neotwist import tcpkeepalive
from neotwist.server.admission import Admission, address_host
from neotwist.server.ssh import format_address

TlsPeerFactory = Callable[..., Protocol]
"""Builds the protocol for one TLS connection from the client address (and ``ticket=``, its place among the
connections not yet logged in, to give up at login): the session starts unauthenticated
(``functools.partial(make_server_peer, services, None)`` in the server)."""


def tls_options(cert_path: Path, key_path: Path) -> ssl.CertificateOptions:
    """Server TLS options from PEM files: our certificate, TLS 1.2 as the floor, Twisted's cipher defaults."""
    # cryptography objects, not pyOpenSSL's X509/PKey (deprecated by pyOpenSSL, accepted by its Context).
    key: Any = load_pem_private_key(Path(key_path).read_bytes(), password=None)
    cert: Any = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return ssl.CertificateOptions(
        privateKey=key,
        certificate=cert,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


class NeoTLSServerFactory(Factory):
    """Plain-stream factory of session protocols (wrapped in TLS by :func:`make_tls_factory`)."""

    def __init__(self, peer_factory: TlsPeerFactory, admission: Admission | None = None) -> None:
        self._peer_factory = peer_factory
        self._admission = admission

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        if self._admission is None:
            protocol = self._peer_factory(format_address(addr))
        else:
            ticket = self._admission.admit(address_host(addr))
            if ticket is None:
                return None  # too many connections waiting to log in: closed before the TLS handshake
            protocol = self._peer_factory(format_address(addr), ticket=ticket)
        protocol.factory = self
        return protocol


class _TLSProtocol(TLSMemoryBIOProtocol):
    """TLS with TCP keepalive on the socket (a client that vanished without a FIN is noticed)."""

    def makeConnection(self, transport: Any) -> None:
        tcpkeepalive.enable(transport)
        super().makeConnection(transport)


class _TLSFactory(TLSMemoryBIOFactory):
    """TLS over the session factory, closing the connection when that builds no protocol (admission refused)
    instead of wrapping None."""

    protocol = _TLSProtocol

    def buildProtocol(self, addr: IAddress | None) -> Any:
        wrapped = self.wrappedFactory.buildProtocol(addr)
        return None if wrapped is None else self.protocol(self, wrapped)


def make_tls_factory(
    cert_path: Path,
    key_path: Path,
    peer_factory: TlsPeerFactory,
    clock: Any | None = None,
    admission: Admission | None = None,
) -> Any:
    """A factory to listen with on any stream endpoint: TLS with our certificate, then a session protocol.

    ``clock`` (the reactor by default) schedules TLS's aggregated small writes. ``admission`` bounds the
    connections not yet logged in (shared with the SSH listener).
    """
    options: Any = tls_options(cert_path, key_path)
    wrapped: Any = NeoTLSServerFactory(peer_factory, admission)
    return _TLSFactory(options, False, wrapped, clock=clock)
