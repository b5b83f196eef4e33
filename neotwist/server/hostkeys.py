"""The server's long-lived identities: the SSH host key and the self-signed TLS certificate.

Both are created on first start in the data directory and reused afterwards, so clients that pinned them (SSH
known_hosts, TLS fingerprints) keep trusting the server. Private keys are written 0600 and atomically
(temporary file, fsync, rename): a crash mid-write never leaves a half key that would change the server's
identity.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import socket
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from twisted.conch.ssh.keys import Key

HOST_KEY_NAME = "ssh_host_ed25519_key"
TLS_CERT_NAME = "tls_cert.pem"
TLS_KEY_NAME = "tls_key.pem"
TLS_VALIDITY_DAYS = 3650
"""Self-signed and pinned by fingerprint, so a short lifetime would only force needless re-pinning."""


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically, readable only by its owner from the first byte on."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def load_or_create_host_key(data: Path) -> Key:
    """The server's ed25519 SSH host key from ``data``, generated on first use."""
    path = Path(data) / HOST_KEY_NAME
    if path.exists():
        return Key.fromFile(str(path))
    key = Key(ed25519.Ed25519PrivateKey.generate())
    write_private(path, key.toString("openssh", subtype="v1"))
    (path.with_name(HOST_KEY_NAME + ".pub")).write_bytes(key.public().toString("openssh") + b"\n")
    return key


def default_hostnames() -> list[str]:
    """Names the self-signed certificate is valid for when none are configured."""
    names = ["localhost", "127.0.0.1", "::1"]
    fqdn = socket.getfqdn()
    if fqdn and fqdn not in names:
        names.append(fqdn)
    return names


def _san(hostnames: Iterable[str]) -> x509.SubjectAlternativeName:
    general: list[x509.GeneralName] = []
    for name in hostnames:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(general)


def load_or_create_tls(data: Path, hostnames: Iterable[str] | None = None) -> tuple[Path, Path]:
    """Paths of the server's TLS certificate and private key (PEM) in ``data``, creating a self-signed pair
    (ECDSA P-256, SAN = ``hostnames``) on first use. P-256 is used because every TLS stack accepts it."""
    data = Path(data)
    cert_path, key_path = data / TLS_CERT_NAME, data / TLS_KEY_NAME
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    names = list(hostnames) if hostnames is not None else default_hostnames()
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "neophytos")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=TLS_VALIDITY_DAYS))
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert_path, key_path


def tls_fingerprint(cert_path: Path) -> str:
    """SHA-256 fingerprint of the whole certificate (hex with colons): what browsers and ``openssl x509
    -fingerprint`` show. It changes when the certificate is renewed; the client pins the public key instead
    (:func:`tls_public_key_fingerprint`)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def tls_public_key_fingerprint(cert_path: Path) -> str:
    """What a client pins on first use and shows when it asks: ``SHA256:`` and the unpadded base64 of the
    SHA-256 of the certificate's DER SubjectPublicKeyInfo (the form of SSH key fingerprints)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii").rstrip("=")
