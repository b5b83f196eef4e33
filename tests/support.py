"""A real ``twistd -n neophytos`` process for end-to-end tests, and the real CLIs to drive it.

The server gets its own data directory, loopback ports and log; account ``alice`` has both an SSH key and a
password. CLIs run with ``XDG_CONFIG_HOME`` / ``XDG_CACHE_HOME`` in the test's directory, so known hosts and
files caches never touch the user's.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
PASSWORD = "correct horse battery staple"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningServer:
    """``args`` are more ``twistd neophytos`` options; ``nofile`` the server's limit on open files (soft and
    hard), as a shell's ``ulimit -n`` would set it."""

    def __init__(self, tmp_path: Path, *, args: tuple[str, ...] = (), nofile: int | None = None) -> None:
        self.tmp = tmp_path
        self.args = args
        self.nofile = nofile
        self.data = tmp_path / "data"
        self.log = tmp_path / "twistd.log"
        self.key = tmp_path / "id_ed25519"
        self.known_hosts = tmp_path / "known_hosts"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        r = subprocess.run(
            [str(BIN / "neo-admin"), "--data", str(self.data), "--bcrypt-rounds", "4",
             "account", "add", "alice", "--password-stdin", "--ssh-key", f"{self.key}.pub"],
            input=PASSWORD + "\n", capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        self.ssh_port, self.tls_port = free_port(), free_port()
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--logfile", str(self.log), "--pidfile", "",
             "neophytos", "--data", str(self.data), "--bcrypt-rounds", "4",
             "--ssh", f"tcp:{self.ssh_port}:interface=127.0.0.1",
             "--tls", f"tcp:{self.tls_port}:interface=127.0.0.1", *self.args],
            cwd=self.tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=self._limit,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self.process.stdout.read().decode() if self.process.stdout else ""
                raise AssertionError(f"twistd exited: {output}\n{self.log_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.ssh_port), timeout=1).close()
                socket.create_connection(("127.0.0.1", self.tls_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("twistd did not start listening:\n" + self.log_text())

    def _limit(self) -> None:
        if self.nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def open_fds(self) -> int:
        """File descriptors the server has open now."""
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def ssh(self, *args: str) -> list[str]:
        return [
            "ssh", "-F", "/dev/null", "-p", str(self.ssh_port), "-l", "alice", "-i", str(self.key),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "SendEnv=LANG",
            *args,
        ]  # fmt: skip

    def remote(self, target: str, scheme: str = "ssh") -> str:
        port = self.ssh_port if scheme == "ssh" else self.tls_port
        return f"{scheme}://alice@127.0.0.1:{port}/{target}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("NEO_PASSWORD", "SSH_AUTH_SOCK")}
        env.update(XDG_CONFIG_HOME=str(self.tmp / "config"), XDG_CACHE_HOME=str(self.tmp / "cache"), HOME=str(self.tmp))
        env.update(extra)
        return env

    def cli(
        self, program: str, *args: str, env: dict[str, str] | None = None, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run neo-push / neo-pull with the test's key and known-hosts file."""
        return subprocess.run(
            [str(BIN / program), "-i", str(self.key), "--known-hosts", str(self.known_hosts), *args],
            capture_output=True, text=True, timeout=kw.pop("timeout", 300), env=env or self.env(), **kw,
        )  # fmt: skip

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (a crash)."""
        self.process.kill()
        self.process.wait()


def assert_clean(log: str) -> None:
    """The server log has no traceback and no unhandled error."""
    for bad in ("Unhandled", "Traceback", "Could not adapt"):
        assert bad not in log, log


def snapshot_of(root: Path) -> dict[str, Any]:
    """Everything a restore must reproduce: bytes, modes and mtimes of files, link targets, directories."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("l", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("d", st.st_mode & 0o7777, st.st_mtime_ns)
            else:
                out[rel] = ("f", p.read_bytes(), st.st_mode & 0o7777, st.st_mtime_ns)
    return out
