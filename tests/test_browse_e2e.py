"""Browsing history end to end: neo-diff, neo-find, neo-cat / neo-pull --stdout and neo-mount with a real
``twistd``, real OpenSSH keys and the real CLIs, on a plaintext and an encrypted target alike.

One tree is pushed three times (a first snapshot; additions, removals, content, type, link and metadata-only
changes; one more file); each command is checked against what the local tree was at each push: bytes,
modes, mtimes, owners, xattrs, link targets, and names holding terminal controls shown escaped.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import BIN, RunningServer, snapshot_of
from test_encryption_e2e import _flip_chunk, init_key, key_env, server_path

if shutil.which("ssh-keygen") is None:
    pytest.skip("OpenSSH tools not installed", allow_module_level=True)

OLD = 1_600_000_000
EVIL = "evil\x1b]0;pwned\x07\rname.txt"  # an OSC title sequence and a CR in a file name
BIG = random.Random(5).randbytes(9 * 1024 * 1024 + 12345)  # two get segments, over the mount's cache; incompressible


@pytest.fixture(scope="module", params=["plain", "encrypted"])
def pushed(request: pytest.FixtureRequest, module_server: RunningServer, tmp_path_factory: Any) -> Iterator[Any]:
    """A target pushed three times; yields (server, remote, env, {snapshot id: local tree copy})."""
    server = module_server
    kind = request.param
    env = key_env(server)
    target = f"browse-{kind}"
    if kind == "encrypted" and not (server.tmp / "config" / "neophytos" / "key").exists():
        init_key(server)
    work = tmp_path_factory.mktemp(kind)
    src = work / "src"
    (src / "docs" / "reports").mkdir(parents=True)
    (src / "docs" / "reports" / "q3.ods").write_bytes(b"q3 numbers\n" * 100)
    (src / "docs" / "notes.txt").write_text("first notes\n")
    (src / "big.bin").write_bytes(BIG)
    (src / "gone.txt").write_text("to be removed\n")
    (src / "becomes-dir").write_text("a file first\n")
    (src / "perm.txt").write_text("mode and xattr change only\n")
    (src / EVIL).write_text("controls in my name\n")
    os.symlink("docs/notes.txt", src / "link")
    for p in src.rglob("*"):
        if not p.is_symlink():
            os.utime(p, ns=(OLD * 10**9, OLD * 10**9))
    remote = server.remote(target)
    trees: dict[int, Path] = {}

    def push(*extra: str) -> int:
        r = server.cli("neo-push", "--json", "--accept-new-host-key", "--delete", *extra, str(src), remote, env=env)
        assert r.returncode == 0, r.stderr
        sid = int(json.loads(r.stdout)["snapshot"])
        copy = work / f"at-{sid}"
        shutil.copytree(src, copy, symlinks=True)
        trees[sid] = copy
        return sid

    push(*(["--encrypt"] if kind == "encrypted" else []))
    time.sleep(1.1)  # snapshots a second apart: each has its own TIME
    (src / "gone.txt").unlink()
    (src / "docs" / "notes.txt").write_text("second notes, longer than the first\n")
    (src / "docs" / "new.txt").write_text("added\n")
    (src / EVIL).write_text("controls in my name, changed\n")
    (src / "becomes-dir").unlink()
    (src / "becomes-dir").mkdir()
    (src / "becomes-dir" / "inside.txt").write_text("inside\n")
    os.chmod(src / "perm.txt", 0o600)
    os.setxattr(src / "perm.txt", "user.comment", b"tagged")
    (src / "link").unlink()
    os.symlink("docs/new.txt", src / "link")
    for p in [src / "becomes-dir", src / "becomes-dir" / "inside.txt", src / "docs" / "new.txt"]:
        os.utime(p, ns=((OLD + 5) * 10**9, (OLD + 5) * 10**9))
    os.utime(src / "docs" / "notes.txt", ns=((OLD + 7) * 10**9, (OLD + 7) * 10**9))
    push()
    time.sleep(1.1)
    (src / "docs" / "reports" / "q4.ods").write_bytes(b"q4 numbers\n" * 50)
    os.utime(src / "docs" / "reports" / "q4.ods", ns=((OLD + 9) * 10**9, (OLD + 9) * 10**9))
    push("--tag", "quarter,q4")
    yield server, remote, env, trees, kind


def cli(server: RunningServer, env: dict[str, str], program: str, *args: str, **kw: Any) -> Any:
    return server.cli(program, *args, env=env, **kw)


def ok_json(server: RunningServer, env: dict[str, str], program: str, *args: str) -> Any:
    r = cli(server, env, program, "--json", *args)
    assert r.returncode == 0, f"{program} exited {r.returncode}: {r.stderr}"
    return json.loads(r.stdout)


# --- neo-diff ---------------------------------------------------------------------------------------------------


def test_diff_names_every_kind_of_change(pushed: Any) -> None:
    server, remote, env, trees, _ = pushed
    first, second, _third = sorted(trees)
    d = ok_json(server, env, "neo-diff", remote, str(first), str(second))
    assert (d["from"]["id"], d["to"]["id"]) == (first, second)
    assert [(a["path"], a["kind"], a["size"]) for a in d["added"]] == [
        ("becomes-dir/inside.txt", "f", 7), ("docs/new.txt", "f", 6),
    ]  # fmt: skip
    assert [(a["path"], a["size"]) for a in d["removed"]] == [("gone.txt", 14)]
    changed = {c["path"]: c for c in d["changed"]}
    assert set(changed) == {"becomes-dir", "docs/notes.txt", "link", EVIL}
    assert (changed["becomes-dir"]["old_kind"], changed["becomes-dir"]["kind"]) == ("f", "d")
    notes = changed["docs/notes.txt"]
    assert (notes["size_before"], notes["size_after"]) == (12, 36)
    assert changed["link"]["changes"]["link"] == ["docs/notes.txt", "docs/new.txt"]
    meta = {m["path"]: m for m in d["metadata"]}
    assert set(meta) == {"perm.txt"}, meta  # directories whose mtime followed their entries are not listed
    assert meta["perm.txt"]["changes"]["mode"] == [0o644, 0o600]
    assert meta["perm.txt"]["changes"]["xattrs"] == [[], ["user.comment"]]
    s = d["summary"]
    assert (s["added"], s["removed"], s["changed"], s["type_changed"], s["metadata"]) == (2, 1, 3, 1, 1)
    assert d["not_compared"] == []

    # latest~N and TIMEs name the same snapshots; --no-metadata leaves out the U lines
    again = ok_json(server, env, "neo-diff", "--no-metadata", remote, "latest~2", "latest~1")
    assert again["metadata"] == [] and again["added"] == d["added"] and again["changed"] == d["changed"]

    # NEO_REPOSITORY names REMOTE when only the two snapshots are given
    r = cli(server, {**env, "NEO_REPOSITORY": remote}, "neo-diff", "--json", str(first), str(second))
    assert r.returncode == 0 and json.loads(r.stdout)["added"] == d["added"], r.stderr
    # a sub-path compares only below it, with paths relative to it
    sub = ok_json(server, env, "neo-diff", remote + "/docs", str(second), "latest")
    assert [a["path"] for a in sub["added"]] == ["reports/q4.ods"] and not sub["removed"] and not sub["changed"]


def test_diff_human_output_and_errors(pushed: Any) -> None:
    server, remote, env, trees, _ = pushed
    first, second, _third = sorted(trees)
    r = cli(server, env, "neo-diff", remote, str(first), str(second))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"comparing snapshot {first} (")
    assert "+        7 B  becomes-dir/inside.txt" in lines
    assert "-       14 B  gone.txt" in lines
    assert any(line.startswith("T ") and "becomes-dir/" in line and "(file -> directory)" in line for line in lines)
    assert any(line.startswith("U ") and "perm.txt" in line and "mode rw-r--r-- -> rw-------" in line for line in lines)
    assert lines[-1].startswith("2 added, 1 removed, 4 changed, 1 metadata only;")
    # the file with controls in its name: shown escaped, as ls -b does
    assert "\x1b" not in r.stdout and "\r" not in r.stdout
    assert any(line.startswith("M ") and "evil\\033]0;pwned\\a\\rname.txt" in line for line in lines)
    # usage: exit 2 before connecting; a snapshot that is not there: exit 1 with the ones that are
    bad = cli(server, env, "neo-diff", remote, "1", "yesterday-ish")
    assert bad.returncode == 2 and "names no snapshot" in bad.stderr
    missing = cli(server, env, "neo-diff", remote, "1", "999")
    assert missing.returncode == 1 and "there is no snapshot 999" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


# --- neo-find ---------------------------------------------------------------------------------------------------


def test_find_across_snapshots(pushed: Any) -> None:
    server, remote, env, trees, _ = pushed
    first, second, third = sorted(trees)
    f = ok_json(server, env, "neo-find", remote, "*.txt")
    assert f["snapshots_searched"] == [first, second, third]
    found = {m["path"]: m["versions"] for m in f["matches"]}
    assert set(found) == {"docs/notes.txt", "docs/new.txt", "gone.txt", "perm.txt", "becomes-dir/inside.txt", EVIL}
    assert [v["snapshots"] for v in found["gone.txt"]] == [[first]]
    notes = found["docs/notes.txt"]
    assert [(v["size"], v["snapshots"]) for v in notes] == [(12, [first]), (36, [second, third])]
    assert notes[1]["mtime_ns"] == (OLD + 7) * 10**9
    assert [(v["mode"], v["snapshots"]) for v in found["perm.txt"]] == [(0o644, [first]), (0o600, [second, third])]

    # a path pattern with **, a type, a range and ignoring case
    ods = ok_json(server, env, "neo-find", remote, "docs/**/*.ODS", "-I", "--type", "f")
    assert [(m["path"], m["versions"][0]["snapshots"]) for m in ods["matches"]] == [
        ("docs/reports/q3.ods", [first, second, third]), ("docs/reports/q4.ods", [third]),
    ]  # fmt: skip
    assert ok_json(server, env, "neo-find", remote, "*.ODS")["matches"] == []  # case counts without -I
    last = ok_json(server, env, "neo-find", "--last", "1", remote, "gone.txt", "becomes-dir")
    assert last["snapshots_searched"] == [third]
    assert [(m["path"], m["versions"][0]["kind"]) for m in last["matches"]] == [("becomes-dir", "d")]
    ranged = ok_json(server, env, "neo-find", "--from", str(first), "--to", "latest~1", remote, "becomes-dir")
    assert [v["kind"] for v in ranged["matches"][0]["versions"]] == ["f", "d"]
    tagged = ok_json(server, env, "neo-find", "--tag", "q4", "--tag", "nothing-so", remote, "*.ods")
    assert tagged["snapshots_searched"] == [third] and len(tagged["matches"]) == 2  # sealed tags too
    none = cli(server, env, "neo-find", "--tag", "nothing-so", remote, "*.ods")
    assert none.returncode == 1 and "no snapshot in the range searched has the tags nothing-so" in none.stderr
    dirs = ok_json(server, env, "neo-find", remote, "docs/")
    assert [m["path"] for m in dirs["matches"]] == ["docs"]

    # human output: versions with the snapshots that hold them, names escaped
    r = cli(server, env, "neo-find", remote, "*.txt")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\r" not in r.stdout and "evil\\033]0;pwned\\a\\rname.txt" in r.stdout
    assert f"snapshots {second}-{third} (latest)" in r.stdout
    assert r.stdout.splitlines()[-1].startswith("6 path(s) in 3 snapshot(s) searched")
    # with NEO_REPOSITORY every argument is a pattern
    r = cli(server, {**env, "NEO_REPOSITORY": remote}, "neo-find", "--json", "q?.ods")
    assert r.returncode == 0, r.stderr
    assert [m["path"] for m in json.loads(r.stdout)["matches"]] == ["docs/reports/q3.ods", "docs/reports/q4.ods"]


# --- neo-cat and neo-pull --stdout ---------------------------------------------------------------------------------


def test_cat_writes_verified_bytes(pushed: Any) -> None:
    server, remote, env, trees, _ = pushed
    first, second, _third = sorted(trees)
    r = subprocess.run(
        [str(BIN / "neo-cat"), "-i", str(server.key), "--known-hosts", str(server.known_hosts), remote, "big.bin"],
        capture_output=True, env=env, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == BIG  # several segments, in order
    old = cli(server, env, "neo-cat", "--snapshot", str(first), remote, "docs/notes.txt")
    assert (old.returncode, old.stdout) == (0, "first notes\n")
    by_spec = cli(server, env, "neo-cat", "--snapshot", "latest~2", remote + "/docs", "notes.txt")
    assert by_spec.stdout == "first notes\n"
    gone = cli(server, env, "neo-cat", "--snapshot", str(first), remote + "/gone.txt")
    assert gone.stdout == "to be removed\n"
    from_env = cli(server, {**env, "NEO_REPOSITORY": remote + "/docs"}, "neo-cat", "--at", "@1", "notes.txt")
    assert from_env.returncode == 1 and "no snapshot was taken at or before @1" in from_env.stderr
    assert cli(server, env, "neo-cat", "--at", "5", remote, "big.bin").returncode == 2  # a TIME, not an id
    pulled = cli(server, env, "neo-pull", "--stdout", "--snapshot", str(second), remote + "/docs/notes.txt")
    assert (pulled.returncode, pulled.stdout) == (0, "second notes, longer than the first\n"), pulled.stderr
    at = cli(server, env, "neo-pull", "--stdout", "--at", f"@{int(time.time()) + 60}", remote + "/docs/new.txt")
    assert at.stdout == "added\n"

    out = trees[first].parent / "q3-copy.ods"
    summary = ok_json(server, env, "neo-cat", "-o", str(out), remote, "docs/reports/q3.ods")
    assert out.read_bytes() == b"q3 numbers\n" * 100 and summary["bytes_written"] == 1100

    # what is not one file: one line and exit 1; usage errors exit 2
    d = cli(server, env, "neo-cat", remote, "docs")
    assert d.returncode == 1 and "is a directory" in d.stderr and d.stdout == ""
    missing = cli(server, env, "neo-cat", remote, "docs/nothing-here")
    assert missing.returncode == 1 and "nothing-here" in missing.stderr
    link = cli(server, env, "neo-cat", remote, "link")
    assert link.returncode == 1 and "is a symlink to docs/new.txt" in link.stderr
    gone_now = cli(server, env, "neo-cat", remote, "gone.txt")
    assert gone_now.returncode == 1
    assert cli(server, env, "neo-cat", "--json", remote, "big.bin").returncode == 2
    assert cli(server, env, "neo-pull", "--stdout", remote + "/big.bin", "/tmp/x").returncode == 2
    # a reader that goes away early: no traceback
    head = subprocess.run(
        f"'{BIN / 'neo-cat'}' -i '{server.key}' --known-hosts '{server.known_hosts}' {remote} big.bin | head -c 10",
        shell=True, capture_output=True, env=env, timeout=120,
    )  # fmt: skip
    assert head.stdout == BIG[:10] and b"Traceback" not in head.stderr


# --- neo-mount ------------------------------------------------------------------------------------------------------


def _fuse_reason() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine (modprobe fuse)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (apt install fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as e:
        return f"mfusepy cannot load libfuse3 here: {e}"
    return None


def in_mounts(path: Path) -> bool:
    """Whether ``path`` is a mount point, by the kernel's table (a FUSE mount whose process died cannot even be
    stat-ed, so os.path.ismount says no)."""
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


class Mounted:
    """A running neo-mount (with --json: its first line says it is mounted)."""

    def __init__(self, server: RunningServer, env: dict[str, str], remote: str, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self.process = subprocess.Popen(
            [str(BIN / "neo-mount"), "-i", str(server.key), "--known-hosts", str(server.known_hosts), "--json",
             "--cache-size", "8MiB", remote, str(mountpoint)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, self.process.stderr.read() if self.process.stderr else ""
        self.hello = json.loads(line)
        assert self.hello["message_type"] == "mounted" and in_mounts(mountpoint)

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, out, err

    def ensure_gone(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if in_mounts(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False)


def test_mount_shows_every_snapshot(pushed: Any, tmp_path: Path) -> None:
    reason = _fuse_reason()
    if reason is not None:
        pytest.skip(reason)
    server, remote, env, trees, kind = pushed
    first, second, third = sorted(trees)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = Mounted(server, env, remote, mnt)
    try:
        assert m.hello["snapshots"] == 3 and m.hello["encrypted"] == (kind == "encrypted")
        assert sorted(os.listdir(mnt)) == ["by-time", "latest", "snapshots", "tags"]
        assert sorted(os.listdir(mnt / "tags")) == ["q4", "quarter"] and os.listdir(mnt / "tags" / "q4") == [str(third)]
        assert os.readlink(mnt / "tags" / "q4" / str(third)) == f"../../snapshots/{third}"
        assert (mnt / "tags" / "quarter" / str(third) / "docs" / "reports" / "q4.ods").exists()
        assert sorted(os.listdir(mnt / "snapshots")) == sorted([str(first), str(second), str(third), "latest"])
        assert os.readlink(mnt / "snapshots" / "latest") == str(third)
        assert os.readlink(mnt / "latest") == "snapshots/latest"
        times = os.listdir(mnt / "by-time")
        assert len(times) == 3 and {os.readlink(mnt / "by-time" / t) for t in times} == {
            f"../snapshots/{i}" for i in (first, second, third)
        }
        for sid, local in trees.items():
            # bytes, modes, mtimes of files and directories, link targets: as they were at that push
            view = snapshot_of(mnt / "snapshots" / str(sid))
            want = snapshot_of(local)
            view_dirs = {k: v for k, v in view.items() if v[0] != "d"}
            want_dirs = {k: v for k, v in want.items() if v[0] != "d"}
            assert view_dirs == want_dirs, sid
            assert {k for k, v in view.items() if v[0] == "d"} == {k for k, v in want.items() if v[0] == "d"}
        latest = mnt / "latest"
        assert os.getxattr(latest / "perm.txt", "user.comment") == b"tagged"
        assert os.stat(latest / "perm.txt").st_uid == os.stat(trees[third] / "perm.txt").st_uid
        # a read in the middle of a file never read (its chunk boundaries learned on the way)
        with open(mnt / "snapshots" / str(first) / "big.bin", "rb") as f:
            f.seek(8_500_000)
            assert f.read(100_000) == BIG[8_500_000:8_600_000]
        # read-only
        with pytest.raises(OSError):
            (latest / "new-file").write_text("no")
        with pytest.raises(OSError):
            open(latest / "docs" / "notes.txt", "a").close()
        m.process.send_signal(signal.SIGTERM)
        code, _, err = m.finish()
        assert code == 130, err
        assert "Traceback" not in err and not in_mounts(mnt)
    finally:
        m.ensure_gone()


def test_mount_unmounts_cleanly_and_says_why_it_cannot(pushed: Any, tmp_path: Path) -> None:
    reason = _fuse_reason()
    if reason is not None:
        pytest.skip(reason)
    server, _, env, _, kind = pushed
    if kind == "encrypted":
        pytest.skip("the unmount paths do not depend on encryption (covered with the plaintext target)")
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("first\n")
    remote = server.remote("browse-late")
    r = server.cli("neo-push", "-q", "--accept-new-host-key", str(src), remote, env=env)
    assert r.returncode == 0, r.stderr
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = Mounted(server, env, remote, mnt)
    try:
        assert (mnt / "latest" / "notes.txt").read_text() == "first\n"
        # a push made while mounted: its snapshot is there as soon as its id is named
        (src / "notes.txt").write_text("pushed while mounted\n")
        r = server.cli("neo-push", "-q", str(src), remote, env=env)
        assert r.returncode == 0, r.stderr
        assert (mnt / "snapshots" / "2" / "notes.txt").read_text() == "pushed while mounted\n"
        # stat-ing the snapshots' directories (ls -l) lists none of them; only entering one does
        for name in os.listdir(mnt / "snapshots"):
            os.lstat(mnt / "snapshots" / name)
        for name in os.listdir(mnt / "by-time"):
            assert stat.S_ISDIR(os.stat(mnt / "by-time" / name).st_mode)  # through the link: the snapshot's
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True, timeout=30)
        code, out, err = m.finish()
        assert code == 0, err
        summary = json.loads(out.splitlines()[-1])
        assert summary["message_type"] == "summary" and summary["bytes_fetched"] >= 6 + 21
        assert summary["trees_listed"] == 2  # snapshots 1 (as latest, then) and 2, each once
        assert "Traceback" not in err
    finally:
        m.ensure_gone()
    # Ctrl-C unmounts too
    m = Mounted(server, env, remote, mnt)
    try:
        m.process.send_signal(signal.SIGINT)
        code, _, err = m.finish()
        assert code == 130 and "interrupted" in err and "Traceback" not in err
        assert not in_mounts(mnt)
    finally:
        m.ensure_gone()
    # killed outright (no cleanup of its own): libfuse's auto_unmount still removes the mount
    m = Mounted(server, env, remote, mnt)
    try:
        m.process.kill()
        m.process.wait()
        deadline = time.monotonic() + 20
        while in_mounts(mnt) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not in_mounts(mnt)
    finally:
        m.ensure_gone()
    # what cannot be mounted: one line, exit 1, before connecting
    (mnt / "occupied").write_text("x")
    r = server.cli("neo-mount", remote, str(mnt), env=env)
    assert r.returncode == 1 and r.stderr.strip() == f"neo-mount: cannot mount at {mnt}: it is not empty"
    r = server.cli("neo-mount", remote, str(tmp_path / "nowhere"), env=env)
    assert r.returncode == 1 and "not a directory" in r.stderr
    (mnt / "occupied").unlink()
    r = server.cli("neo-mount", remote, str(mnt), env={**env, "FUSE_LIBRARY_PATH": str(tmp_path / "no-libfuse.so")})
    assert r.returncode == 1 and r.stderr.startswith("neo-mount: FUSE is not available:"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not in_mounts(mnt)


def test_browse_commands_teach() -> None:
    for program in ("neo-diff", "neo-find", "neo-cat", "neo-mount"):
        r = subprocess.run([str(BIN / program), "--help"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "examples:" in r.stdout and "exit codes:" in r.stdout, program
    pull = subprocess.run([str(BIN / "neo-pull"), "--help"], capture_output=True, text=True, timeout=60)
    assert "--stdout" in pull.stdout and "neo-pull --stdout --snapshot 12" in pull.stdout


def test_a_forged_chunk_stops_cat_and_mount_reads_with_its_name(server: RunningServer, tmp_path: Path) -> None:
    """A chunk whose ciphertext was changed and its CRC fixed (only the key can tell): neo-cat writes nothing of
    it, says so in one line and exits 1; a read of it through neo-mount fails with EIO and is named."""
    env = key_env(server)
    init_key(server)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(random.Random(9).randbytes(300_000))
    (src / "ok.txt").write_text("intact\n")
    remote = server.remote("forged")
    r = server.cli("neo-push", "-q", "--accept-new-host-key", "--encrypt", str(src), remote, env=env)
    assert r.returncode == 0, r.stderr
    server.stop()
    _flip_chunk(server, "forged", server_path(server, "forged", "a.bin"), fix_crc=True)
    server.start()
    r = cli(server, env, "neo-cat", remote, "a.bin")
    assert r.returncode == 1 and r.stdout == "", r.stderr
    assert r.stderr.startswith("neo-cat: a.bin: a chunk of it is damaged or forged") and "incomplete" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert cli(server, env, "neo-cat", remote, "ok.txt").stdout == "intact\n"
    if _fuse_reason() is not None:
        return
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = Mounted(server, env, remote, mnt)
    try:
        assert (mnt / "latest" / "ok.txt").read_text() == "intact\n"
        with pytest.raises(OSError) as raised:
            (mnt / "latest" / "a.bin").read_bytes()
        assert raised.value.errno == errno.EIO
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True, timeout=30)
        code, _, err = m.finish()
        assert code == 0 and "a.bin: a chunk of it is damaged or forged" in err, err
    finally:
        m.ensure_gone()
    # a server that goes away while mounted: unmounted, said in one line, exit 1 (not a mount of EIOs)
    m = Mounted(server, env, remote, mnt)
    try:
        server.stop()
        code, out, err = m.finish()
        assert code == 1 and "the connection to the server was lost: unmounted" in err, err
        assert json.loads(out.splitlines()[-1])["connection_lost"] is True and not in_mounts(mnt)
    finally:
        m.ensure_gone()
