"""Encryption pins: the targets this client has seen encrypted, and with which key, like known_hosts for keys.

The server says whether a target is encrypted (``Opened.encrypted`` and its key-check record). A malicious
server could say "plaintext" about an encrypted target, and a client that believed it would push new files in
plaintext and accept forged plaintext on pull. So once a client has pushed to or read an encrypted target, it
records ``(address, account, target) -> key id`` here, and from then on refuses a server that calls that target
plaintext or names another key (:mod:`neotwist.client.encryption` decides; exit code 3, like a changed host
key). A pin says "encrypted" before anything is sent, so sub-paths of a pinned target are opened at their
encrypted form at once.

The file sits next to the known-hosts files (``platformdirs.user_config_dir("neophytos")/encrypted_targets``),
is plain text a user can read and edit, one pin per line::

    # comment
    [nas]:4322 alice papers 5f0c3e4d1a2b3c4d5e6f708192a3b4c5

``ADDRESS`` is the address as known_hosts names it (``host`` for port 22, else ``[host]:port``, host lowercased),
so the same server reached over ssh (port 4322) and tls (4323) has a pin per transport. Writes hold a lock file
and go through :func:`neotwist.atomicfile.atomic_write`: a crash leaves the old file or the new one, never half
of one. A malformed line is an error, never skipped: a pin that
silently stopped applying would re-open the downgrade it exists to stop.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from neotwist.atomicfile import atomic_write
from neotwist.client.knownhosts import host_pattern
from neotwist.client.remote import Remote

HEADER = (
    "# Neophytos: targets this client has seen encrypted, and their key id (docs/encryption.md).\n"
    "# A server that later calls one of them plaintext, or names another key, is refused.\n"
    "# ADDRESS ACCOUNT TARGET KEY_ID ('neo-key forget REMOTE' removes a line)\n"
)

_KEY_ID = re.compile(r"[0-9a-f]{32}")


class PinFileError(Exception):
    """The pin file cannot be read or written, or has a malformed line (the message names the file and line)."""


def default_path() -> Path:
    """Where pins are kept: next to the known-hosts files and the key."""
    return Path(platformdirs.user_config_dir("neophytos")) / "encrypted_targets"


@dataclass(frozen=True)
class Pin:
    address: str
    account: str
    target: str
    key_id: str
    lineno: int = 0


class PinFile:
    """The pin file: look up, record and forget pins. Re-read on every lookup (it is small, and an edit by the
    user takes effect at once)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()

    def pins(self) -> list[Pin]:
        """Every pin in the file (none if it does not exist); PinFileError on a malformed line."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as e:
            raise PinFileError(f"cannot read the encryption pins in {self.path}: {e}") from None
        out: list[Pin] = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) != 4 or not _KEY_ID.fullmatch(fields[3]):
                raise PinFileError(
                    f"line {lineno} of {self.path} is not 'ADDRESS ACCOUNT TARGET KEY_ID': fix or remove it"
                )
            out.append(Pin(fields[0], fields[1], fields[2], fields[3], lineno))
        return out

    def lookup(self, address: str, account: str, target: str) -> Pin | None:
        for pin in self.pins():
            if (pin.address, pin.account, pin.target) == (address, account, target):
                return pin
        return None

    def record(self, address: str, account: str, target: str, key_id: str) -> bool:
        """Pin ``target`` to ``key_id`` (replacing another key id's pin); False if it was pinned so already.

        A pin that is already there is found without the lock: taking it creates the directory and the lock file,
        so every encrypted pull, ls, check or push would need a writable config directory even when nothing
        changes (a read-only home, a shared one). Only a change takes the lock, and looks again under it."""
        if not _KEY_ID.fullmatch(key_id):
            raise ValueError(f"not a key id: {key_id!r}")
        found = self.lookup(address, account, target)
        if found is not None and found.key_id == key_id:
            return False
        with self._locked():
            pins = self.pins()
            key = (address, account, target)
            if any((p.address, p.account, p.target, p.key_id) == (*key, key_id) for p in pins):
                return False
            kept = [p for p in pins if (p.address, p.account, p.target) != key]
            self._write([*kept, Pin(address, account, target, key_id)])
            return True

    def forget(self, address: str, account: str, target: str) -> Pin | None:
        """Remove the pin of ``target``; the removed pin, or None if there was none."""
        key = (address, account, target)
        removed = self._remove(lambda p: (p.address, p.account, p.target) == key)
        return removed[0] if removed else None

    def forget_host(self, host: str, account: str, target: str) -> list[Pin]:
        """Remove the pins of ``target`` at every address naming ``host`` (any port, so ssh's and tls's); the
        removed pins, in file order. For ``neo-target remove``: the target is gone whichever transport removed
        it, and a pin left under the other transport's address would refuse a plaintext target of that name."""
        key = (host.lower(), account, target)
        return self._remove(lambda p: (host_of(p.address), p.account, p.target) == key)

    def _remove(self, gone: Callable[[Pin], bool]) -> list[Pin]:
        """Remove the pins ``gone`` selects, under the lock (the file is rewritten only if one goes)."""
        if not self.path.exists():
            return []
        with self._locked():
            pins = self.pins()
            removed = [p for p in pins if gone(p)]
            if removed:
                self._write([p for p in pins if not gone(p)])
            return removed

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialize read-modify-write between clients running at once (a lock file: the pin file itself is
        replaced by rename, so a lock on it would not hold)."""
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise PinFileError(f"cannot write the encryption pins in {self.path}: {e.strerror}") from None
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)
            except ImportError:  # not POSIX: a lost update only loses a pin that the next run records again
                pass
            yield
        finally:
            os.close(fd)

    def _write(self, pins: list[Pin]) -> None:
        body = HEADER + "".join(f"{p.address} {p.account} {p.target} {p.key_id}\n" for p in pins)
        try:
            atomic_write(self.path, body.encode("utf-8"))
        except OSError as e:
            raise PinFileError(f"cannot write the encryption pins in {self.path}: {e.strerror}") from None


@dataclass(frozen=True)
class TargetPin:
    """The pin of one target, as a push or pull uses it: what is pinned, and recording a new pin."""

    file: PinFile
    address: str
    account: str
    target: str
    remote: str  # how to name it to neo-key forget: USER@HOST:PORT/TARGET

    @classmethod
    def for_remote(cls, remote: Remote, file: PinFile | None = None) -> TargetPin:
        return cls(
            file if file is not None else PinFile(),
            address_of(remote),
            remote.user,
            remote.target,
            f"{remote.user}@{remote.bracketed_host}:{remote.port}/{remote.target}",
        )

    def lookup(self) -> Pin | None:
        return self.file.lookup(self.address, self.account, self.target)

    def record(self, key_id: str) -> None:
        self.file.record(self.address, self.account, self.target, key_id)

    def forget(self) -> Pin | None:
        return self.file.forget(self.address, self.account, self.target)

    def forget_every_port(self) -> list[Pin]:
        """Forget this target's pins at every port of its host (see :meth:`PinFile.forget_host`)."""
        return self.file.forget_host(host_of(self.address), self.account, self.target)

    @property
    def where(self) -> str:
        """The pin's line, for messages."""
        pin = self.lookup()
        return f"line {pin.lineno} of {self.file.path}" if pin is not None else str(self.file.path)


def address_of(remote: Remote) -> str:
    """The ADDRESS column for ``remote``: its known_hosts name."""
    return host_pattern(remote.host, remote.port)


def host_of(address: str) -> str:
    """The host an ADDRESS names (``[host]:port`` or ``host``, as :func:`address_of` writes), lowercased. Only
    the name as it was given: ``nas`` and ``nas.example.org`` or its IP address are different hosts here."""
    if address.startswith("[") and "]:" in address:
        return address[1 : address.rindex("]:")].lower()
    return address.lower()
