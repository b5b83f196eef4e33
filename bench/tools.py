"""One class per tool, all with the same interface: create a target, push a directory into it, pull it back,
say where its server-side data lives and how the server side's memory is measured.

Every tool runs on loopback through the same kind of byte-counting relay (see relay.py), except restic with a
local repository, which has no wire at all. The command lines are the tools' ordinary ones:

- Neophytos: ``neo-push --delete`` (each snapshot is the tree as it is, like the others' snapshots and rsync's
  ``--delete`` mirror) / ``neo-pull`` (no fsync of restored files by default, like the anchors) over SSH (the
  built-in conch client, key auth) and over TLS (password).
- rsync: ``rsync -a --delete`` over the benchmark's sshd (a mirror; ``--link-dest`` for the history scenario).
- borg: ``borg create`` / ``borg extract`` to an unencrypted repository (``-e none``) over the same sshd.
- restic: ``restic backup`` / ``restic restore latest`` to a local repository, and over sftp via the sshd.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.measure import NoServer, ProcessHWM, ProcResult, ServerMemory, TreeSampler

if TYPE_CHECKING:
    from bench.lab import Lab
    from bench.relay import Relay


@dataclass
class Target:
    """One backup destination of one tool: a Neophytos target, an rsync directory, a borg/restic repo."""

    tool: str
    key: str  # what the scenario calls it, e.g. "tree"
    name: str  # unique on the server side
    path: Path  # server-side directory (for Neophytos: the whole repository, shared by all targets)
    versioned: bool = False  # rsync: one directory per push with --link-dest (history), else a mirror
    pushes: int = 0
    version: int | None = None  # DataSet.version last pushed successfully
    storage: int = 0  # bytes on disk added by this target's pushes (see Lab.push)
    storage_apparent: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Invocation:
    argv: list[str]
    env: dict[str, str]
    cwd: Path | None = None
    stdin: str | None = None


class ToolError(RuntimeError):
    """A setup step of a tool failed (not a measured operation)."""


class Tool:
    """The interface every tool implements."""

    name = ""
    label = ""
    programs: tuple[str, ...] = ()  # executables it needs on PATH
    needs_sshd = False
    needs_neo = False
    networked = True
    ok_codes: tuple[int, ...] = (0,)

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._count = itertools.count(1)  # next() is atomic: targets may be created from several threads

    # --- availability and environment --------------------------------------------------------------------

    def missing(self) -> str | None:
        """None when the tool can run here, else why not."""
        for program in self.programs:
            if shutil.which(program) is None:
                return f"{program} not installed"
        return None

    def version(self) -> str:
        return ""

    def env(self) -> dict[str, str]:
        """The client's environment: HOME and caches inside the work directory, no agent, no user config."""
        env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "NEO_PASSWORD")}
        home = self.lab.client_dir / self.name
        env.update(HOME=str(home / "home"), XDG_CONFIG_HOME=str(home / "config"),
                   XDG_CACHE_HOME=str(home / "cache"), LC_ALL="C.UTF-8")  # fmt: skip
        return env

    @property
    def relay(self) -> Relay | None:
        return None

    def server_memory(self) -> ServerMemory:
        return NoServer()

    # --- targets -------------------------------------------------------------------------------------------

    def _unique(self, key: str) -> str:
        """A name no other target of any tool has (both Neophytos transports share one server account)."""
        return f"{self.name}-{key}-{next(self._count)}"

    def create(self, key: str, versioned: bool = False) -> Target:
        """A new, empty target (repository init is setup, not measured)."""
        raise NotImplementedError

    def storage_dir(self, target: Target) -> Path:
        """The directory whose growth during a push is that push's server storage."""
        return target.path

    def discard(self, target: Target) -> None:
        """Free a target's disk space once no scenario needs it any more (deleted between scenarios)."""
        self.lab.trash.put(target.path)

    # --- operations ----------------------------------------------------------------------------------------

    def push(self, target: Target, src: Path) -> Invocation:
        raise NotImplementedError

    def pull(self, target: Target, dest: Path) -> Invocation:
        raise NotImplementedError

    def parse(self, result: ProcResult) -> tuple[int | None, int | None, dict[str, Any]]:
        """(bytes sent, bytes received, summary) as the tool itself reports them, when it does."""
        return None, None, {}

    def _setup(self, argv: list[str], env: dict[str, str], what: str) -> None:
        r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise ToolError(f"{self.name}: {what} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-800:]}")


def _first_line(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return ((r.stdout or r.stderr).strip().splitlines() or ["?"])[0]


# --- Neophytos --------------------------------------------------------------------------------------------


class Neo(Tool):
    """neo-push / neo-pull against the benchmark's twistd."""

    transport = "ssh"
    needs_neo = True

    def missing(self) -> str | None:
        from bench.neoserver import NeoServer

        return NeoServer.available()

    def version(self) -> str:
        from importlib.metadata import version

        return f"neophytos {version('neophytos')}"

    @property
    def relay(self) -> Relay | None:
        return self.lab.relays[f"neo-{self.transport}"]

    def server_memory(self) -> ServerMemory:
        return ProcessHWM(self.lab.neo.pid)

    def create(self, key: str, versioned: bool = False) -> Target:
        return Target(self.name, key, self._unique(key), self.lab.neo.repo, versioned)

    def discard(self, target: Target) -> None:
        pass  # no command removes a target; the work directory goes at the end

    def _remote(self, target: Target) -> str:
        assert self.relay is not None
        from bench.neoserver import ACCOUNT

        return f"{self.transport}://{ACCOUNT}@127.0.0.1:{self.relay.port}/{target.name}"

    def _invocation(self, program: str, *args: str) -> Invocation:
        """``program`` with the options every run shares: JSON summary, no progress bars, trust on first use
        (the host key and certificate pins live in this tool's config directory), key or password."""
        from bench.neoserver import BIN, PASSWORD

        env = self.env()
        argv = [str(BIN / program), "--json", "--no-progress", "--accept-new-host-key"]
        if self.transport == "ssh":
            argv += ["-i", str(self.lab.key), "--no-agent",
                     "--known-hosts", str(self.lab.client_dir / self.name / "known_hosts")]  # fmt: skip
        else:
            env["NEO_PASSWORD"] = PASSWORD
        return Invocation([*argv, *args], env)

    def push(self, target: Target, src: Path) -> Invocation:
        return self._invocation("neo-push", "--delete", str(src), self._remote(target))

    def pull(self, target: Target, dest: Path) -> Invocation:
        return self._invocation("neo-pull", self._remote(target), str(dest))

    def parse(self, result: ProcResult) -> tuple[int | None, int | None, dict[str, Any]]:
        try:
            summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None, None, {}
        return summary.get("bytes_sent"), summary.get("bytes_received"), summary


class NeoSSH(Neo):
    name = "neo-ssh"
    label = "Neophytos over SSH (conch client, key)"
    transport = "ssh"


class NeoTLS(Neo):
    name = "neo-tls"
    label = "Neophytos over TLS (password)"
    transport = "tls"


# --- encryption ---


class NeoEncrypted(NeoSSH):
    """The same as neo-ssh, into targets created with ``--encrypt``: keyed ids, sealed chunks, encrypted names.

    The key is made once per run with neo-key's default KDF (Argon2id, 128 MiB), and every push or pull pays its
    unlock, as a user's would."""

    name = "neo-enc"
    label = "Neophytos over SSH, encrypted target"
    passphrase = "bench-passphrase-not-secret"
    _key_lock = threading.Lock()

    def env(self) -> dict[str, str]:
        env = super().env()
        env["NEO_PASSPHRASE"] = self.passphrase
        return env

    def create(self, key: str, versioned: bool = False) -> Target:
        from bench.neoserver import BIN

        with self._key_lock:  # targets may be created from several threads (the concurrent scenario)
            if not (self.lab.client_dir / self.name / "config" / "neophytos" / "key").exists():
                self._setup([str(BIN / "neo-key"), "init"], self.env(), "neo-key init")
        return super().create(key, versioned)

    def push(self, target: Target, src: Path) -> Invocation:
        return self._invocation("neo-push", "--encrypt", "--delete", str(src), self._remote(target))


# --- anchors over the benchmark's sshd ---------------------------------------------------------------------


class OverSshd(Tool):
    needs_sshd = True

    def missing(self) -> str | None:
        from bench.sshd import Sshd

        return super().missing() or Sshd.available()

    @property
    def relay(self) -> Relay | None:
        return self.lab.relays["sshd"]

    def server_memory(self) -> ServerMemory:
        return TreeSampler(self.lab.sshd.pid)

    def ssh(self, with_port: bool = True) -> list[str]:
        assert self.relay is not None
        return self.lab.sshd.ssh_command(self.relay.port if with_port else None)



class Rsync(OverSshd):
    name = "rsync"
    label = "rsync -a over OpenSSH"
    programs = ("rsync", "ssh")

    def version(self) -> str:
        return _first_line(["rsync", "--version"])

    def create(self, key: str, versioned: bool = False) -> Target:
        name = self._unique(key)
        path = self.lab.server_dir / self.name / name
        path.mkdir(parents=True)
        return Target(self.name, key, name, path, versioned)

    def _dest(self, target: Target, n: int) -> Path:
        return target.path / f"v{n}" if target.versioned else target.path / "mirror"

    def push(self, target: Target, src: Path) -> Invocation:
        n = target.pushes + 1
        argv = ["rsync", "-a", "--delete", "--stats", "-e", shlex.join(self.ssh())]
        if target.versioned and n > 1:
            argv.append(f"--link-dest={self._dest(target, n - 1)}")
        argv += [f"{src}/", f"root@127.0.0.1:{self._dest(target, n)}/"]
        return Invocation(argv, self.env())

    def pull(self, target: Target, dest: Path) -> Invocation:
        src = self._dest(target, target.pushes)
        return Invocation(["rsync", "-a", "--stats", "-e", shlex.join(self.ssh()), f"root@127.0.0.1:{src}/",
                           f"{dest}/"], self.env())  # fmt: skip

    def parse(self, result: ProcResult) -> tuple[int | None, int | None, dict[str, Any]]:
        def number(label: str) -> int | None:
            m = re.search(rf"^{label}:\s*([\d,]+)", result.stdout, re.MULTILINE)
            return int(m.group(1).replace(",", "")) if m else None

        return number("Total bytes sent"), number("Total bytes received"), {}


class Borg(OverSshd):
    name = "borg"
    label = "borg over OpenSSH (-e none)"
    programs = ("borg", "ssh")
    ok_codes = (0, 1)  # 1 is borg's "finished with warnings"

    def version(self) -> str:
        return _first_line(["borg", "--version"])

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(
            BORG_BASE_DIR=str(self.lab.client_dir / self.name / "base"),
            BORG_RSH=shlex.join(self.ssh(with_port=False)),  # borg adds -p from the URL
            BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
            BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
        )
        return env

    def _url(self, target: Target) -> str:
        assert self.relay is not None
        return f"ssh://root@127.0.0.1:{self.relay.port}{target.path}"

    def create(self, key: str, versioned: bool = False) -> Target:
        name = self._unique(key)
        path = self.lab.server_dir / self.name / name
        path.parent.mkdir(parents=True, exist_ok=True)
        target = Target(self.name, key, name, path, versioned)
        self._setup(["borg", "init", "-e", "none", self._url(target)], self.env(), "borg init")
        return target

    def push(self, target: Target, src: Path) -> Invocation:
        # relative paths from the tree's root, so extract recreates the tree where it runs
        return Invocation(["borg", "create", "--stats", f"{self._url(target)}::v{target.pushes + 1}", "."],
                          self.env(), cwd=src)  # fmt: skip

    def pull(self, target: Target, dest: Path) -> Invocation:
        dest.mkdir(parents=True, exist_ok=True)
        return Invocation(["borg", "extract", f"{self._url(target)}::v{target.pushes}"], self.env(), cwd=dest)


class Restic(Tool):
    name = "restic"
    label = "restic, local repository"
    programs: tuple[str, ...] = ("restic",)
    networked = False

    def version(self) -> str:
        return _first_line(["restic", "version"])

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(RESTIC_PASSWORD="bench", RESTIC_CACHE_DIR=str(self.lab.client_dir / self.name / "restic-cache"))
        return env

    def _repo(self, target: Target) -> list[str]:
        return ["-r", str(target.path)]

    def create(self, key: str, versioned: bool = False) -> Target:
        name = self._unique(key)
        path = self.lab.server_dir / self.name / name
        path.parent.mkdir(parents=True, exist_ok=True)
        target = Target(self.name, key, name, path, versioned)
        self._setup(["restic", *self._repo(target), "init", "--quiet"], self.env(), "restic init")
        return target

    def push(self, target: Target, src: Path) -> Invocation:
        # "." from the tree's root: restore then writes the tree itself into --target
        return Invocation(["restic", *self._repo(target), "backup", "--json", "."], self.env(), cwd=src)

    def pull(self, target: Target, dest: Path) -> Invocation:
        return Invocation(["restic", *self._repo(target), "restore", "latest", "--target", str(dest)], self.env())

    def parse(self, result: ProcResult) -> tuple[int | None, int | None, dict[str, Any]]:
        for line in reversed(result.stdout.strip().splitlines()):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and doc.get("message_type") == "summary":
                return None, None, doc
        return None, None, {}


class ResticSftp(Restic, OverSshd):
    name = "restic-sftp"
    label = "restic over sftp (OpenSSH)"
    programs = ("restic", "ssh")
    networked = True

    def missing(self) -> str | None:
        return OverSshd.missing(self)

    def _repo(self, target: Target) -> list[str]:
        command = shlex.join([*self.ssh(), "root@127.0.0.1", "-s", "sftp"])
        return ["-r", f"sftp:root@127.0.0.1:{target.path}", "-o", f"sftp.command={command}"]


ALL_TOOLS: tuple[type[Tool], ...] = (NeoSSH, NeoTLS, Rsync, Borg, Restic, ResticSftp, NeoEncrypted)
TOOLS_BY_NAME = {t.name: t for t in ALL_TOOLS}
DEBIAN_PACKAGES = {"rsync": "rsync", "borg": "borgbackup", "restic": "restic", "ssh": "openssh-client"}
