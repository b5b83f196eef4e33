"""A connection that goes silent mid-transfer (packets dropped, no FIN) ends the client with a clear error.

A tiny TCP relay between the real CLIs and a real ``twistd`` forwards bytes until it has carried a given
amount, then swallows everything both ways while keeping both TCP connections open: exactly what a NAT that
forgot the connection or a pulled cable looks like to both ends. The client must notice (its pings go
unanswered), say so in one line and exit 1 within about its ``--timeout``; a push run again afterwards resumes
with the chunks the server already stored.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

from support import BIN, PASSWORD, RunningServer, assert_clean, snapshot_of

MiB = 1024 * 1024


class Blackhole:
    """Relays one connection at a time to ``upstream``; after ``after`` bytes in the watched direction
    (``"up"``: client to server, ``"down"``: server to client) it forwards nothing more either way, reading
    and dropping what arrives, and never closes a socket until :meth:`close`."""

    def __init__(self, upstream: int, *, after: int, direction: str) -> None:
        self.upstream = upstream
        self.after = after
        self.direction = direction
        self.carried = {"up": 0, "down": 0}
        self.silent = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "down"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return  # an orderly close: the test never lets one through once silent
            if self.silent.is_set():
                continue
            if direction == self.direction and self.carried[direction] + len(data) > self.after:
                self.silent.set()
                continue
            self.carried[direction] += len(data)
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._closed = True
        for s in self._sockets:
            try:
                s.close()
            except OSError:
                pass


def _run_silenced(server: RunningServer, relay: Blackhole, *args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    r = server.cli(*args, env=server.env(NEO_PASSWORD=PASSWORD), timeout=60)
    return r.returncode, r.stderr, time.monotonic() - started


def test_a_push_whose_connection_goes_silent_exits_and_a_retry_resumes(tmp_path: Path) -> None:
    server = RunningServer(tmp_path)
    relay = Blackhole(server.tls_port, after=3 * MiB, direction="up")
    try:
        src = tmp_path / "src"
        src.mkdir()
        for i in range(8):
            (src / f"f{i}.bin").write_bytes(os.urandom(MiB))
        remote = f"tls://alice@127.0.0.1:{relay.port}/t"
        code, err, took = _run_silenced(
            server, relay, "neo-push", "--accept-new-host-key", "--timeout", "2", str(src), remote
        )
        assert relay.silent.is_set()
        assert code == 1, err
        assert took < 20, took
        # One line says what happened (a first push that had sent chunks also warns that its target stays).
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]
        assert len(lines) == 1, err
        assert "connection to the server was lost" in err and "nothing heard from" in err, err
        assert "--timeout" in err and "run the command again" in err, err
        assert "Traceback" not in err

        # Run again, straight to the server: the chunks that got through are not sent again.
        tls = server.remote("t", "tls")
        r = server.cli("neo-push", "--accept-new-host-key", "--json", str(src), tls,
                       env=server.env(NEO_PASSWORD=PASSWORD))  # fmt: skip
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout)
        assert summary["chunk_bytes_sent"] < 8 * MiB - 2 * MiB, summary
        dest = tmp_path / "dest"
        r = server.cli("neo-pull", tls, str(dest), env=server.env(NEO_PASSWORD=PASSWORD))
        assert r.returncode == 0, r.stderr
        assert snapshot_of(dest) == snapshot_of(src)
    finally:
        relay.close()
        server.stop()
    assert_clean(server.log_text())


def test_a_pull_whose_connection_goes_silent_exits(tmp_path: Path) -> None:
    server = RunningServer(tmp_path)
    relay = Blackhole(server.tls_port, after=3 * MiB, direction="down")
    try:
        src = tmp_path / "src"
        src.mkdir()
        for i in range(8):
            (src / f"f{i}.bin").write_bytes(os.urandom(MiB))
        r = server.cli("neo-push", "--accept-new-host-key", str(src), server.remote("t", "tls"),
                       env=server.env(NEO_PASSWORD=PASSWORD))  # fmt: skip
        assert r.returncode == 0, r.stderr
        remote = f"tls://alice@127.0.0.1:{relay.port}/t"
        code, err, took = _run_silenced(
            server, relay, "neo-pull", "--accept-new-host-key", "--timeout", "2", remote, str(tmp_path / "dest")
        )
        assert relay.silent.is_set()
        assert code == 1, err
        assert took < 20, took
        assert "connection to the server was lost" in err and "nothing heard from" in err, err
        assert "Traceback" not in err
    finally:
        relay.close()
        server.stop()
    assert_clean(server.log_text())


def test_a_server_that_never_answers_the_handshake(tmp_path: Path) -> None:
    """Accepted, then silence (no TLS handshake, no SSH banner): the client gives up after its --timeout."""
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    (tmp_path / "src").mkdir()
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"], "NEO_PASSWORD": PASSWORD}
    try:
        for scheme in ("tls", "ssh"):
            started = time.monotonic()
            r = subprocess.run(
                [str(BIN / "neo-push"), "--accept-new-host-key", "--no-agent", "--timeout", "1",
                 str(tmp_path / "src"), f"{scheme}://alice@127.0.0.1:{port}/t"],
                capture_output=True, text=True, env=env, timeout=60,
            )  # fmt: skip
            assert r.returncode == 1, (scheme, r.stderr)
            assert "no answer from 127.0.0.1" in r.stderr and "--timeout" in r.stderr, (scheme, r.stderr)
            assert r.stderr.count("\n") == 1, r.stderr
            assert time.monotonic() - started < 15
    finally:
        silent.close()
