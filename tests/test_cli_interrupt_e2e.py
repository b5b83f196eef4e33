"""Ctrl-C, SIGTERM and a closed standard output against the real programs and a real ``twistd``.

An interrupted neo-push or neo-pull exits 130 within seconds, a second signal ends it at once, and an interrupted
first push leaves no empty target behind. A reader that goes away early (``| head``, ``| true``) gets no
traceback, and a push that committed still says so.
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from support import BIN, RunningServer

if shutil.which("ssh-keygen") is None:
    pytest.skip("OpenSSH client not installed", allow_module_level=True)


def _io(pid: int, field: str) -> int:
    """Bytes the process has read (``rchar``) or written (``wchar``) so far, from /proc."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == field:
                return int(value)
    except OSError:
        pass
    return 0


def _start(server: RunningServer, program: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / program), "-i", str(server.key), "--known-hosts", str(server.known_hosts), *args],
        env=server.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip


def _wait_for_io(proc: subprocess.Popen[str], field: str, at_least: int) -> None:
    deadline = time.monotonic() + 60
    while _io(proc.pid, field) < at_least:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the transfer never got going"
        time.sleep(0.02)


def _ends_within(proc: subprocess.Popen[str], seconds: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        raise AssertionError(f"still running {seconds} s after the signal: {err}") from None


def _big_tree(root: Path, files: int = 2, size: int = 24 * 1024 * 1024) -> None:
    root.mkdir()
    rng = random.Random(5)
    for i in range(files):
        (root / f"big{i}.bin").write_bytes(rng.randbytes(size))


def _targets(server: RunningServer) -> list[str]:
    r = server.cli("neo-ls", "--json", f"ssh://alice@127.0.0.1:{server.ssh_port}")
    assert r.returncode == 0, r.stderr
    return [t["name"] for t in json.loads(r.stdout)["targets"]]


def _warm(server: RunningServer, tmp_path: Path) -> None:
    """A first small push: pins the host key, so the interrupted run below gets straight to its transfer."""
    small = tmp_path / "small"
    small.mkdir()
    (small / "a").write_text("a")
    r = server.cli("neo-push", "--accept-new-host-key", str(small), server.remote("warm"))
    assert r.returncode == 0, r.stderr


def test_interrupted_first_push_exits_130_and_leaves_no_empty_target(server: RunningServer, tmp_path: Path) -> None:
    """An interrupted first push takes its new target away again, unless it had sent chunks: then the target
    stays (neo-ls says it has no snapshot yet) and pushing again resumes from what was sent."""
    _warm(server, tmp_path)
    src = tmp_path / "src"
    _big_tree(src)
    proc = _start(server, "neo-push", "--no-cache", str(src), server.remote("t"))
    # Past start-up: importing the client alone reads about 8 MB (rchar counts every read), so a lower mark
    # could interrupt it before it had even connected.
    _wait_for_io(proc, "rchar", 16 * 1024 * 1024)  # it is reading (and sending) the files
    proc.send_signal(signal.SIGINT)
    _out, err = _ends_within(proc, 10)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.rstrip().endswith("neo-push: interrupted"), err
    if _targets(server) == ["warm"]:
        return  # nothing had been sent yet: the new target was removed again
    assert sorted(_targets(server)) == ["t", "warm"]
    r = server.cli("neo-ls", f"ssh://alice@127.0.0.1:{server.ssh_port}")
    assert "none yet" in r.stdout, r.stdout
    r = server.cli("neo-push", "--json", "--no-cache", str(src), server.remote("t"))
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout)
    assert again["snapshot"] == 1 and again["chunk_bytes_sent"] < 48 * 1024 * 1024, again


def test_a_second_signal_ends_the_run_at_once(server: RunningServer, tmp_path: Path) -> None:
    _warm(server, tmp_path)
    src = tmp_path / "src"
    _big_tree(src)
    proc = _start(server, "neo-push", "--no-cache", str(src), server.remote("t"))
    _wait_for_io(proc, "rchar", 8 * 1024 * 1024)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGTERM)
    _out, err = _ends_within(proc, 10)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err


def _pushed_tree(server: RunningServer, tmp_path: Path) -> Path:
    """Six files of 8 MiB, pushed to target t: a pull of it is long enough to be interrupted mid-file."""
    src = tmp_path / "src"
    _big_tree(src, files=6, size=8 * 1024 * 1024)
    r = server.cli("neo-push", "--accept-new-host-key", str(src), server.remote("t"))
    assert r.returncode == 0, r.stderr
    return src


def _partial(src: Path, dest: Path) -> list[str]:
    """The files in ``dest`` (a pull of ``src``) whose bytes are not yet those of ``src``."""
    written = [p for p in dest.rglob("*") if p.is_file()] if dest.exists() else []
    return [p.name for p in written if p.read_bytes() != (src / p.name).read_bytes()]


def test_terminated_pull_exits_130_without_temporary_files(server: RunningServer, tmp_path: Path) -> None:
    src = _pushed_tree(server, tmp_path)
    dest = tmp_path / "dest"
    proc = _start(server, "neo-pull", server.remote("t"), str(dest))
    _wait_for_io(proc, "wchar", 4 * 1024 * 1024)  # it is writing files
    proc.send_signal(signal.SIGTERM)  # as a service manager stops it: the same as Ctrl-C
    _out, err = _ends_within(proc, 10)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    left = [p.name for p in dest.rglob("*") if ".neotmp." in p.name] if dest.exists() else []
    assert left == []
    assert _partial(src, dest) == []  # into an empty destination files are written in place: none half-written


def test_a_pull_killed_mid_write_is_finished_by_the_next(server: RunningServer, tmp_path: Path) -> None:
    """SIGKILL leaves no chance to clean up: a file written in place stays half-written under its own name.
    Its mtime is not the listed one (that is set last), so the next pull writes it again, whole."""
    src = _pushed_tree(server, tmp_path)
    dest = tmp_path / "dest"
    proc = _start(server, "neo-pull", server.remote("t"), str(dest))
    partial: list[str] = []
    deadline = time.monotonic() + 60
    while not partial:  # stopped and looked at until a file is caught half-written, then killed
        assert proc.poll() is None and time.monotonic() < deadline, "no file was ever seen half-written"
        time.sleep(0.005)
        proc.send_signal(signal.SIGSTOP)
        partial = _partial(src, dest)
        if not partial:
            proc.send_signal(signal.SIGCONT)
    proc.kill()
    proc.communicate()
    r = server.cli("neo-pull", server.remote("t"), str(dest))
    assert r.returncode == 0, r.stderr
    for p in src.iterdir():
        assert (dest / p.name).read_bytes() == p.read_bytes(), (p.name, partial)
        assert (dest / p.name).stat().st_mtime_ns == p.stat().st_mtime_ns
    assert sorted(os.listdir(dest)) == sorted(os.listdir(src))  # no temporary file left by either


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a SIGTERM handler yet (the entry point installs one first thing): from then on
    the command, not the interpreter's start-up, decides what Ctrl-C does."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    except OSError:
        pass
    return False


def test_ctrl_c_while_starting_up_prints_one_line(tmp_path: Path) -> None:
    """SIGINT at a series of moments of start-up (modules loading, parsing, connecting): never a traceback."""
    for delay in (0.0, 0.1, 0.25, 0.5):
        proc = subprocess.Popen(
            [str(BIN / "neo-push"), "--known-hosts", str(tmp_path / "kh"), str(tmp_path), "alice@127.0.0.1:9/t"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "c")},
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not _catches_sigterm(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _out, err = _ends_within(proc, 10)
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, (delay, err)
        assert proc.returncode in (130, 1), (delay, proc.returncode, err)  # 1: it failed to connect first


def _closed_stdout() -> int:
    """The write end of a pipe whose reader is already gone: writing to it fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


def test_closed_stdout_never_shows_a_traceback(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2000):
        (src / f"file-{i:04}").write_text(str(i))
    base = [str(BIN / "neo-push"), "-i", str(server.key), "--known-hosts", str(server.known_hosts)]
    stdout = _closed_stdout()
    try:
        pushed = subprocess.run(
            [*base, "--accept-new-host-key", "--json", str(src), server.remote("t")],
            stdout=stdout, stderr=subprocess.PIPE, text=True, env=server.env(), timeout=120,
        )  # fmt: skip
        # the push committed: it says so, and exits 0 (not 130, not a traceback)
        assert pushed.returncode == 0, pushed.stderr
        assert "Traceback" not in pushed.stderr and "snapshot 1 committed" in pushed.stderr, pushed.stderr
        ls = [str(BIN / "neo-ls"), "-i", str(server.key), "--known-hosts", str(server.known_hosts)]
        for args in (["--json", f"ssh://alice@127.0.0.1:{server.ssh_port}"], ["-R", server.remote("t")]):
            listed = subprocess.run([*ls, *args], stdout=stdout, stderr=subprocess.PIPE, text=True,
                                    env=server.env(), timeout=120)  # fmt: skip
            assert listed.returncode == 1, (args, listed.returncode, listed.stderr)
            assert listed.stderr == "", (args, listed.stderr)
    finally:
        os.close(stdout)


def test_twistd_on_a_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [str(BIN / "twistd"), "-n", "--pidfile", "", "neophytos", "--data", str(tmp_path / "data"),
             "--ssh", f"tcp:{port}:interface=127.0.0.1", "--tls", "none"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
    output = r.stdout + r.stderr
    assert r.returncode != 0, output
    assert "Traceback" not in output and "CannotListenError" not in output, output
    assert f"cannot listen for SSH on tcp:{port}:interface=127.0.0.1: Address already in use" in output, output
    assert "--ssh" in output
    assert "SSH listening" not in output and "] SSH on" not in output, output  # nothing claimed it served


def test_twistd_logs_the_port_once_it_listens(server: RunningServer) -> None:
    log = server.log_text()
    assert f"SSH listening on 127.0.0.1:{server.ssh_port}" in log, log
    assert f"TLS listening on 127.0.0.1:{server.tls_port}" in log, log


def test_ctrl_c_at_a_prompt_ends_it_and_keeps_the_terminal(server: RunningServer, tmp_path: Path) -> None:
    """The trust question is asked on a terminal; Ctrl-C there ends the run (130), echo restored by getpass
    and input's own cleanup, not left to a second Ctrl-C."""
    import pty

    argv = [str(BIN / "neo-ls"), "--known-hosts", str(server.known_hosts), server.remote("t", scheme="tls")]
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI on the pty
        os.execve(argv[0], argv, server.env())
    seen = b""

    def read() -> bytes:
        ready, _, _ = select.select([fd], [], [], 0.1)
        try:
            return os.read(fd, 4096) if ready else b""
        except OSError:  # the child is gone
            return b""

    deadline = time.monotonic() + 60
    while b"[y/N]" not in seen and time.monotonic() < deadline:
        seen += read()
    assert b"[y/N]" in seen, seen
    # a person answers after reading: give the CLI time to be waiting in its read (a signal that lands between
    # the prompt and the read is seen only when the read returns: the interpreter's, not ours to fix)
    time.sleep(1.0)
    os.write(fd, b"\x03")  # Ctrl-C, as the terminal sends it: SIGINT to the foreground process
    end = time.monotonic() + 20
    status = None
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        seen += read()
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError(f"still asking 20 s after Ctrl-C: {seen!r}")
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 130, seen
    assert b"Traceback" not in seen, seen
