"""Pinned server identities: SSH host keys and TLS public keys, in OpenSSH known_hosts format.

We read and write the file ourselves because conch's ``KnownHostsFile`` cannot parse OpenSSH's ``[host]:port``
lines, and we compare full key blobs in constant time, never the MD5 fingerprint conch hands to
``verifyHostKey``. The same code keeps TLS pins (``[host]:port sha256-spki <base64>``, the SHA-256 of the
certificate's SubjectPublicKeyInfo) in a separate file, so trust-on-first-use works the same on both
transports.

The decision (:func:`check_identity`) is sans-IO apart from the small file read/append: the SSH and TLS
adapters call it from their verify hooks, before any application byte is sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import platformdirs
from twisted.logger import Logger

from neotwist.client.remote import ConnectError

log = Logger()

TLS_KEY_TYPE = "sha256-spki"
"""Key type column of TLS pins: the key column is base64(SHA-256(SubjectPublicKeyInfo DER))."""

Confirm = Callable[[str], bool]
"""Asks the user a yes/no question (the text is the whole prompt); returns True for yes."""


class HostKeyError(ConnectError):
    """The server's identity is unknown and may not be pinned, or differs from the pinned one."""


def default_known_hosts() -> Path:
    """Where SSH host keys are pinned unless --known-hosts says otherwise."""
    return Path(platformdirs.user_config_dir("neophytos")) / "known_hosts"


def default_tls_known_hosts() -> Path:
    """Where TLS public keys are pinned (a separate file: its lines are not OpenSSH host keys)."""
    return Path(platformdirs.user_config_dir("neophytos")) / "tls_known_hosts"


def host_pattern(host: str, port: int) -> str:
    """The known_hosts name of an address: ``host`` for port 22, else ``[host]:port`` (as OpenSSH writes)."""
    host = host.lower()
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint (``SHA256:`` + unpadded base64), what ``ssh-keygen -lf`` shows."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def spki_fingerprint(digest: bytes) -> str:
    """The display form of a TLS pin (the pin already is a SHA-256 digest)."""
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class KnownKey:
    """One pinned key for a host, with the line it came from (so a 'changed key' error can name it)."""

    lineno: int
    key_type: str
    blob: bytes
    revoked: bool = False


def _name_matches(name: str, wanted: str) -> bool:
    if name.startswith("|1|"):
        # Hashed entry (HashKnownHosts yes): |1|base64(salt)|base64(HMAC-SHA1(salt, name)).
        try:
            _, _, salt_b64, mac_b64 = name.split("|", 3)
            salt = base64.b64decode(salt_b64, validate=True)
            mac = base64.b64decode(mac_b64, validate=True)
        except (ValueError, binascii.Error):
            return False
        return hmac.compare_digest(hmac.new(salt, wanted.encode(), hashlib.sha1).digest(), mac)
    return name.lower() == wanted


class KnownHostsFile:
    """A known_hosts file: look up the keys pinned for an address, append a new pin.

    The file is re-read on every lookup: it is small, a lookup happens once per connection, and re-reading
    means an edit by the user (or ``ssh-keygen -R``) takes effect at once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def lookup(self, host: str, port: int) -> list[KnownKey]:
        """The keys pinned for ``host``/``port`` (empty if none, or if the file does not exist yet)."""
        wanted = host_pattern(host, port)
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        except OSError as e:
            raise HostKeyError(f"cannot read known hosts file {self.path}: {e.strerror}") from None
        found: list[KnownKey] = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            revoked = False
            if fields[0].startswith("@"):
                if fields[0] != "@revoked":
                    continue  # @cert-authority: we do not do SSH certificates
                revoked = True
                fields = fields[1:]
            if len(fields) < 3:
                continue
            names, key_type, key_b64 = fields[0], fields[1], fields[2]
            if not any(_name_matches(name, wanted) for name in names.split(",")):
                continue
            try:
                blob = base64.b64decode(key_b64, validate=True)
            except (ValueError, binascii.Error):
                log.warn("ignoring malformed key on line {lineno} of {path}", lineno=lineno, path=self.path)
                continue
            found.append(KnownKey(lineno, key_type, blob, revoked))
        return found

    def add(self, host: str, port: int, key_type: str, blob: bytes) -> None:
        """Append a pin as one line (one ``write``); create the file 0600 in a 0700 directory if needed."""
        line = f"{host_pattern(host, port)} {key_type} {base64.b64encode(blob).decode('ascii')}\n"
        if not self.path.parent.exists():
            self.path.parent.mkdir(mode=0o700, parents=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = "\n" + line
            os.write(fd, line.encode("ascii"))
        finally:
            os.close(fd)


@dataclass(frozen=True)
class IdentityKind:
    """Wording for the two kinds of pinned identity, so one decision function serves SSH and TLS."""

    noun: str  # "host key" / "TLS public key"
    advice: str  # how to accept a new identity non-interactively


SSH_HOST_KEY = IdentityKind(
    "host key",
    "pass --accept-new-host-key to pin it, or pin it in the file given with --known-hosts",
)
TLS_PUBLIC_KEY = IdentityKind(
    "TLS public key",
    "pass --accept-new-host-key to pin it, or --tls-ca FILE to verify the certificate against a CA",
)


def _key_label(key_type: str) -> str:
    labels = {"ssh-ed25519": "ED25519", "ssh-rsa": "RSA", "ssh-dss": "DSA", TLS_KEY_TYPE: "TLS SPKI"}
    if key_type.startswith("ecdsa-"):
        return "ECDSA"
    return labels.get(key_type, key_type)


def check_identity(
    known: KnownHostsFile,
    host: str,
    port: int,
    key_type: str,
    blob: bytes,
    *,
    display_fingerprint: str,
    accept_new: bool,
    confirm: Confirm | None,
    kind: IdentityKind = SSH_HOST_KEY,
) -> bool:
    """Decide whether the server presenting ``blob`` may be talked to; pin it if it is new and allowed.

    Returns True when the key was already pinned, False when it has just been pinned. Raises
    :class:`HostKeyError` when it is revoked, differs from a pinned key (always refused: the user must remove
    the old line), or is unknown and neither ``accept_new`` nor an interactive ``confirm`` allows it.
    """
    address = host_pattern(host, port)
    pinned = known.lookup(host, port)
    for entry in pinned:
        if entry.revoked and hmac.compare_digest(entry.blob, blob):
            raise HostKeyError(
                f"the {kind.noun} of {address} ({display_fingerprint}) is marked @revoked on line "
                f"{entry.lineno} of {known.path}; refusing to connect"
            )
    live = [entry for entry in pinned if not entry.revoked]
    # Compare with every pinned key, without stopping early, so timing does not say which one matched.
    matches = [entry.key_type == key_type and hmac.compare_digest(entry.blob, blob) for entry in live]
    if any(matches):
        return True
    if live:
        lines = ", ".join(str(entry.lineno) for entry in live)
        plural = "s" if len(live) > 1 else ""
        raise HostKeyError(
            f"WARNING: THE {kind.noun.upper()} OF {address} HAS CHANGED (it is now {display_fingerprint}): "
            f"someone may be intercepting the connection, or the server's key was replaced. Refusing to "
            f"connect. If the change is expected, remove line{plural} {lines} of {known.path} and connect "
            "again."
        )
    if accept_new:
        known.add(host, port, key_type, blob)
        log.info("pinned the {noun} of {address} in {path}", noun=kind.noun, address=address, path=known.path)
        return False
    if confirm is not None:
        prompt = (
            f"The authenticity of host '{address}' can't be established.\n"
            f"{_key_label(key_type)} key fingerprint is {display_fingerprint}.\n"
            f"Continue connecting and pin this key (yes/no)? "
        )
        if confirm(prompt):
            known.add(host, port, key_type, blob)
            return False
        raise HostKeyError(f"the {kind.noun} of {address} was not accepted; not connecting")
    raise HostKeyError(
        f"the {kind.noun} of {address} is not known ({display_fingerprint}) and there is no terminal to ask: "
        f"{kind.advice}"
    )
