"""neo-push's --dry-run, --one-file-system, --exclude-caches / --exclude-if-present and --stdin, with the real
neo-push, neo-ls and neo-pull against a real ``twistd``."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import BIN, RunningServer

from neotwist.client.dirrules import SIGNATURE

if shutil.which("ssh-keygen") is None:
    pytest.skip("OpenSSH client not installed", allow_module_level=True)

MIB = 1024 * 1024


@pytest.fixture
def server(module_server: RunningServer) -> RunningServer:
    """One server for the module's tests (each uses targets of its own)."""
    return module_server


def _json(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr}"
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def _push(server: RunningServer, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return server.cli("neo-push", "--accept-new-host-key", *args, **kw)


def _paths(server: RunningServer, target: str) -> list[str]:
    listed = _json(server.cli("neo-ls", "--json", "-R", server.remote(target)))
    return sorted(e["path"] for e in listed["entries"])


def _targets(server: RunningServer) -> list[str]:
    listed = _json(server.cli("neo-ls", "--json", f"ssh://alice@127.0.0.1:{server.ssh_port}"))
    return [t["name"] for t in listed["targets"]]


def _cache_files(server: RunningServer) -> dict[str, bytes]:
    root = server.tmp / "cache"
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()} if root.exists() else {}


# --- --dry-run --------------------------------------------------------------------------------------------


def test_dry_run_tells_what_a_push_would_send_and_changes_nothing(server: RunningServer, tmp_path: Path) -> None:
    rng = random.Random(7)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "b.txt").write_text("bravo\n")
    (src / "sub" / "big.bin").write_bytes(rng.randbytes(3 * MIB))
    (src / os.fsdecode(b"odd\xff name")).write_text("not UTF-8\n")  # names that travel as escaped wire text
    (src / "back\\slash").write_text("backslash\n")
    remote = server.remote("dry")
    caches = _cache_files(server)  # other tests' (the server is the module's)

    # a target that does not exist: everything is new, and the dry run does not create it
    first = _json(_push(server, "--dry-run", "--json", str(src), remote))
    assert first["dry_run"] is True and first["target_exists"] is False and first["snapshot"] is None
    assert (first["files_new"], first["dirs_new"], first["files_modified"]) == (5, 1, 0)
    assert first["chunk_bytes_to_send"] == 3 * MIB + 12 + 10 + 10 and first["chunks_to_send"] > 10
    assert 0 < first["bytes_to_send"] <= first["chunk_bytes_to_send"] + 64 * first["chunks_to_send"]
    assert first["chunks_sent"] == 0
    assert "dry" not in _targets(server)
    assert _cache_files(server) == caches

    time.sleep(1.1)  # ctimes older than the files cache's one-second racy-timestamp guard: b.txt is remembered
    pushed = _json(_push(server, "--json", str(src), remote))
    assert pushed["snapshot"] == 1
    cache_before = _cache_files(server)
    assert len(cache_before) == len(caches) + 1

    # change a file (in the middle of the big one), add one, remove one
    data = bytearray((src / "sub" / "big.bin").read_bytes())
    data[MIB : MIB + 10] = b"0123456789"
    (src / "sub" / "big.bin").write_bytes(bytes(data))
    (src / "c.txt").write_text("charlie\n")
    (src / "a.txt").unlink()
    dry = _json(_push(server, "--dry-run", "--json", str(src), remote))
    assert dry["target_exists"] is True
    assert (dry["files_new"], dry["files_modified"], dry["files_unmodified"], dry["removed"]) == (1, 1, 3, 1)
    assert dry["dirs_unmodified"] == 1 and dry["files_changed"] == 2  # read: big.bin and c.txt (b.txt: cached)
    assert 0 < dry["chunk_bytes_to_send"] < MIB // 2  # the chunks around the change, and c.txt
    assert _cache_files(server) == cache_before
    human = _push(server, "--dry-run", str(src), remote)
    assert human.returncode == 0, human.stderr
    assert "dry run, nothing was sent" in human.stdout and "1 new, 1 modified, 3 unmodified" in human.stdout
    snaps = _json(server.cli("neo-ls", "--json", "--snapshots", remote))
    assert [s["id"] for s in snaps["snapshots"]] == [1]

    # the push that follows sends what the dry run said it would
    real = _json(_push(server, "--json", str(src), remote))
    assert real["snapshot"] == 2
    assert real["chunks_sent"] == dry["chunks_to_send"]
    assert real["chunk_bytes_sent"] == dry["chunk_bytes_to_send"]
    again = _json(_push(server, "--dry-run", "--json", str(src), remote))
    assert (again["files_new"], again["files_modified"], again["removed"], again["chunks_to_send"]) == (0, 0, 1, 0)
    # a sub-path the target does not have yet: everything under it is new, and nothing needs sending
    sub = _json(_push(server, "--dry-run", "--json", str(src / "sub"), remote + "/elsewhere"))
    assert (sub["listed"], sub["files_new"], sub["files_changed"], sub["chunks_to_send"]) == (True, 1, 1, 0)


# --- --one-file-system ------------------------------------------------------------------------------------


def _in_mount_namespace(server: RunningServer, mountpoint: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in a private mount namespace (an unprivileged user namespace) where a tmpfs is mounted at
    ``mountpoint`` holding the file ``inside``; the mount vanishes with the process."""
    script = 'mount -t tmpfs neotest "$1" && echo inside > "$1/inside" && shift && exec "$@"'
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", str(mountpoint), *argv],
        capture_output=True, text=True, timeout=300, env=server.env(),
    )  # fmt: skip


def test_one_file_system_keeps_the_mount_point_empty(server: RunningServer, tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed: no way to mount a file system for the test")
    src = tmp_path / "src"
    (src / "mnt").mkdir(parents=True)
    (src / "mnt" / "hidden-by-mount").write_text("under the mount point\n")
    (src / "top.txt").write_text("top\n")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount -t tmpfs neotest {src / 'mnt'}"], capture_output=True, text=True)  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()}")
    base = [str(BIN / "neo-push"), "-i", str(server.key), "--known-hosts", str(server.known_hosts),
            "--accept-new-host-key", "--json"]  # fmt: skip

    crossed = _in_mount_namespace(server, src / "mnt", *base, str(src), server.remote("fs-all"))
    assert crossed.returncode == 0, crossed.stderr
    assert "mnt/inside" in _paths(server, "fs-all")  # the mount is really there: without -x it is crossed

    for flag, target in (("-x", "fs-x"), ("--one-file-system", "fs-long")):
        kept = _in_mount_namespace(server, src / "mnt", *base, flag, str(src), server.remote(target))
        assert kept.returncode == 0, kept.stderr
        assert _paths(server, target) == ["", "mnt", "top.txt"]
    dest = tmp_path / "dest"
    pulled = server.cli("neo-pull", server.remote("fs-x"), str(dest))
    assert pulled.returncode == 0, pulled.stderr
    assert (dest / "mnt").is_dir() and not any((dest / "mnt").iterdir())
    assert (dest / "top.txt").read_text() == "top\n"


# --- --exclude-caches, --exclude-if-present ---------------------------------------------------------------


def test_exclude_caches_and_if_present_keep_the_directory_and_its_tag(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for d in ("cache", "notcache", "linked", "keep/sub", "plain/deeper"):
        (src / d).mkdir(parents=True)
    (src / "cache" / "CACHEDIR.TAG").write_bytes(SIGNATURE + b"\n# This file is a cache directory tag.\n")
    (src / "cache" / "blob").write_bytes(b"x" * 1000)
    (src / "notcache" / "CACHEDIR.TAG").write_bytes(b"Signature: not the right one\n")
    (src / "notcache" / "data").write_text("kept\n")
    (src / "real.tag").write_bytes(SIGNATURE)
    (src / "linked" / "CACHEDIR.TAG").symlink_to("../real.tag")  # a symlink is no tag
    (src / "linked" / "data").write_text("kept\n")
    (src / "keep" / ".nobackup").write_text("")
    (src / "keep" / "secret").write_text("left out\n")
    (src / "keep" / "sub" / "x").write_text("left out\n")
    (src / "plain" / "deeper" / ".skipme").write_text("")
    (src / "plain" / "deeper" / "y").write_text("left out\n")
    (src / "plain" / "z").write_text("kept\n")

    pushed = _json(_push(server, "--json", "--exclude-caches", "--exclude-if-present", ".nobackup",
                         "--exclude-if-present", ".skipme", str(src), server.remote("tags")))  # fmt: skip
    assert pushed["files_filtered"] == 4  # cache/blob, keep/secret, keep/sub, plain/deeper/y
    assert _paths(server, "tags") == [
        "", "cache", "cache/CACHEDIR.TAG", "keep", "keep/.nobackup", "linked", "linked/CACHEDIR.TAG", "linked/data",
        "notcache", "notcache/CACHEDIR.TAG", "notcache/data", "plain", "plain/deeper", "plain/deeper/.skipme",
        "plain/z", "real.tag",
    ]  # fmt: skip
    # without the options, everything goes
    everything = _json(_push(server, "--json", str(src), server.remote("tags-all")))
    assert everything["files_filtered"] == 0 and "cache/blob" in _paths(server, "tags-all")
    bad = _push(server, "--exclude-if-present", "a/b", str(src), server.remote("tags"))
    assert bad.returncode == 2 and "file name" in bad.stderr


# --- --stdin ----------------------------------------------------------------------------------------------


def _stdin_push(server: RunningServer, data: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(BIN / "neo-push"), "-i", str(server.key), "--known-hosts", str(server.known_hosts),
         "--accept-new-host-key", "--stdin", *args],
        input=data, capture_output=True, timeout=300, env=server.env(),
    )  # fmt: skip


def _bjson(r: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr.decode()}"
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def test_stdin_is_stored_as_one_file_and_a_second_dump_sends_little(server: RunningServer, tmp_path: Path) -> None:
    rng = random.Random(11)
    dump = b"".join(b"INSERT INTO t VALUES (%d, '%s');\n" % (i, rng.randbytes(40).hex().encode())
                    for i in range(60_000))  # fmt: skip
    remote = server.remote("dumps")
    first = _bjson(_stdin_push(server, dump, "--json", "--stdin-filename", "db/mydb.sql", remote))
    assert first["snapshot"] == 1 and first["bytes_read"] == len(dump) and first["files"] == 1
    # a second dump with a few rows changed sends only the chunks around them
    changed = dump.replace(b"(30000,", b"(30000, 'x',").replace(b"(100,", b"(100, 'y',")
    second = _bjson(_stdin_push(server, changed, "--json", "--tag", "nightly", "--stdin-filename", "db/mydb.sql",
                                remote))  # fmt: skip
    assert second["snapshot"] == 2
    snaps = _json(server.cli("neo-ls", "--json", "--snapshots", remote))["snapshots"]
    assert (snaps[-1]["source"], snaps[-1]["tags"]) == ("(standard input) as db/mydb.sql", ["nightly"])
    assert second["chunk_bytes_sent"] < len(dump) // 20, second
    # a dry run of a third: it would send as little, and commits nothing
    dry = _bjson(_stdin_push(server, changed + b"-- end\n", "--json", "--dry-run", "--stdin-filename",
                             "db/mydb.sql", remote))  # fmt: skip
    assert dry["dry_run"] is True and dry["snapshot"] is None and 0 < dry["chunk_bytes_to_send"] < len(dump) // 20
    # what comes back is the second dump, byte for byte, private to its owner
    dest = tmp_path / "dest"
    pulled = server.cli("neo-pull", remote, str(dest))
    assert pulled.returncode == 0, pulled.stderr
    assert (dest / "db" / "mydb.sql").read_bytes() == changed
    assert (dest / "db" / "mydb.sql").stat().st_mode & 0o777 == 0o600
    # the default name is "stdin"
    _bjson(_stdin_push(server, b"hello\n", "--json", server.remote("dumps-default")))
    assert _paths(server, "dumps-default") == ["stdin"]


def test_empty_stdin_is_refused_and_commits_nothing(server: RunningServer) -> None:
    _bjson(_stdin_push(server, b"first\n", "--json", "--stdin-filename", "x.sql", server.remote("empty")))
    empty = _stdin_push(server, b"", "--stdin-filename", "x.sql", server.remote("empty"))
    assert empty.returncode == 1 and b"standard input was empty" in empty.stderr, empty.stderr
    snaps = _json(server.cli("neo-ls", "--json", "--snapshots", server.remote("empty")))
    assert [s["id"] for s in snaps["snapshots"]] == [1]
    # a first push that gets nothing leaves no target behind
    fresh = _stdin_push(server, b"", server.remote("never-made"))
    assert fresh.returncode == 1, fresh.stderr
    assert "never-made" not in _targets(server)
    # --stdin takes REMOTE alone, and refuses what only a directory push can do
    both = _stdin_push(server, b"x", "/tmp", server.remote("empty"))
    assert both.returncode == 2 and b"only REMOTE" in both.stderr
    for args in (["--delete"], ["--exclude", "*.tmp"], ["--one-file-system"]):
        refused = _stdin_push(server, b"x", *args, server.remote("empty"))
        assert refused.returncode == 2, (args, refused.stderr)


PEAK_OF_CHILD = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[1:])\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)
"""Runs its arguments and prints their peak RSS (KiB) as the last line of stderr: the one child it waits for."""


def test_a_large_stream_is_pushed_in_bounded_memory(server: RunningServer, tmp_path: Path) -> None:
    """400 MiB through stdin; neo-push's peak RSS stays far below it (the stream is never held whole)."""
    size = 400 * MIB
    process = subprocess.Popen(
        [sys.executable, "-c", PEAK_OF_CHILD, str(BIN / "neo-push"), "-i", str(server.key),
         "--known-hosts", str(server.known_hosts), "--accept-new-host-key", "--json", "--stdin",
         "--stdin-filename", "big.bin", server.remote("big")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=server.env(),
    )  # fmt: skip
    assert process.stdin is not None
    # each MiB: 256 KiB never seen before, then 768 KiB repeated (the upload and the dedup both get work)
    repeated = os.urandom(3 * MIB // 8).hex().encode()
    for _ in range(size // MIB):
        process.stdin.write(os.urandom(MIB // 4) + repeated)
    process.stdin.close()
    process.stdin = None  # closed: communicate only reads
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err.decode()
    summary = json.loads(out)
    assert summary["bytes_read"] == size and summary["files"] == 1
    peak_kib = int(err.decode().splitlines()[-1])
    assert peak_kib < 160 * 1024, f"neo-push peaked at {peak_kib // 1024} MiB of RSS"
    listed = _json(server.cli("neo-ls", "--json", server.remote("big")))
    assert [(e["path"], e["size"]) for e in listed["entries"] if e["path"]] == [("big.bin", size)]


# --- encrypted targets ------------------------------------------------------------------------------------


def test_dry_run_and_stdin_on_an_encrypted_target(server: RunningServer, tmp_path: Path) -> None:
    env = server.env(NEO_PASSPHRASE="a long passphrase for tests")
    made = subprocess.run([str(BIN / "neo-key"), "init", "--kdf-memory", "8", "--kdf-iterations", "1"],
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert made.returncode == 0 or "exists" in made.stderr, made.stderr
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha\n")
    (src / "b.bin").write_bytes(random.Random(3).randbytes(MIB))
    remote = server.remote("enc-dry")
    _json(_push(server, "--json", "--encrypt", str(src), remote, env=env))
    (src / "a.txt").write_text("alpha, changed\n")
    dry = _json(_push(server, "--json", "--dry-run", "--no-cache", str(src), remote, env=env))
    assert dry["encrypted"] is True
    assert (dry["files_new"], dry["files_modified"], dry["files_unmodified"], dry["removed"]) == (0, 1, 1, 0)
    assert dry["chunks_to_send"] == 1 and dry["chunk_bytes_to_send"] == len("alpha, changed\n")
    assert dry["bytes_to_send"] > dry["chunk_bytes_to_send"]  # sealed: nonce and tag on top

    dump = random.Random(5).randbytes(2 * MIB)
    r = subprocess.run(
        [str(BIN / "neo-push"), "-i", str(server.key), "--known-hosts", str(server.known_hosts), "--json",
         "--stdin", "--stdin-filename", "dump.bin", remote],
        input=dump, capture_output=True, timeout=300, env=env,
    )  # fmt: skip
    assert _bjson(r)["encrypted"] is True
    dest = tmp_path / "dest"
    pulled = server.cli("neo-pull", remote, str(dest), env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert (dest / "dump.bin").read_bytes() == dump and (dest / "a.txt").read_text() == "alpha\n"
