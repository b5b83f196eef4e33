"""The benchmark's own OpenSSH server, for the anchors (rsync, borg, restic over sftp).

It never touches /etc/ssh or the machine's sshd: ``/usr/sbin/sshd -D -f CONFIG`` runs as root on a free
loopback port with a config, host key, authorized_keys and pid file that all live in the work directory, and
it is killed when the benchmark ends. Clients log in as root with a generated ed25519 key.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from bench.measure import kill_tree

SSHD = Path("/usr/sbin/sshd")
SFTP_SERVERS = (Path("/usr/lib/openssh/sftp-server"), Path("/usr/libexec/openssh/sftp-server"))


def free_port() -> int:
    """A loopback port nobody listens on now (the usual bind-to-0 trick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    """Return once 127.0.0.1:port accepts a connection; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s")


def make_key(path: Path) -> Path:
    """An ed25519 key pair without passphrase (reused if it exists)."""
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "neophytos-bench", "-f", str(path)],
                       check=True, timeout=30)
    return path


class Sshd:
    """One ``sshd -D`` process with a throwaway configuration under ``root``."""

    def __init__(self, root: Path, client_key: Path) -> None:
        self.root = root
        self.client_key = client_key
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> str | None:
        """None when sshd can run here, else why not."""
        if not SSHD.exists():
            return f"{SSHD} not installed (Debian package openssh-server)"
        if os.geteuid() != 0:
            return "the benchmark's sshd logs in as root and must be started by root"
        return None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        host_key = make_key(self.root / "ssh_host_ed25519_key")
        authorized = self.root / "authorized_keys"
        authorized.write_text(Path(f"{self.client_key}.pub").read_text())
        authorized.chmod(0o600)
        sftp = next((str(p) for p in SFTP_SERVERS if p.exists()), "internal-sftp")
        config = self.root / "sshd_config"
        config.write_text(
            "\n".join([
                f"Port {self.port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {self.root / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "UsePAM no",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "StrictModes no",
                "UseDNS no",
                "PrintMotd no",
                "PrintLastLog no",
                "MaxStartups 200:30:400",  # 16 concurrent clients must not be dropped before auth
                "MaxSessions 200",
                "LogLevel ERROR",
                f"Subsystem sftp {sftp}",
                "",
            ])
        )  # fmt: skip
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory; sshd refuses to start without
        with open(self.root / "sshd.log", "ab") as log:
            self.process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True,
            )
        wait_listening(self.port, self.process, 20, "sshd")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def ssh_command(self, port: int | None = None) -> list[str]:
        """The ssh client command line for the anchors (``-e`` of rsync, BORG_RSH, restic's sftp.command).

        ``port`` is the byte-counting relay's (or sshd's own); None leaves ``-p`` to the caller (borg puts the
        port of its URL there)."""
        return [
            "ssh", "-F", "/dev/null", *(["-p", str(port)] if port is not None else []), "-i", str(self.client_key),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        ]  # fmt: skip

    def stop(self) -> None:
        """Stop the listener and every session it started (each session is its own process group, so they
        are found by parentage, not by group), then reap the listener."""
        if self.process is None:
            return
        kill_tree(self.process.pid)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None
