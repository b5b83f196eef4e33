"""The benchmark's own ``twistd -n neophytos``: a temporary data directory, loopback ports, one account.

The account ``bench`` has both the benchmark's SSH key (for ssh://) and a password (for tls://). bcrypt runs
with 4 rounds (the hidden ``--bcrypt-rounds``), so logins do not weigh on short operations.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.measure import kill_tree
from bench.sshd import free_port, wait_listening

BIN = Path(sys.executable).parent
ACCOUNT = "bench"
PASSWORD = "bench-password-not-secret"


def compile_package() -> None:
    """Byte-compile the neotwist package, as installing a wheel with pip does. A development checkout run with
    PYTHONDONTWRITEBYTECODE (as here) has no ``__pycache__``: every client run then compiled every module it
    imported, some 0.1 s of CPU that no installed copy pays and no anchor pays either."""
    import compileall

    import neotwist

    compileall.compile_dir(str(Path(neotwist.__file__).parent), quiet=1)


class NeoServer:
    def __init__(self, root: Path, client_key: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "twistd.log"
        self.client_key = client_key
        self.ssh_port = free_port()
        self.tls_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> str | None:
        for program in ("twistd", "neo-admin", "neo-push", "neo-pull"):
            if not (BIN / program).exists():
                return f"{BIN / program} not found: run the benchmark with the project's virtualenv python"
        return None

    @property
    def repo(self) -> Path:
        """What the server stores pushed data in: the "server storage" of the Neophytos rows."""
        return self.data / "repo"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        compile_package()
        if not (self.data / "accounts.sqlite").exists():
            r = subprocess.run(
                [str(BIN / "neo-admin"), "--data", str(self.data), "--bcrypt-rounds", "4", "account", "add", ACCOUNT,
                 "--password-stdin", "--ssh-key", f"{self.client_key}.pub"],
                input=PASSWORD + "\n", capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            if r.returncode != 0:
                raise RuntimeError(f"neo-admin account add failed: {r.stderr.strip()}")
        with open(self.root / "twistd.out", "ab") as out:
            self.process = subprocess.Popen(
                [str(BIN / "twistd"), "-n", "--logfile", str(self.log), "--pidfile", "",
                 "neophytos", "--data", str(self.data), "--bcrypt-rounds", "4",
                 "--ssh", f"tcp:{self.ssh_port}:interface=127.0.0.1",
                 "--tls", f"tcp:{self.tls_port}:interface=127.0.0.1"],
                cwd=self.root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_listening(self.ssh_port, self.process, 60, "twistd neophytos")
        wait_listening(self.tls_port, self.process, 60, "twistd neophytos")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (the repository is closed cleanly on shutdown), SIGKILL after a grace period."""
        if self.process is None:
            return
        kill_tree(self.process.pid, grace=30)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None
