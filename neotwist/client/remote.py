"""Parse the REMOTE argument of neo-push / neo-pull: ``[ssh://|tls://][USER@]HOST[:PORT]/TARGET[/SUBPATH]``.

The parsed pieces end up as command-line arguments of ``ssh`` (``--ssh-command``) and in protocol messages, so
everything is validated here, once: a host can never start with '-' (it would become an ssh option), the
target and sub-path follow the same rules the server applies (:mod:`neotwist.paths`).
"""

from __future__ import annotations

import getpass
import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from neotwist.paths import check_local, check_name
from neotwist.wire.errors import NeoError

EXPECTED = "[ssh://|tls://][USER@]HOST[:PORT]/TARGET[/SUBPATH]"
"""The form shown in every parse error."""

DEFAULT_PORTS: dict[str, int] = {"ssh": 4322, "tls": 4323}

Scheme = Literal["ssh", "tls"]

_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,252})")


class UsageError(Exception):
    """The user typed something we cannot use; the message is one line and shows the expected form."""


class ConnectError(Exception):
    """Reaching the remote failed (network, host key, certificate, authentication, protocol version).

    Defined here, the lowest client module, so every transport can raise it without import cycles; it is
    re-exported by :mod:`neotwist.client.connect`, where callers look for it.
    """


class AccessRefused(ConnectError):
    """The server was reached but refused us, or we refused it: an unknown or changed host key, credentials
    the server did not accept. The command line exits 3 for it (1 for other connection failures)."""


@dataclass(frozen=True)
class Remote:
    """Where a push or pull goes: transport, account, server address, target and sub-path in the target."""

    scheme: Scheme
    user: str
    host: str
    port: int
    target: str
    path: str

    @property
    def address(self) -> str:
        """``host:port``, with IPv6 hosts in brackets (``[::1]:4322``): the form used in messages."""
        return f"{self.bracketed_host}:{self.port}"

    @property
    def bracketed_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def display(self) -> str:
        """The canonical spelling of this remote, with every default filled in."""
        tail = f"/{self.path}" if self.path else ""
        return f"{self.scheme}://{self.user}@{self.address}/{self.target}{tail}"


def _fail(text: str, reason: str) -> UsageError:
    return UsageError(f"bad remote {text!r}: {reason}; expected {EXPECTED}")


def _parse_host_port(text: str, hostport: str, default_port: int) -> tuple[str, int]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise _fail(text, "unclosed '[' in IPv6 address")
        host = hostport[1:end]
        rest = hostport[end + 1 :]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise _fail(text, f"{host!r} is not an IPv6 address") from None
        if "%" in host and not re.fullmatch(r"[A-Za-z0-9_.-]+", host.split("%", 1)[1]):
            raise _fail(text, f"bad IPv6 zone in {host!r}")
        if rest and not rest.startswith(":"):
            raise _fail(text, f"unexpected {rest!r} after ']'")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_raw = hostport.partition(":")
        if ":" in port_text_raw:
            raise _fail(text, "IPv6 addresses must be written in brackets, e.g. [::1]:4322")
        port_text = port_text_raw if colon else None
        if not host:
            raise _fail(text, "missing HOST")
        if not _HOSTNAME.fullmatch(host):
            raise _fail(text, f"{host!r} is not a host name or address")
    if port_text is None:
        return host, default_port
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _fail(text, f"port must be a number from 1 to 65535, not {port_text!r}")
    return host, int(port_text)


def parse_remote(text: str, *, default_user: str | None = None, need_target: bool = True) -> Remote:
    """Parse ``[ssh://|tls://][USER@]HOST[:PORT]/TARGET[/SUBPATH]``; raise :class:`UsageError` if it is wrong.

    SSH is the default scheme; default ports are 4322 (ssh) and 4323 (tls). Without USER, ``default_user`` is
    used, else the local login name. Trailing slashes after the target or sub-path are ignored. With
    ``need_target=False`` the ``/TARGET`` part may be left out (``target`` is then '').
    """
    scheme: Scheme = "ssh"
    rest = text
    if "://" in text:
        prefix, _, rest = text.partition("://")
        if prefix == "ssh":
            scheme = "ssh"
        elif prefix == "tls":
            scheme = "tls"
        else:
            raise _fail(text, f"unknown scheme {prefix + '://'!r} (use ssh:// or tls://)")
    authority, slash, where = rest.partition("/")
    if not slash and need_target:
        raise _fail(text, "missing /TARGET")
    userpart, at, hostport = authority.rpartition("@")
    if at:
        if not userpart:
            raise _fail(text, "empty USER before '@'")
        user = userpart
    else:
        user = default_user if default_user is not None else getpass.getuser()
    try:
        check_name(user, "user")
    except NeoError as e:
        raise _fail(text, e.message) from None
    host, port = _parse_host_port(text, hostport, DEFAULT_PORTS[scheme])
    where = where.rstrip("/")
    target, _, path = where.partition("/")
    if not target:
        if need_target:
            raise _fail(text, "missing TARGET")
        return Remote(scheme=scheme, user=user, host=host, port=port, target="", path="")
    try:
        check_name(target, "target")
        check_local(path)
    except NeoError as e:
        raise _fail(text, e.message) from None
    return Remote(scheme=scheme, user=user, host=host, port=port, target=target, path=path)
