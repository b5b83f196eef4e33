"""How each number of a row is taken: wall time and client peak memory of a child, server peak memory, storage.

- Client: the command runs under the small launcher of launch.py, which reaps it with ``os.wait4``: its wall
  time, CPU time and ``ru_maxrss`` (the largest resident set of the command or of any descendant it reaped,
  e.g. rsync's ssh). Spawning it from here directly would report this process's own peak (see launch.py).
- Server, single process (twistd): ``/proc/PID/clear_refs`` is written ``5`` before the operation, which
  resets VmHWM to the current RSS, and VmHWM is read after it: the exact peak during that operation.
- Server, process tree (sshd sessions running ``rsync --server``, ``borg serve``, ``sftp-server``): sampled
  every 50 ms; the peak is the largest sum of VmHWM over the live descendants of sshd's listener. Processes
  shorter than a sample can be missed.
- Storage: bytes on disk (``st_blocks * 512``, each inode counted once so hard links are not double counted),
  with the apparent size alongside.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ProcResult:
    """One finished child process."""

    argv: list[str]
    returncode: int
    wall_s: float
    cpu_s: float
    maxrss: int  # bytes
    stdout: str
    stderr: str
    timed_out: bool = False

    def tail(self, n: int = 800) -> str:
        return (self.stderr.strip() or self.stdout.strip())[-n:]


LAUNCHER = Path(__file__).with_name("launch.py")


class Child:
    """A started child (under the launcher) whose exit is waited for by its own thread, so it is reaped even
    when many children run at once, and no unrelated child, such as the servers, is ever reaped by mistake."""

    def __init__(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
        stdin: str | None = None, logdir: Path,
    ) -> None:
        self.argv = [str(a) for a in argv]
        logdir.mkdir(parents=True, exist_ok=True)
        stem = f"{time.time_ns()}-{Path(self.argv[0]).name}"
        self._out_path = logdir / f"{stem}.out"
        self._err_path = logdir / f"{stem}.err"
        self._result_path = logdir / f"{stem}.json"
        self._done = threading.Event()
        self.end = 0.0
        with open(self._out_path, "wb") as out, open(self._err_path, "wb") as err:
            self.start = time.monotonic()
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(LAUNCHER), str(self._result_path), *self.argv],
                env=dict(env) if env is not None else None, cwd=cwd, stdout=out, stderr=err,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        if stdin is not None:
            assert self._proc.stdin is not None
            try:
                self._proc.stdin.write(stdin.encode())
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
        self.pid = self._proc.pid
        threading.Thread(target=self._reap, name=f"wait-{self.pid}", daemon=True).start()

    def _reap(self) -> None:
        _, status = os.waitpid(self.pid, 0)
        self.end = time.monotonic()
        self._proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
        self._done.set()

    def kill(self) -> None:
        """Kill the child and everything it started (its own session)."""
        if not self._done.is_set():
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            kill_tree(self.pid)

    def wait(self, timeout: float) -> ProcResult:
        """The result, killing the child if it has not finished within ``timeout`` seconds."""
        timed_out = not self._done.wait(timeout)
        if timed_out:
            self.kill()
            self._done.wait(30)
        try:
            measured = json.loads(self._result_path.read_text())
            self._result_path.unlink()
        except (OSError, ValueError):  # killed, or the command could not start
            measured = {}
        code = self._proc.returncode if self._proc.returncode is not None else -9
        wall = measured.get("wall_s", self.end - self.start if self.end else float(timeout))
        return ProcResult(
            self.argv, int(measured.get("code", code)), float(wall), float(measured.get("cpu_s", 0.0)),
            int(measured.get("maxrss", 0)), self._read(self._out_path), self._read(self._err_path), timed_out,
        )  # fmt: skip

    @staticmethod
    def _read(path: Path) -> str:
        try:
            text = path.read_text(errors="replace")
            path.unlink()
            return text
        except OSError:
            return ""


def launcher_floor(logdir: Path) -> int:
    """The smallest ru_maxrss the launcher can report (its own size): a client at or below it is shown as
    "<= floor" rather than as a number it did not reach."""
    return run(["true"], timeout=30, logdir=logdir).maxrss


def run(
    argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None, cwd: Path | None = None,
    stdin: str | None = None, logdir: Path,
) -> ProcResult:
    """Run one child to the end (or to ``timeout``) and measure it."""
    return Child(argv, env=env, cwd=cwd, stdin=stdin, logdir=logdir).wait(timeout)


# --- processes --------------------------------------------------------------------------------------------


def _parents() -> dict[int, int]:
    """pid -> ppid for every process now."""
    out: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name is in parentheses and may contain spaces: split after the last ')'
        fields = stat[stat.rfind(b")") + 2 :].split()
        out[int(entry.name)] = int(fields[1])
    return out


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first)."""
    parents = _parents()
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def kill_tree(pid: int, grace: float = 5.0) -> None:
    """SIGTERM ``pid`` and its descendants, then SIGKILL whatever is left after ``grace`` seconds."""
    victims = [*descendants(pid), pid]
    for p in victims:
        try:
            os.kill(p, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in victims):
        time.sleep(0.05)
    for p in victims:
        if _alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status (0 when the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class ServerMemory:
    """Peak resident memory of the server side during one operation (see the module docstring)."""

    def begin(self) -> None:
        raise NotImplementedError

    def end(self) -> int | None:
        """Peak bytes since begin(), or None when this server side has no process (a local repository)."""
        raise NotImplementedError

    def now(self) -> int | None:
        """Resident bytes of the server side at this moment (VmRSS), or None without a server process: what
        it holds before a scenario and some seconds after it, to see whether it gives memory back."""
        raise NotImplementedError


class NoServer(ServerMemory):
    def begin(self) -> None:
        pass

    def end(self) -> int | None:
        return None

    def now(self) -> int | None:
        return None


class ProcessHWM(ServerMemory):
    """One long-lived server process: reset VmHWM, read it back."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def begin(self) -> None:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass  # without the reset, VmHWM is the peak since start: still an upper bound

    def end(self) -> int | None:
        return status_kib(self.pid, "VmHWM") * 1024

    def now(self) -> int | None:
        return status_kib(self.pid, "VmRSS") * 1024


class TreeSampler(ServerMemory):
    """The processes a listener (sshd) starts per connection: sampled, largest sum of VmHWM seen."""

    INTERVAL = 0.05

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak = 0

    def _sample(self) -> None:
        total = sum(status_kib(p, "VmHWM") for p in descendants(self.root_pid)) * 1024
        self.peak = max(self.peak, total)

    def _loop(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            self._sample()

    def begin(self) -> None:
        self.peak = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="server-mem", daemon=True)
        self._thread.start()

    def end(self) -> int | None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return self.peak

    def now(self) -> int | None:
        """The listener and its live sessions (the sessions are gone once their clients are)."""
        return sum(status_kib(p, "VmRSS") for p in [self.root_pid, *descendants(self.root_pid)]) * 1024


# --- storage ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    disk: int  # st_blocks * 512, each inode once
    apparent: int  # st_size sum, each inode once
    files: int

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.disk - other.disk, self.apparent - other.apparent, self.files - other.files)


def disk_usage(root: Path) -> Usage:
    """Like ``du``: every file, directory and link under root, hard links counted once."""
    seen: set[tuple[int, int]] = set()
    disk = apparent = files = 0
    if not root.exists():
        return Usage(0, 0, 0)
    stack = [str(root)]
    while stack:
        top = stack.pop()
        try:
            it = os.scandir(top)
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
                disk += st.st_blocks * 512
                apparent += st.st_size
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    files += 1
    return Usage(disk, apparent, files)
