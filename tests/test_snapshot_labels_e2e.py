"""Snapshot labels end to end: real ``twistd``, real ``neo-push`` / ``neo-ls`` / ``neo-prune`` / ``neo-key``.

- a push records the host, the directory pushed and its ``--tag``s; a push that exits 23 records an incomplete
  snapshot with its warnings count; ``neo-ls --snapshots`` shows all of it (human and ``--json``) and filters by
  ``--tag`` as restic does;
- ``neo-prune --keep-tag`` keeps tagged snapshots whatever the other rules say, ``--keep-yearly`` keeps the newest
  of each UTC year;
- in an encrypted target the same works (decrypted on the client), while the server's files hold none of the
  host name, source path or tags (a plaintext target on the same server is the control: there they are found).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support import BIN, RunningServer

if shutil.which("ssh-keygen") is None:
    pytest.skip("OpenSSH tools not installed", allow_module_level=True)

PASSPHRASE = "a long passphrase for tests"
FAST_KDF = ("--kdf-memory", "8", "--kdf-iterations", "1")


def cli(server: RunningServer, program: str, *args: str, code: int = 0, **env: str) -> str:
    r = server.cli(program, "--accept-new-host-key", *args, env=server.env(**env))
    assert r.returncode == code, f"{program} exited {r.returncode}, not {code}: {r.stderr}\n{server.log_text()[-2000:]}"
    return r.stdout


def push(server: RunningServer, src: Path, target: str, *args: str, code: int = 0, **env: str) -> dict[str, Any]:
    out = cli(server, "neo-push", "--json", *args, str(src), server.remote(target), code=code, **env)
    summary: dict[str, Any] = json.loads(out)
    return summary


def snapshots(server: RunningServer, target: str, *args: str, **env: str) -> list[dict[str, Any]]:
    out = json.loads(cli(server, "neo-ls", "--json", "--snapshots", *args, server.remote(target), **env))
    listed: list[dict[str, Any]] = out["snapshots"]
    return listed


def three_pushes(server: RunningServer, tmp_path: Path, target: str, *extra: str, **env: str) -> Path:
    """Snapshot 1 tagged daily, db and keep from host box-one; snapshot 2 tagged daily, incomplete (a socket
    cannot be stored); snapshot 3 untagged. Returns the source directory."""
    src = tmp_path / f"src-of-{target}"
    src.mkdir()
    (src / "a.txt").write_text("one\n")
    push(server, src, target, "--tag", "daily", "--tag", "db,keeper-x9q", "--hostname", "box-one", *extra, **env)
    (src / "a.txt").write_text("two\n")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "app.sock"))
    try:
        summary = push(server, src, target, "--tag", "daily", code=23, **env)
    finally:
        sock.close()
        os.unlink(src / "app.sock")
    assert summary["warnings"] == 1, summary
    (src / "a.txt").write_text("three\n")
    push(server, src, target, **env)
    return src


def check_listing(server: RunningServer, target: str, src: Path, **env: str) -> None:
    listed = snapshots(server, target, **env)
    assert [s["id"] for s in listed] == [1, 2, 3]
    host = socket.gethostname()
    assert [(s["host"], s["source"], s["tags"]) for s in listed] == [
        ("box-one", str(src), ["daily", "db", "keeper-x9q"]),
        (host, str(src), ["daily"]),
        (host, str(src), []),
    ]
    assert [(s["incomplete"], s["warnings"]) for s in listed] == [(False, 0), (True, 1), (False, 0)]

    human = cli(server, "neo-ls", "--snapshots", server.remote(target), **env)
    header, first, second, third = human.splitlines()
    assert header.split() == ["ID", "TIME", "FILES", "CHANGED", "DELETED", "ADDED", "HOST", "TAGS", "PUSHED", "SOURCE"]
    assert "box-one" in first and "daily,db,keeper-x9q" in first and str(src) in first and "incomplete" not in first
    assert "incomplete (1 warnings)" in second and host in second
    assert "incomplete" not in third

    # restic's filter: every tag of one --tag, any of the --tag options
    assert [s["id"] for s in snapshots(server, target, "--tag", "daily", **env)] == [1, 2]
    assert [s["id"] for s in snapshots(server, target, "--tag", "daily,db", **env)] == [1]
    assert [s["id"] for s in snapshots(server, target, "--tag", "db", "--tag", "nothing", **env)] == [1]
    assert snapshots(server, target, "--tag", "nothing", **env) == []


def test_tags_host_source_and_incomplete_snapshots_on_a_plaintext_target(server: RunningServer, tmp_path: Path) -> None:
    src = three_pushes(server, tmp_path, "plain")
    check_listing(server, "plain", src)

    # refusals are usage errors (exit 2) with one line, before anything is sent
    r = server.cli("neo-push", "--accept-new-host-key", "--tag", "bad\x1b[2K", str(src), server.remote("plain"))
    assert r.returncode == 2 and "control character" in r.stderr, r.stderr
    r = server.cli("neo-ls", "--accept-new-host-key", "--tag", "daily", server.remote("plain"))
    assert r.returncode == 2 and "--snapshots" in r.stderr, r.stderr

    # --keep-yearly: all three are in one UTC year, so only the newest is its year's keep
    dry = json.loads(cli(server, "neo-prune", "--json", "--dry-run", "--keep-yearly", "1", server.remote("plain")))
    assert [(d["id"], d["keep"], d["reasons"]) for d in dry["snapshots"]] == [
        (1, False, []), (2, False, []), (3, True, ["latest", "yearly"])
    ]  # fmt: skip
    # --keep-tag keeps the tagged snapshot that no other rule would
    keep = ("--keep-last", "1", "--keep-tag", "keeper-x9q")
    pruned = json.loads(cli(server, "neo-prune", "--json", *keep, server.remote("plain")))
    assert [(d["id"], d["keep"], d["reasons"]) for d in pruned["snapshots"]] == [
        (1, True, ["tag"]), (2, False, []), (3, True, ["latest", "last"])
    ]  # fmt: skip
    assert [s["id"] for s in snapshots(server, "plain")] == [1, 3]


def files_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_an_encrypted_target_keeps_its_labels_from_the_server(server: RunningServer, tmp_path: Path) -> None:
    env = {"NEO_PASSPHRASE": PASSPHRASE}
    r = subprocess.run([str(BIN / "neo-key"), "init", *FAST_KDF], capture_output=True, text=True, timeout=60,
                       env=server.env(**env))  # fmt: skip
    assert r.returncode == 0, r.stderr
    markers = [b"box-one", b"src-of-sealed", b"keeper-x9q"]
    src = three_pushes(server, tmp_path, "sealed", "--encrypt", **env)
    check_listing(server, "sealed", src, **env)

    # the client reads the sealed tags and names the snapshots to keep
    keep = ("--keep-last", "1", "--keep-tag", "keeper-x9q")
    pruned = json.loads(cli(server, "neo-prune", "--json", *keep, server.remote("sealed"), **env))
    assert [(d["id"], d["keep"]) for d in pruned["snapshots"]] == [(1, True), (2, False), (3, True)]
    assert [s["tags"] for s in snapshots(server, "sealed", **env)] == [["daily", "db", "keeper-x9q"], []]

    # the server never saw the host, the source path or the tags; a plaintext target's labels show the search works
    server.stop()
    stored = files_bytes(server.data)
    assert all(m not in stored for m in markers), [m for m in markers if m in stored]
    server.start()
    three_pushes(server, tmp_path, "control")
    server.stop()
    stored = files_bytes(server.data)
    assert b"src-of-control" in stored and b"box-one" in stored and b"keeper-x9q" in stored
    server.start()
