"""What the benchmark needs from the machine: Debian packages for the anchors, installed when missing, and
the description of the machine that goes with every result (a number means little without it)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# executable (or absolute path) -> Debian package that provides it
NEEDED = {
    "rsync": "rsync",
    "borg": "borgbackup",
    "restic": "restic",
    "/usr/sbin/sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}


def _present(program: str) -> bool:
    return Path(program).exists() if program.startswith("/") else shutil.which(program) is not None


def missing_packages() -> list[str]:
    return sorted({pkg for program, pkg in NEEDED.items() if not _present(program)})


def install_missing(log: Callable[[str], None] = print) -> list[str]:
    """apt-get install whatever is missing (root only); returns the packages still missing afterwards.

    Installing openssh-server does not make the benchmark use the machine's sshd: it only needs the binary."""
    missing = missing_packages()
    if not missing:
        return []
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return missing
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"installing from Debian: {' '.join(missing)}")
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    for argv in (["apt-get", "update", "-qq"], install):
        try:
            r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            log(f"{' '.join(argv)} timed out")
            break
        if r.returncode != 0:
            log(f"{' '.join(argv)} failed: {r.stderr.strip()[-500:]}")
            break
    return missing_packages()


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def _first_line(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    return ((r.stdout or r.stderr).strip().splitlines() or ["?"])[0]


def machine() -> dict[str, object]:
    """nproc, memory, kernel, OS, CPU, Python, and the versions of OpenSSH and every tool."""
    return {
        "nproc": os.cpu_count(),
        "memory_bytes": _mem_total(),
        "kernel": platform.release(),
        "os": _os_release(),
        "cpu": _cpu_model(),
        "python": sys.version.split()[0],
        "openssh": _first_line(["ssh", "-V"]),
        "disk": _first_line(["sh", "-c", "df -hT . | tail -1"]),
    }
