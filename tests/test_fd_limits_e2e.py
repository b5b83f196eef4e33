"""A real ``twistd`` under a low limit on open files (as ``ulimit -n`` sets it): many targets push fine because
unused targets are closed, and running out of descriptors is a clear, temporary error, never "authentication
failed" (exit 3) or "internal error"."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

from support import PASSWORD, RunningServer, assert_clean

from neotwist.wire import limits
from neotwist.wire.framing import FrameConnection
from neotwist.wire.messages import Hello, LoggedIn, Login

OUT = "the server is out of file descriptors; try again later"


def push(server: RunningServer, src: Path, target: str, scheme: str) -> tuple[int, str]:
    r = server.cli("neo-push", "--accept-new-host-key", str(src), server.remote(target, scheme),
                   env=server.env(NEO_PASSWORD=PASSWORD), timeout=60)  # fmt: skip
    return r.returncode, r.stderr


def ls(server: RunningServer, scheme: str, *options: str) -> tuple[int, str]:
    r = server.cli("neo-ls", "--accept-new-host-key", *options, server.remote("", scheme).rstrip("/"),
                   env=server.env(NEO_PASSWORD=PASSWORD), timeout=60)  # fmt: skip
    return r.returncode, r.stdout + r.stderr


def test_many_targets_push_under_a_low_fd_limit(tmp_path: Path) -> None:
    # 40 descriptors: the server needs about 25 with one target open and 6 more per open target, so without the
    # bound the third target would not open.
    server = RunningServer(tmp_path, args=("--max-open-targets", "2", "--target-idle", "0"), nofile=40)
    try:
        src = tmp_path / "src"
        src.mkdir()
        (src / "a").write_text("hello")
        peak = 0
        for i in range(6):
            code, err = push(server, src, f"t{i}", "ssh" if i % 2 == 0 else "tls")
            assert code == 0, err
            peak = max(peak, server.open_fds())
        assert peak <= 38  # never at the limit (40): 6 per open target beyond the ~25 the server needs anyway
        for scheme in ("ssh", "tls"):
            code, out = ls(server, scheme)
            assert code == 0 and all(f"t{i}" in out for i in range(6)), out
        # The listing left the last two targets open; unused, they are closed at the next maintenance round.
        listed = server.open_fds()
        deadline = time.monotonic() + 15
        while server.open_fds() > listed - 10 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server.open_fds() <= listed - 10
        log = server.log_text()
        assert "file descriptors: limit 40" in log
        assert_clean(log)
    finally:
        server.stop()


def logged_in(server: RunningServer) -> ssl.SSLSocket:
    """A TLS connection logged in as alice and left idle (the server holds one descriptor for it). Connections
    not yet logged in would not do: the server caps those at a quarter of its descriptor limit."""
    context = ssl.create_default_context(cafile=str(server.data / "tls_cert.pem"))
    tls = context.wrap_socket(
        socket.create_connection(("127.0.0.1", server.tls_port), timeout=20), server_hostname="localhost"
    )
    conn = FrameConnection()
    conn.send(Hello(rid=1, version=limits.PROTOCOL_VERSION, software="fd-test", window=conn.window))
    conn.send(Login(rid=3, account="alice", password=PASSWORD))
    tls.sendall(conn.data_to_send())
    got: list[object] = []
    while not any(isinstance(m, LoggedIn) for m in got):
        data = tls.recv(65536)
        assert data, f"closed before logging in: {got!r}"
        got.extend(message for message, _ in conn.receive(data))
    return tls


def fill(server: RunningServer, leave: int, limit: int) -> list[ssl.SSLSocket]:
    """Idle logged-in connections until the server has only ``leave`` descriptors free."""
    held: list[ssl.SSLSocket] = []
    while server.open_fds() < limit - leave:
        before = server.open_fds()
        held.append(logged_in(server))
        deadline = time.monotonic() + 5
        while server.open_fds() <= before and time.monotonic() < deadline:
            time.sleep(0.01)
    assert server.open_fds() == limit - leave
    return held


def test_running_out_of_descriptors_is_a_clear_temporary_error(tmp_path: Path) -> None:
    limit = 48
    server = RunningServer(tmp_path, nofile=limit)
    try:
        src = tmp_path / "src"
        src.mkdir()
        (src / "a").write_text("hello")
        assert push(server, src, "first", "ssh")[0] == 0  # worker threads started, with their connections
        # One descriptor free: the connection is accepted, the credential check cannot open the account store.
        held = fill(server, 1, limit)
        openssh = ("--ssh-command", f"ssh -F /dev/null -i {server.key} -o IdentitiesOnly=yes -o BatchMode=yes "
                   "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null")  # fmt: skip
        for scheme, options in (("ssh", ()), ("ssh", openssh), ("tls", ())):
            code, out = ls(server, scheme, *options)
            assert code == 1 and OUT in out, out
            assert "authentication failed" not in out and "internal" not in out
        # Room for the connection and the login, hardly for one more target: the repository closes the unused
        # "first" to make room and tries again. Whether that is enough depends on what else holds descriptors at
        # that instant; either way the answer is success or the clear temporary error, never anything else.
        for sock in held[-3:]:
            sock.close()
        time.sleep(0.2)
        code, err = push(server, src, "new", "tls")
        assert code == 0 or (code == 1 and OUT in err), err
        assert "internal" not in err and "authentication failed" not in err
        # Temporary: once descriptors are free again, everything works.
        for sock in held:
            sock.close()
        time.sleep(0.2)
        assert push(server, src, "new", "ssh")[0] == 0
        assert ls(server, "tls")[0] == 0
        log = server.log_text()
        assert "out of file descriptors" in log and "login failed" not in log
        assert_clean(log)
    finally:
        server.stop()
