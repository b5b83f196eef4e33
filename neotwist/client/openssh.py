"""Reach the ``neophytos`` subsystem through an OpenSSH client process (``--ssh-command``).

Like rsync's ``-e`` and borg's ``BORG_RSH``: running ``ssh`` gives the user's ssh_config, ProxyJump, agent,
certificates and known_hosts for free. The process is ``CMD -p PORT -l USER HOST -s neophytos``; its stdin and
stdout are the byte stream, its stderr is passed through to ours (ssh prompts on the terminal, not on stderr)
and the tail is kept, so that when ssh dies before the session starts the error can say why.

Unlike the conch path, we cannot tell when ssh has authenticated: the Peer is connected at once and its first
request (hello) only gets an answer once the subsystem runs. :meth:`OpenSSHLink.failure` turns "the stream
ended before the welcome" into a useful error.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.error import ConnectionDone, ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from neotwist.client.remote import AccessRefused, ConnectError, Remote, UsageError

log = Logger()

STDERR_TAIL = 2048
"""Bytes of ssh's stderr kept for the error message."""

REFUSALS = (
    "Host key verification failed",
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
    "Permission denied",
    "Too many authentication failures",
)
"""What OpenSSH prints (it exits 255 for every failure) when a host key is unknown or changed or a login is
refused: the session then fails with :class:`AccessRefused` (exit 3), like the built-in client's."""


def ssh_argv(command: str, remote: Remote) -> list[str]:
    """The argument vector: ``shlex.split(command) + [-p PORT, -l USER, HOST, -s, neophytos]``.

    ``remote.host`` was validated by parse_remote, so it cannot start with '-' and become an option.
    """
    try:
        base = shlex.split(command)
    except ValueError as e:
        raise UsageError(f"bad --ssh-command {command!r}: {e}") from None
    if not base:
        raise UsageError("--ssh-command is empty; expected e.g. --ssh-command 'ssh -o BatchMode=yes'")
    return [*base, "-p", str(remote.port), "-l", remote.user, remote.host, "-s", "neophytos"]


class _ProcessTransport:
    """The Peer's view of the process: writes go to ssh's stdin."""

    disconnecting = False

    def __init__(self, link: OpenSSHLink) -> None:
        self._link = link

    @property
    def _process(self) -> Any:
        return self._link.transport

    def write(self, data: bytes) -> None:
        if self._process is not None:
            self._process.write(data)

    def writeSequence(self, seq: list[bytes]) -> None:
        if self._process is not None:
            self._process.writeSequence(seq)

    def loseConnection(self) -> None:
        # Close ssh's stdin: ssh then closes the channel and exits (there is no half-close on the subsystem).
        self.disconnecting = True
        if self._process is not None:
            self._process.closeStdin()

    def abortConnection(self) -> None:
        self.disconnecting = True
        if self._process is not None:
            self._process.signalProcess("KILL")

    def getPeer(self) -> IAddress | None:
        return None

    def getHost(self) -> IAddress | None:
        return None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self._process is not None:
            self._process.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self._process is not None:
            self._process.unregisterProducer()


class OpenSSHLink(ProcessProtocol):
    """ProcessProtocol adapter: ssh's stdout feeds the Peer, its exit ends the Peer's connection."""

    def __init__(
        self, remote: Remote, peer: Protocol, *, stderr_write: Callable[[bytes], object] | None = None
    ) -> None:
        self.remote = remote
        self.peer = peer
        self.received = 0
        self.exit_reason: Failure | None = None
        self._stderr_tail = b""
        self._stderr_write = stderr_write
        self._lost = False

    def connectionMade(self) -> None:
        self.peer.makeConnection(_ProcessTransport(self))

    def outReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.peer.dataReceived(data)

    def errReceived(self, data: bytes) -> None:
        self._stderr_tail = (self._stderr_tail + data)[-STDERR_TAIL:]
        if self._stderr_write is not None:
            self._stderr_write(data)

    @property
    def stderr_tail(self) -> str:
        lines = self._stderr_tail.decode("utf-8", "replace").strip().splitlines()
        return " | ".join(line.strip() for line in lines[-3:] if line.strip())

    def processEnded(self, reason: Failure) -> None:
        self.exit_reason = reason
        if self._lost:
            return
        self._lost = True
        if reason.check(ProcessDone):
            self.peer.connectionLost(Failure(ConnectionDone("ssh exited")))
        else:
            self.peer.connectionLost(Failure(self.failure() or ConnectError(self._exit_text())))

    def _exit_text(self) -> str:
        value = self.exit_reason.value if self.exit_reason is not None else None
        if isinstance(value, ProcessTerminated):
            if value.signal is not None:
                return f"ssh was killed by signal {value.signal}"
            return f"ssh exited with status {value.exitCode}"
        return "ssh exited"

    def failure(self) -> ConnectError | None:
        """Why the session never started, if ssh ended without sending a byte (else None).

        connect.py asks this when its hello fails, so the user sees ssh's own complaint (host key, permission
        denied, unknown subsystem) instead of "connection lost".
        """
        if self.exit_reason is None or self.received:
            return None
        tail = self.stderr_tail
        detail = f": {tail}" if tail else ""
        refused = any(sign in self._stderr_tail.decode("utf-8", "replace") for sign in REFUSALS)
        return (AccessRefused if refused else ConnectError)(
            f"could not start a session on {self.remote.address} with --ssh-command "
            f"({self._exit_text()}){detail}"
        )


def open_openssh(
    reactor: Any,
    remote: Remote,
    peer: Protocol,
    command: str,
    *,
    forward_stderr: bool = True,
) -> OpenSSHLink:
    """Spawn ``command`` (shell-split) to reach ``remote``; connect ``peer`` to its stdin/stdout at once."""
    argv = ssh_argv(command, remote)
    if shutil.which(argv[0]) is None:
        raise ConnectError(f"--ssh-command: {argv[0]!r} not found (give a full path or fix PATH)")
    link = OpenSSHLink(remote, peer, stderr_write=sys.stderr.buffer.write if forward_stderr else None)
    try:
        reactor.spawnProcess(link, argv[0], argv, env=None, childFDs={0: "w", 1: "r", 2: "r"})
    except OSError as e:
        raise ConnectError(f"cannot run --ssh-command {argv[0]!r}: {e.strerror}") from None
    return link
