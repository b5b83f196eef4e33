"""A byte-counting TCP relay on loopback: the one way every networked tool's bytes on the wire are measured.

There is no iptables/nftables here and /proc/PID/io mixes disk and socket I/O, so each server port (twistd's
SSH and TLS, the benchmark's sshd) gets a relay in front of it; clients connect to the relay. It counts the
TCP payload in each direction, which includes SSH/TLS framing, encryption overhead and handshakes, the same
way for Neophytos, rsync, borg and restic. Data moves with ``os.splice`` through a pipe (no copy into Python),
so the relay costs little CPU; it still adds one loopback hop for every tool alike.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from dataclasses import dataclass

PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


@dataclass(frozen=True)
class Counters:
    """Bytes the clients sent to the server (up) and the server sent back (down); connections accepted."""

    up: int = 0
    down: int = 0
    connections: int = 0

    def __sub__(self, other: Counters) -> Counters:
        return Counters(self.up - other.up, self.down - other.down, self.connections - other.connections)


class Relay:
    """Listens on 127.0.0.1:port and forwards every connection to 127.0.0.1:target_port."""

    def __init__(self, target_port: int, name: str = "relay") -> None:
        self.target_port = target_port
        self.name = name
        self._lock = threading.Lock()
        self._up = 0
        self._down = 0
        self._connections = 0
        self._active = 0
        self._closing = False
        self._sockets: set[socket.socket] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name=f"{name}-accept", daemon=True)
        self._thread.start()

    def counters(self) -> Counters:
        with self._lock:
            return Counters(self._up, self._down, self._connections)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every relayed connection has closed, so the counters include its last bytes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._active == 0:
                    return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        """Stop accepting and cut every open connection (their threads then end)."""
        self._closing = True
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._connections += 1
                self._active += 2
                self._sockets.update((client, upstream))
            state = {"open": 2}
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(src, dst, up, state, (client, upstream)), daemon=True,
                    name=f"{self.name}-{'up' if up else 'down'}",
                ).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, up: bool, state: dict[str, int],
        pair: tuple[socket.socket, socket.socket],
    ) -> None:
        """Move one direction until EOF or an error, then half-close the other side."""
        r, w = os.pipe()
        try:
            try:
                fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass
            failed = False
            while True:
                try:
                    n = os.splice(src.fileno(), w, PIPE_SIZE)
                except OSError:
                    failed = True
                    break
                if n == 0:
                    break
                left = n
                try:
                    while left:
                        left -= os.splice(r, dst.fileno(), left)
                except OSError:
                    failed = True
                    break
                with self._lock:
                    if up:
                        self._up += n
                    else:
                        self._down += n
            # EOF: pass the half-close on. An error: cut both ways so the other pump wakes up too.
            for s, how in ((src, socket.SHUT_RDWR), (dst, socket.SHUT_RDWR)) if failed else ((dst, socket.SHUT_WR),):
                try:
                    s.shutdown(how)
                except OSError:
                    pass
        finally:
            os.close(r)
            os.close(w)
            with self._lock:
                self._active -= 1
                state["open"] -= 1
                last = state["open"] == 0
                if last:
                    self._sockets.difference_update(pair)
            if last:
                for s in pair:
                    s.close()
