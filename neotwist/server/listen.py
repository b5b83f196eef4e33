"""The server's listening endpoints as services that say, in one line, whether they really listen.

``strports.service`` raises a bare CannotListenError out of twistd (a long traceback) when a port is taken,
and the server used to log its endpoints before they were listening. A :class:`Listener` logs "listening"
with the bound address only once the port is open, and otherwise ends twistd with one line that names the
endpoint, the reason and the option that changes it (exit code 1).
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

log = Logger()


class Listener(StreamServerEndpointService):
    """Listen with ``factory`` on the endpoint ``description``; ``what`` (SSH, TLS) and ``option`` (--ssh,
    --tls) name it in messages; ``detail`` (a host-key fingerprint, say) is logged once it listens."""

    def __init__(self, reactor: Any, description: str, factory: Any, what: str, option: str, detail: str) -> None:
        super().__init__(strports.endpoints.serverFromString(reactor, description), factory)
        self._raiseSynchronously = True  # as strports.service: a failure to listen stops twistd at start
        self.description = description
        self.what = what
        self.option = option
        self.detail = detail

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            why = e.socketError.strerror if isinstance(e.socketError, OSError) else str(e.socketError)
            sys.exit(
                f"twistd neophytos: cannot listen for {self.what} on {self.description}: {why} "
                f"(is another server running? choose another port or endpoint with {self.option})"
            )
        assert self._waitingForPort is not None
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        address = port.getHost()
        bound = f"{address.host}:{address.port}" if hasattr(address, "port") else str(address)
        log.info("{what} listening on {bound} ({endpoint}), {detail}", what=self.what, bound=bound,
                 endpoint=self.description, detail=self.detail)  # fmt: skip
        return port
