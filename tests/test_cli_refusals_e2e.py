"""How the CLIs report being refused, against a real ``twistd``: exit code 3 for host keys and logins whatever
the transport, a disconnect reason that carries nothing of the client's internals, and a port that speaks the
other protocol named as such.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from support import BIN, RunningServer

if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
    pytest.skip("OpenSSH client not installed", allow_module_level=True)


@pytest.fixture
def server(module_server: RunningServer) -> RunningServer:
    """One server for the module's tests (they use targets and files of their own), to keep the suite fast."""
    return module_server


def _src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    return src


def test_refused_host_key_sends_no_traceback_to_the_server(server: RunningServer, tmp_path: Path) -> None:
    before = len(server.log_text())
    r = server.cli("neo-push", str(_src(tmp_path)), server.remote("t"))
    assert r.returncode == 3 and "not known" in r.stderr, r.stderr
    deadline = time.monotonic() + 10
    while "client disconnected" not in server.log_text()[before:] and time.monotonic() < deadline:
        time.sleep(0.05)
    said = [line for line in server.log_text()[before:].splitlines() if "client disconnected" in line]
    assert said, server.log_text()
    assert "host key not accepted" in said[0], said  # not the client's Failure, traceback and source paths
    assert "Traceback" not in said[0] and ".py" not in said[0], said


def _openssh(server: RunningServer, known_hosts: Path, key: Path, strict: str = "yes") -> str:
    return (
        f"ssh -F /dev/null -i {key} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking={strict} "
        f"-o UserKnownHostsFile={known_hosts} -o LogLevel=ERROR"
    )


def test_ssh_command_refusals_exit_3(server: RunningServer, tmp_path: Path) -> None:
    src = _src(tmp_path)
    known = tmp_path / "openssh_known_hosts"
    # an unknown host key (strict checking): ssh refuses the server
    r = server.cli("neo-push", "--ssh-command", _openssh(server, known, server.key), str(src), server.remote("t"))
    assert r.returncode == 3, (r.returncode, r.stderr)
    # a changed host key: another key pinned for the address
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    blob = other.with_suffix(".pub").read_text().split()[1]
    known.write_text(f"[127.0.0.1]:{server.ssh_port} ssh-ed25519 {blob}\n")
    r = server.cli("neo-push", "--ssh-command", _openssh(server, known, server.key), str(src), server.remote("t"))
    assert r.returncode == 3, (r.returncode, r.stderr)
    # a key the server does not know: the login is refused
    known.unlink()
    r = server.cli("neo-push", "--ssh-command", _openssh(server, known, other, strict="accept-new"), str(src),
                   server.remote("t"))  # fmt: skip
    assert r.returncode == 3, (r.returncode, r.stderr)
    # and the right key works (exit 0): the refusals above were the host key's and the login's
    r = server.cli("neo-push", "--ssh-command", _openssh(server, known, server.key), str(src), server.remote("t"))
    assert r.returncode == 0, r.stderr


def test_the_wrong_transport_for_a_port_is_named(server: RunningServer) -> None:
    ssh_to_tls = server.cli("neo-ls", f"ssh://alice@127.0.0.1:{server.tls_port}")
    assert ssh_to_tls.returncode == 1, ssh_to_tls.stderr
    assert f"speaks TLS, not SSH: use tls://alice@127.0.0.1:{server.tls_port}/" in ssh_to_tls.stderr, ssh_to_tls.stderr
    tls_to_ssh = server.cli("neo-ls", f"tls://alice@127.0.0.1:{server.ssh_port}")
    assert tls_to_ssh.returncode == 1, tls_to_ssh.stderr
    assert f"speaks SSH, not TLS: use ssh://alice@127.0.0.1:{server.ssh_port}/" in tls_to_ssh.stderr


def test_tls_fingerprint_reads_the_same_on_both_sides(server: RunningServer) -> None:
    init = subprocess.run([str(BIN / "neo-admin"), "--data", str(server.data), "init", "--json"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert init.returncode == 0, init.stderr
    shown = json.loads(init.stdout)["tls_public_key"]
    assert shown.startswith("SHA256:"), shown
    human = subprocess.run([str(BIN / "neo-admin"), "--data", str(server.data), "init"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert shown in human.stdout, human.stdout
    assert shown in server.log_text()  # twistd logs it when TLS listens
    unknown = server.cli("neo-ls", server.remote("", scheme="tls").rstrip("/"))
    assert unknown.returncode == 3, unknown.stderr
    assert f"({shown})" in unknown.stderr, (shown, unknown.stderr)  # what the client asks the user to trust

