"""End to end with the real programs: ``twistd -n neophytos``, ``neo-push``, ``neo-pull`` and OpenSSH.

Real trees go in over SSH (conch), TLS and OpenSSH; they come back out and are compared byte for byte, with
modes, mtimes, symlinks and empty directories. Deltas are measured from ``--json``. Bad input (wrong
passwords, unknown and changed host keys, malformed frames, a killed client or server) must be refused
cleanly and must never cost the last snapshot.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support import BIN, PASSWORD, RunningServer, assert_clean, snapshot_of

if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
    pytest.skip("OpenSSH client not installed", allow_module_level=True)

OLD = 1_600_000_000  # a fixed past mtime (seconds): files this old are never "racy" for the files cache


def make_tree(root: Path) -> None:
    """Files of many sizes and modes, nested and empty directories, relative/absolute/dangling symlinks."""
    rng = random.Random(7)
    (root / "docs" / "deep" / "deeper").mkdir(parents=True)
    (root / "empty-dir" / "nested-empty").mkdir(parents=True)
    (root / "docs" / "a.txt").write_text("alpha\n" * 5000)
    (root / "docs" / "deep" / "b.bin").write_bytes(rng.randbytes(300_000))
    (root / "docs" / "deep" / "deeper" / "c").write_bytes(rng.randbytes(10))
    (root / "big.bin").write_bytes(rng.randbytes(3 * 1024 * 1024 + 17))
    (root / "empty").write_bytes(b"")
    (root / "dup1").write_bytes(b"same" * 50_000)
    (root / "dup2").write_bytes(b"same" * 50_000)
    (root / "ünïcödé name.txt").write_text("names are data")
    for i in range(200):
        (root / "docs" / f"small-{i:03}").write_bytes(rng.randbytes(rng.randrange(0, 5000)))
    os.symlink("docs/a.txt", root / "link")
    os.symlink("/etc/passwd", root / "abs-link")
    os.symlink("does/not/exist", root / "dangling")
    os.chmod(root / "docs" / "a.txt", 0o600)
    os.chmod(root / "big.bin", 0o755)
    os.chmod(root / "docs" / "deep", 0o750)
    age_tree(root)


def age_tree(root: Path) -> None:
    """Give every file and directory a distinct old mtime (symlinks keep theirs)."""
    items = sorted(root.rglob("*"))
    for n, p in enumerate(items):
        if not p.is_symlink():
            os.utime(p, ns=((OLD + n) * 10**9 + 123, (OLD + n) * 10**9 + 123))
    os.utime(root, ns=(OLD * 10**9, OLD * 10**9))


def run_json(server: RunningServer, program: str, *args: str, **kw: Any) -> dict[str, Any]:
    r = server.cli(program, "--json", *args, **kw)
    assert r.returncode == 0, f"{program} exited {r.returncode}: {r.stderr}\n{server.log_text()[-3000:]}"
    summary: dict[str, Any] = json.loads(r.stdout)
    return summary


def test_round_trip_over_ssh_with_json_summary(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    time.sleep(1.1)  # ctimes older than the files cache's one-second racy-timestamp guard
    first = run_json(server, "neo-push", "--accept-new-host-key", str(src), server.remote("docs"))
    for key in ("files_scanned", "files_changed", "bytes_sent", "bytes_received", "snapshot", "elapsed_s"):
        assert key in first, key
    assert first["snapshot"] == 1
    assert first["files_changed"] == 208
    # dup1 and dup2 share their chunk, and the big file dominates: roughly the tree's size went over the wire.
    assert 3_000_000 < first["bytes_sent"] < 5_000_000

    dest = tmp_path / "dest"
    pulled = run_json(server, "neo-pull", server.remote("docs"), str(dest))
    assert pulled["snapshot"] == 1 and pulled["files_changed"] == 208
    assert snapshot_of(dest) == snapshot_of(src)
    assert os.readlink(dest / "abs-link") == "/etc/passwd"  # restored as a link, never followed
    assert (dest / "empty-dir" / "nested-empty").is_dir()

    again = run_json(server, "neo-push", str(src), server.remote("docs"))
    assert again["snapshot"] == 2
    assert again["files_changed"] == 0  # the files cache: nothing was read
    assert again["bytes_sent"] < first["bytes_sent"] / 50

    # a pull into an up-to-date copy writes nothing and fetches nothing
    same = run_json(server, "neo-pull", server.remote("docs"), str(dest))
    assert same["files_changed"] == 0 and same["chunks_fetched"] == 0
    server.stop()
    log = server.log_text()
    assert "login: account=alice" in log and "commit: account=alice" in log
    assert "kex alg" not in log and "trying auth" not in log  # conch's chatter stays out by default
    assert_clean(server.log_text())


def test_delta_push_and_pull_move_only_changed_chunks(server: RunningServer, tmp_path: Path) -> None:
    size = 32 * 1024 * 1024
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(3)
    data = bytearray(rng.randbytes(size))
    (src / "vm.img").write_bytes(data)
    age_tree(src)
    run_json(server, "neo-push", "--accept-new-host-key", str(src), server.remote("vm"))
    stale = tmp_path / "stale"
    run_json(server, "neo-pull", server.remote("vm"), str(stale))

    for _ in range(10):  # ten scattered 100-byte edits and one 4 KiB insertion
        at = rng.randrange(0, size - 100)
        data[at : at + 100] = rng.randbytes(100)
    data[size // 2 : size // 2] = rng.randbytes(4096)
    (src / "vm.img").write_bytes(data)
    delta = run_json(server, "neo-push", str(src), server.remote("vm"))
    assert delta["files_changed"] == 1
    assert delta["bytes_sent"] < size * 0.05, delta  # ~11 chunks of ~32 KiB, not 32 MiB

    back = run_json(server, "neo-pull", server.remote("vm"), str(stale))
    assert (stale / "vm.img").read_bytes() == bytes(data)
    assert back["bytes_received"] < size * 0.05, back
    assert back["bytes_reused"] > size * 0.9


def test_tls_password_login_and_refusals(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("over tls")
    remote = server.remote("t", "tls")

    unknown = server.cli("neo-push", str(src), remote, env=server.env(NEO_PASSWORD=PASSWORD))
    assert unknown.returncode == 3 and "not known" in unknown.stderr, unknown.stderr

    ok = run_json(server, "neo-push", "--accept-new-host-key", str(src), remote, env=server.env(NEO_PASSWORD=PASSWORD))
    assert ok["snapshot"] == 1

    wrong = server.cli("neo-push", str(src), remote, env=server.env(NEO_PASSWORD="not the password"))
    assert wrong.returncode == 3 and "authentication failed" in wrong.stderr, wrong.stderr
    stdin = server.cli("neo-pull", "--password-stdin", remote, str(tmp_path / "dest"), input=PASSWORD + "\n")
    assert stdin.returncode == 0, stdin.stderr
    assert (tmp_path / "dest" / "f").read_text() == "over tls"

    # A different certificate on the same address is refused, whatever the flags say.
    pins = tmp_path / "config" / "neophytos" / "tls_known_hosts"
    line = pins.read_text().split()
    line[2] = "A" * 43 + "="
    pins.write_text(" ".join(line) + "\n")
    changed = server.cli("neo-push", "--accept-new-host-key", str(src), remote, env=server.env(NEO_PASSWORD=PASSWORD))
    assert changed.returncode == 3 and "CHANGED" in changed.stderr, changed.stderr
    server.stop()
    log = server.log_text()
    assert "login failed: account=alice" in log
    assert PASSWORD not in log and "not the password" not in log
    assert_clean(log)


def test_ssh_host_key_pinning_and_wrong_password(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    unknown = server.cli("neo-push", str(src), server.remote("t"))
    assert unknown.returncode == 3 and "not known" in unknown.stderr, unknown.stderr
    assert not server.known_hosts.exists() or server.known_hosts.read_text() == ""

    run_json(server, "neo-push", "--accept-new-host-key", str(src), server.remote("t"))
    pinned = server.known_hosts.read_text()
    assert f"[127.0.0.1]:{server.ssh_port} ssh-ed25519 " in pinned

    # Password authentication over SSH: right and wrong (no key offered).
    no_key = [str(BIN / "neo-push"), "--known-hosts", str(server.known_hosts), "--no-agent", str(src),
              server.remote("t")]  # fmt: skip
    env = server.env(NEO_PASSWORD=PASSWORD)
    assert subprocess.run(no_key, env=env, capture_output=True, timeout=120).returncode == 0
    env = server.env(NEO_PASSWORD="wrong")
    bad = subprocess.run(no_key, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 3, bad.stderr

    # The host key changes (another key pinned for this address): refused even with --accept-new-host-key.
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    fields = pinned.split()
    fields[2] = (other.with_suffix(".pub")).read_text().split()[1]
    server.known_hosts.write_text(" ".join(fields[:3]) + "\n")
    changed = server.cli("neo-push", "--accept-new-host-key", str(src), server.remote("t"))
    assert changed.returncode == 3 and "CHANGED" in changed.stderr, changed.stderr


def test_openssh_transport_and_plain_ssh_subsystem(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    ssh = (
        f"ssh -F /dev/null -i {server.key} -o IdentitiesOnly=yes -o BatchMode=yes "
        "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
    )
    pushed = run_json(server, "neo-push", "--ssh-command", ssh, str(src), server.remote("o"))
    assert pushed["snapshot"] == 1
    dest = tmp_path / "dest"
    run_json(server, "neo-pull", "--ssh-command", ssh, server.remote("o"), str(dest))
    assert snapshot_of(dest) == snapshot_of(src)
    server.stop()
    assert_clean(server.log_text())


def _tls_socket(server: RunningServer) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(server.data / "tls_cert.pem"))
    raw = socket.create_connection(("127.0.0.1", server.tls_port), timeout=20)
    return context.wrap_socket(raw, server_hostname="localhost")


def _read_until_closed(sock: ssl.SSLSocket) -> bytes:
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except (ssl.SSLError, OSError):
        pass
    return got


def test_malformed_frames_get_an_error_and_do_no_harm(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(100_000))
    age_tree(src)
    first = run_json(server, "neo-push", "--accept-new-host-key", str(src), server.remote("t"))

    attacks = [
        struct.pack(">I", 2**31) + b"x" * 100,  # a length far over MAX_FRAME
        struct.pack(">I", 0),  # an empty frame
        struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1",  # not msgpack
        struct.pack(">I", 3) + b"\x93\xa3zzz"[:3],  # an array of an unknown message type, cut short
        os.urandom(4096),
    ]
    for attack in attacks:
        with _tls_socket(server) as tls:
            tls.sendall(attack)
            reply = _read_until_closed(tls)
        assert reply == b"" or b"bad_" in reply or b"flow_control" in reply, reply[:200]
    for attack in attacks[:3]:
        r = subprocess.run(server.ssh("-s", "127.0.0.1", "neophytos"), input=attack, capture_output=True, timeout=30)
        assert r.returncode != 0
        assert b"bad_frame" in r.stdout or b"bad_message" in r.stdout, r.stdout[:200]

    # The server still serves, and the data is intact.
    dest = tmp_path / "dest"
    pulled = run_json(server, "neo-pull", server.remote("t"), str(dest))
    assert pulled["snapshot"] == first["snapshot"]
    assert (dest / "f").read_bytes() == (src / "f").read_bytes()
    server.stop()
    log = server.log_text()
    assert "protocol violation" in log
    assert_clean(log)


def _push_and_kill(server: RunningServer, src: Path, target: str, victim: str) -> None:
    """Start a long push and SIGKILL the client or the server once chunks are flowing."""
    proc = subprocess.Popen(
        [str(BIN / "neo-push"), "-i", str(server.key), "--known-hosts", str(server.known_hosts), "--no-progress",
         str(src), server.remote(target)],
        env=server.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    repo = server.data / "repo"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stored = sum(p.stat().st_size for p in repo.rglob("*.pack"))
        if stored > 80 * 1024 * 1024:
            break
        if proc.poll() is not None:
            raise AssertionError(f"the push ended before it could be killed: {proc.stderr.read()!r}")  # type: ignore[union-attr]
        time.sleep(0.02)
    if victim == "client":
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    else:
        server.kill()
        proc.wait(timeout=60)
        assert proc.returncode == 1, (proc.returncode, proc.stderr.read())  # type: ignore[union-attr]
        server.start()


@pytest.mark.parametrize("victim", ["client", "server"])
def test_killed_push_leaves_the_last_snapshot_intact(server: RunningServer, tmp_path: Path, victim: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep.txt").write_text("version one")
    age_tree(src)
    run_json(server, "neo-push", "--accept-new-host-key", str(src), server.remote("t"))

    (src / "keep.txt").write_text("version two, never committed")
    rng = random.Random(11)
    for i in range(4):
        (src / f"big{i}.bin").write_bytes(rng.randbytes(64 * 1024 * 1024))
    age_tree(src)
    _push_and_kill(server, src, "t", victim)

    dest = tmp_path / "dest"
    pulled = run_json(server, "neo-pull", server.remote("t"), str(dest))
    assert pulled["snapshot"] == 1
    assert sorted(os.listdir(dest)) == ["keep.txt"]
    assert (dest / "keep.txt").read_text() == "version one"

    # The next push completes and reuses what the killed one managed to store.
    done = run_json(server, "neo-push", str(src), server.remote("t"))
    assert done["snapshot"] == 2
    assert done["bytes_sent"] < 256 * 1024 * 1024 - 40 * 1024 * 1024, done
    full = tmp_path / "full"
    run_json(server, "neo-pull", server.remote("t"), str(full))
    assert snapshot_of(full) == snapshot_of(src)


def test_neo_admin_changes_apply_to_a_running_server(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("bob's")

    def admin(*args: str, stdin: str | None = None) -> None:
        r = subprocess.run(
            [str(BIN / "neo-admin"), "--data", str(server.data), "--bcrypt-rounds", "4", *args],
            input=stdin, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr

    def push_as_bob(password: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "neo-push"), "--known-hosts", str(server.known_hosts), "--accept-new-host-key", "--no-agent",
             "--json", str(src), f"ssh://bob@127.0.0.1:{server.ssh_port}/b"],
            env=server.env(NEO_PASSWORD=password), capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    assert push_as_bob("bob-pw-one-7f3a").returncode == 3  # no such account yet
    admin("account", "add", "bob", "--password-stdin", stdin="bob-pw-one-7f3a\n")
    assert push_as_bob("bob-pw-one-7f3a").returncode == 0, server.log_text()[-2000:]
    admin("account", "passwd", "bob", "--password-stdin", stdin="bob-pw-two-91c2\n")
    assert push_as_bob("bob-pw-one-7f3a").returncode == 3
    assert push_as_bob("bob-pw-two-91c2").returncode == 0

    # A removed key no longer logs in.
    run_json(server, "neo-push", "--accept-new-host-key", str(src), server.remote("a"))
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", f"{server.key}.pub"], capture_output=True, text=True
    ).stdout.split()[1]
    admin("key", "remove", "alice", fingerprint)
    refused = server.cli("neo-push", "--no-agent", str(src), server.remote("a"))
    assert refused.returncode == 3, refused.stderr
    server.stop()
    log = server.log_text()
    assert "bob-pw-one-7f3a" not in log and "bob-pw-two-91c2" not in log
    assert_clean(log)
