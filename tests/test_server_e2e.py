"""End to end: a real ``twistd -n neophytos`` process, accounts made by the real neo-admin, reached with the
real OpenSSH client (subsystem, exec, shell) and a TLS socket; the server log must stay clean."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time

import pytest
from support import RunningServer, assert_clean

from neotwist.wire import limits
from neotwist.wire.framing import FrameConnection
from neotwist.wire.messages import Bye, Hello, Message, Welcome

if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
    pytest.skip("OpenSSH client not installed", allow_module_level=True)


def read_messages(
    stream: object, conn: FrameConnection, until: type[Message], timeout: float = 20
) -> list[Message]:
    """Read frames from a blocking pipe/socket until a message of type ``until`` arrives."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if isinstance(stream, socket.socket):
            data = stream.recv(65536)
        else:
            data = os.read(stream.fileno(), 65536)  # type: ignore[attr-defined]
        if not data:
            break
        got.extend(message for message, _ in conn.receive(data))
        if any(isinstance(m, until) for m in got):
            return got
    raise AssertionError(f"no {until.__name__} in {got!r}")


def hello(conn: FrameConnection) -> bytes:
    conn.send(Hello(rid=1, version=limits.PROTOCOL_VERSION, software="e2e-test", window=conn.window))
    return conn.data_to_send()


def test_openssh_subsystem_exec_shell(server: RunningServer) -> None:
    env = {**os.environ, "LANG": "C.UTF-8"}
    proc = subprocess.Popen(
        server.ssh("-s", "127.0.0.1", "neophytos"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        conn = FrameConnection()
        proc.stdin.write(hello(conn))
        proc.stdin.flush()
        got = read_messages(proc.stdout, conn, Welcome)
        welcome = next(m for m in got if isinstance(m, Welcome))
        assert welcome.account == "alice" and not welcome.login_required
        conn.set_peer_window(welcome.window)
        conn.send(Bye(rid=3))
        proc.stdin.write(conn.data_to_send())
        proc.stdin.flush()
        read_messages(proc.stdout, conn, Bye)
        proc.stdin.close()
        # exit-status 0 after the bye exchange
        assert proc.wait(timeout=20) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    r = subprocess.run(server.ssh("127.0.0.1", "ls"), capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 1
    assert "only offers the 'neophytos' subsystem" in r.stderr

    r = subprocess.run(server.ssh("127.0.0.1"), stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=30, env=env)  # fmt: skip
    assert r.returncode == 1  # a shell
    assert "only offers the 'neophytos' subsystem" in r.stderr
    r = subprocess.run(server.ssh("-tt", "127.0.0.1"), stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=30, env=env)  # fmt: skip
    assert r.returncode == 255 and "PTY allocation request failed" in r.stderr  # ssh -tt gives up itself

    # Port forwarding (stdio forwarding opens a direct-tcpip channel) is refused.
    r = subprocess.run(server.ssh("-W", "127.0.0.1:9", "127.0.0.1"), stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=30, env=env)  # fmt: skip
    assert r.returncode != 0

    server.stop()
    log = server.log_text()
    assert "login: account=alice" in log and "method=publickey" in log
    assert "refused exec" in log and "refused shell" in log and "refused channel" in log
    assert_clean(log)


def test_tls_port_speaks_the_protocol(server: RunningServer) -> None:
    context = ssl.create_default_context(cafile=str(server.data / "tls_cert.pem"))
    context.check_hostname = True
    with socket.create_connection(("127.0.0.1", server.tls_port), timeout=20) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            conn = FrameConnection()
            tls.sendall(hello(conn))
            got = read_messages(tls, conn, Welcome)
            welcome = next(m for m in got if isinstance(m, Welcome))
            assert welcome.login_required and welcome.account == ""
    # TLS 1.1 and older are refused.
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", server.tls_port), timeout=20) as raw:
        with pytest.raises(ssl.SSLError):
            old.wrap_socket(raw, server_hostname="localhost")
    server.stop()
    assert_clean(server.log_text())


def test_data_dir_permissions_and_identity_files(server: RunningServer) -> None:
    assert (server.data.stat().st_mode & 0o777) == 0o700
    for name in ("ssh_host_ed25519_key", "tls_key.pem", "accounts.sqlite"):
        assert ((server.data / name).stat().st_mode & 0o777) == 0o600, name
