"""Faithful copies of real machines, end to end with the real twistd, neo-push and neo-pull.

Each test builds what real machines hold (repeated chunks, sparse files, mode-only changes, ownership, hard
links, xattrs, ACLs, specials, odd names), pushes and pulls it into a fresh directory, and compares bytes and
metadata property by property (with ``rsync -aHAXS --numeric-ids`` of the same tree where it is installed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from support import RunningServer

if shutil.which("ssh") is None:
    pytest.skip("OpenSSH client not installed", allow_module_level=True)

MIB = 1024 * 1024
OLD = 1_600_000_000 * 10**9


def push(server: RunningServer, src: Path, target: str, *args: str, code: int = 0) -> dict[str, Any]:
    r = server.cli("neo-push", "--accept-new-host-key", "--json", *args, str(src), server.remote(target))
    assert r.returncode == code, f"neo-push exited {r.returncode}: {r.stderr}"
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def pull(server: RunningServer, target: str, dest: Path, *args: str, code: int = 0) -> dict[str, Any]:
    r = server.cli("neo-pull", "--accept-new-host-key", "--json", *args, server.remote(target), str(dest))
    assert r.returncode == code, f"neo-pull exited {r.returncode}: {r.stderr}"
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def digest(path: Path) -> str:
    h = hashlib.blake2b()
    with path.open("rb") as f:
        while block := f.read(8 * MIB):
            h.update(block)
    return h.hexdigest()


def test_repeated_chunks_over_iov_max_and_sparse_files_round_trip(server: RunningServer, tmp_path: Path) -> None:
    """A file made of one chunk repeated 1,300 times used to reach os.pwritev as 1,300 buffers (EINVAL, over
    IOV_MAX); a sparse file was read whole, and came back fully allocated or not at all (over 1,024 zero
    chunks: EINVAL)."""
    src = tmp_path / "src"
    src.mkdir()
    block = random.Random(0).randbytes(20_000)  # cut at the same phase every time: one chunk, repeated
    (src / "repeated.bin").write_bytes(block * 1300)
    with (src / "sparse.img").open("wb") as f:  # the 1 GiB / 4 MiB, scaled down to keep the test quick
        f.truncate(256 * MIB)
        for at in (0, 100 * MIB, 250 * MIB):
            f.seek(at)
            f.write(random.Random(at).randbytes(MIB + 1234))
    with (src / "holes-only.img").open("wb") as f:
        f.truncate(64 * MIB)
    first = push(server, src, "fid")
    assert first["bytes_sent"] < 12 * MIB, first  # holes are neither read nor sent (one zero chunk is)
    out = tmp_path / "out"
    pull(server, "fid", out)
    for name in ("repeated.bin", "sparse.img", "holes-only.img"):
        assert (out / name).stat().st_size == (src / name).stat().st_size, name
        assert digest(out / name) == digest(src / name), name
    assert (out / "sparse.img").stat().st_blocks * 512 < 16 * MIB  # restored as holes
    assert (out / "holes-only.img").stat().st_blocks * 512 < MIB


def test_a_mode_only_change_is_applied_to_an_existing_copy(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.utime(src / "script.sh", ns=(OLD, OLD))
    os.chmod(src / "script.sh", 0o644)
    push(server, src, "modes")
    out = tmp_path / "out"
    pull(server, "modes", out)
    assert (out / "script.sh").stat().st_mode & 0o7777 == 0o644
    os.chmod(src / "script.sh", 0o750)  # content and mtime unchanged
    time.sleep(0.01)
    push(server, src, "modes")
    summary = pull(server, "modes", out)
    assert (out / "script.sh").stat().st_mode & 0o7777 == 0o750, summary
    assert (out / "script.sh").stat().st_mtime_ns == OLD


def make_deep(root: Path, depth_bytes: int) -> bytes:
    """A file whose path under ``root`` is over ``depth_bytes`` long (made with directory descriptors: the
    kernel refuses such a path in one call). Returns its relative path."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    rel = b""
    try:
        while len(rel) < depth_bytes:
            name = b"d" * 200
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            rel += name + b"/"
        wfd = os.open("deep.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(wfd, b"deep\n")
        os.close(wfd)
    finally:
        os.close(fd)
    return rel + b"deep.txt"


def test_what_cannot_be_stored_is_named_with_its_reason_and_exits_23(server: RunningServer, tmp_path: Path) -> None:
    """Odd names, odd link targets and paths deeper than PATH_MAX are stored (tests/test_names_e2e.py); a
    socket, and a path over the protocol's 32 KiB, are not: each is named with its reason."""
    import socket

    src = tmp_path / "src"
    src.mkdir()
    (src / "plain.txt").write_text("kept\n")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "app.sock"))
    (Path(os.fsdecode(bytes(src) + b"/\xff\xfe.bin"))).write_bytes(b"latin-1 name")
    os.symlink(b"\xe9t\xe9", bytes(src) + b"/latin-link")
    (src / "far").mkdir()
    try:
        deep = make_deep(src, 4200)
        make_deep(src / "far", 33_000)
        summary = push(server, src, "named", code=23)
    finally:
        sock.close()
    reasons = {Path(w["path"]).name: w["reason"] for w in summary["warnings_detail"]}
    assert reasons.pop("app.sock") == "socket not stored", reasons
    assert list(reasons.values()) == ["not stored: its path is over 32768 bytes"], reasons
    assert summary["warnings"] == len(summary["warnings_detail"]) == 2, summary
    out = tmp_path / "out"
    pull(server, "named", out)
    assert (out / "plain.txt").read_text() == "kept\n"
    assert (Path(os.fsdecode(bytes(out) + b"/\xff\xfe.bin"))).read_bytes() == b"latin-1 name"
    assert os.readlink(bytes(out) + b"/latin-link") == b"\xe9t\xe9"
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in deep.split(b"/")[:-1]:
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
        assert os.read(os.open("deep.txt", os.O_RDONLY, dir_fd=fd), 100) == b"deep\n"
    finally:
        os.close(fd)


ROOT = os.geteuid() == 0
PASSPHRASE = "a long passphrase for tests"
FAST_KDF = ("--kdf-memory", "8", "--kdf-iterations", "1")


def make_machine_tree(src: Path) -> list[str]:
    """What real machines hold: owners, hard links, xattrs, ACLs, a sparse file, a FIFO and device nodes.
    Returns what this machine could not make (skipped in the comparison, and said so)."""
    cannot: list[str] = []
    (src / "etc" / "conf.d").mkdir(parents=True)
    (src / "home" / "u").mkdir(parents=True)
    (src / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (src / "home" / "u" / "notes.txt").write_text("mine\n")
    (src / "home" / "u" / "big.bin").write_bytes(random.Random(5).randbytes(3 * MIB))
    os.symlink("notes.txt", src / "home" / "u" / "link")
    # hard links: one inode with 3 names, one with 2
    (src / "h1").write_bytes(b"three names\n")
    os.link(src / "h1", src / "etc" / "h2")
    os.link(src / "h1", src / "home" / "h3")
    (src / "home" / "u" / "two-a").write_bytes(random.Random(6).randbytes(2 * MIB))
    os.link(src / "home" / "u" / "two-a", src / "home" / "u" / "two-b")
    # a sparse file: 64 MiB apparent, 1 MiB of data
    with (src / "disk.img").open("wb") as f:
        f.truncate(64 * MIB)
        f.seek(32 * MIB)
        f.write(random.Random(7).randbytes(MIB))
    # xattrs and ACLs (the system.posix_acl_* xattrs)
    os.setxattr(src / "home" / "u" / "notes.txt", "user.comment", b"hello \x00 bytes")
    os.setxattr(src / "home" / "u", "user.dir", b"on a directory")
    if ROOT:
        os.setxattr(src / "etc" / "passwd", "trusted.secret", b"root only")
    if shutil.which("setfacl"):
        import subprocess

        subprocess.run(["setfacl", "-m", "u:1234:rwx,g:5678:r", str(src / "home" / "u" / "notes.txt")], check=True)
        subprocess.run(["setfacl", "-d", "-m", "u:1234:rx", str(src / "home" / "u")], check=True)
    else:
        cannot.append("ACLs (setfacl not installed)")
    # specials
    os.mkfifo(src / "fifo")
    if ROOT:
        os.mknod(src / "null-ish", 0o666 | 0o020000, os.makedev(1, 3))
        os.mknod(src / "loop-ish", 0o660 | 0o060000, os.makedev(7, 200))
    else:
        cannot.append("device nodes (not root)")
    # owners, on files, directories and symlinks
    if ROOT:
        for p in [src / "home" / "u", src / "home" / "u" / "notes.txt", src / "home" / "u" / "two-a", src / "fifo"]:
            os.chown(p, 1234, 5678)
        os.chown(src / "home" / "u" / "link", 1234, 5678, follow_symlinks=False)
    else:
        cannot.append("owners (not root)")
    # names and link targets as the bytes they are
    odd = bytes(src) + b"/home/u/caf\xe9"
    os.mkdir(odd)
    with open(odd + b"/\xff\xfe.bin", "wb") as f:
        f.write(b"latin-1 and worse\n")
    with open(bytes(src) + b"/home/u/back\\slash", "wb") as f:
        f.write(b"a backslash\n")
    os.link(odd + b"/\xff\xfe.bin", odd + b"/hard-\xe9")
    os.symlink(b"\xe9t\xe9", odd + b"/latin-link")
    os.setxattr(odd + b"/\xff\xfe.bin", "user.odd", b"on an odd name")
    os.chmod(src / "etc" / "passwd", 0o4755)  # set-uid survives the chown of a restore
    for p in sorted(src.rglob("*"), reverse=True):
        os.utime(p, ns=(OLD, OLD), follow_symlinks=False)
    os.utime(src, ns=(OLD, OLD))
    return cannot


def properties(root: Path) -> dict[str, Any]:
    """Every property ``rsync -aHAXS --numeric-ids`` keeps, per path (hard links as groups of names)."""
    out: dict[str, Any] = {}
    inodes: dict[int, list[str]] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        st = p.lstat()
        kind = "l" if p.is_symlink() else "d" if p.is_dir() else "f" if p.is_file() else "s"
        try:
            names = os.listxattr(p, follow_symlinks=False)
            xattrs = {
                n: os.getxattr(p, n, follow_symlinks=False) for n in sorted(names) if not n.startswith("security.")
            }
        except OSError:
            xattrs = {}
        props: dict[str, Any] = {"kind": kind, "mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "xattrs": xattrs}
        if kind != "l":
            props["mtime"] = st.st_mtime_ns
        if kind == "f":
            props["size"] = st.st_size
            props["digest"] = digest(p)
            props["sparse"] = st.st_blocks * 512 < st.st_size // 2
            if st.st_nlink > 1:
                inodes.setdefault(st.st_ino, []).append(rel)
        elif kind == "l":
            props["target"] = os.readlink(p)
        elif kind == "s":
            props["rdev"] = st.st_rdev
        out[rel] = props
    out["<hard links>"] = sorted(sorted(names) for names in inodes.values())
    return out


@pytest.mark.parametrize("encrypted", [False, True], ids=["plaintext", "encrypted"])
def test_a_machine_tree_round_trips_as_rsync_aHAXS_numeric_ids_keeps_it(
    server: RunningServer, tmp_path: Path, encrypted: bool
) -> None:
    if shutil.which("rsync") is None:
        pytest.skip("rsync not installed: it is the reference")
    src = tmp_path / "src"
    src.mkdir()
    cannot = make_machine_tree(src)
    import subprocess

    ref = tmp_path / "rsync-copy"
    subprocess.run(["rsync", "-aHAXS", "--numeric-ids", f"{src}/", str(ref)], check=True)
    extra: tuple[str, ...] = ()
    env = None
    if encrypted:
        env = server.env(NEO_PASSPHRASE=PASSPHRASE)
        r = subprocess.run([str(Path(os.sys.executable).parent / "neo-key"), "init", *FAST_KDF],  # type: ignore[attr-defined]
                           capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stderr
        extra = ("--encrypt",)
    r = server.cli("neo-push", "--accept-new-host-key", "--json", *extra, str(src), server.remote("m"), env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["warnings"] == 0
    out = tmp_path / "out"
    r = server.cli("neo-pull", "--json", "--numeric-ids", server.remote("m"), str(out), env=env)
    assert r.returncode == 0, r.stderr
    want, got = properties(ref), properties(out)
    assert got.keys() == want.keys()
    for rel in want:
        assert got[rel] == want[rel], (rel, cannot)
    odd = os.fsdecode(b"home/u/caf\xe9/")
    assert got["disk.img"]["sparse"] and got["<hard links>"] == [
        ["etc/h2", "h1", "home/h3"], [odd + os.fsdecode(b"hard-\xe9"), odd + os.fsdecode(b"\xff\xfe.bin")],
        ["home/u/two-a", "home/u/two-b"],
    ]  # fmt: skip
    assert got[odd + "latin-link"]["target"] == os.fsdecode(b"\xe9t\xe9")
    if ROOT:
        assert got["home/u/notes.txt"]["uid"] == 1234 and got["home/u/link"]["gid"] == 5678
        assert "trusted.secret" in got["etc/passwd"]["xattrs"]
    assert "system.posix_acl_default" in got["home/u"]["xattrs"] or cannot


def test_owner_and_xattr_changes_are_pushed_and_pulled_even_when_the_files_cache_vouches(
    server: RunningServer, tmp_path: Path
) -> None:
    """The walk takes an unchanged file's record from the files cache (no llistxattr); a setxattr or chown
    changes the ctime, so such a change is still seen, and a pull applies it to a current copy."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("same bytes\n")
    os.setxattr(src / "f.txt", "user.tag", b"one")
    time.sleep(1.1)  # older than the files cache's racy-timestamp guard
    push(server, src, "x")
    again = push(server, src, "x")
    assert again["files_changed"] == 0  # the cache vouched: not read
    out = tmp_path / "out"
    pull(server, "x", out)
    assert os.getxattr(out / "f.txt", "user.tag") == b"one"
    os.setxattr(src / "f.txt", "user.tag", b"two")
    os.setxattr(src / "f.txt", "user.more", b"three")
    if ROOT:
        os.chown(src / "f.txt", 4321, 8765)
    push(server, src, "x")
    pull(server, "x", out, "--numeric-ids")
    assert {n: os.getxattr(out / "f.txt", n) for n in os.listxattr(out / "f.txt")} == {
        "user.tag": b"two", "user.more": b"three",
    }  # fmt: skip
    if ROOT:
        assert (out / "f.txt").stat().st_uid == 4321 and (out / "f.txt").stat().st_gid == 8765


def churn(src: Path, rng: random.Random) -> None:
    """One round of the changes a live machine sees: edits in place, appends, truncations, new, deleted and
    renamed files, mode, xattr and symlink changes, new hard links."""
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    for p in rng.sample(files, min(len(files), 4)):
        op = rng.randrange(7)
        if op == 0:  # overwrite a range in place
            with p.open("r+b") as f:
                f.seek(rng.randrange(max(1, p.stat().st_size)))
                f.write(rng.randbytes(rng.randrange(1, 5000)))
        elif op == 1:
            with p.open("ab") as f:
                f.write(rng.randbytes(rng.randrange(1, 70_000)))
        elif op == 2:
            os.truncate(p, rng.randrange(max(1, p.stat().st_size)))
        elif op == 3:
            p.unlink()
        elif op == 4:
            os.chmod(p, rng.choice([0o600, 0o644, 0o755, 0o640]))
        elif op == 5:
            if rng.random() < 0.5:
                os.setxattr(p, "user.round", rng.randbytes(rng.randrange(1, 40)))
            else:
                with contextlib.suppress(OSError):
                    os.removexattr(p, "user.round")
        else:
            target = p.with_name(f"renamed-{rng.randrange(10**6)}")
            p.rename(target)
    for _ in range(rng.randrange(1, 4)):
        d = rng.choice([src, src / "a", src / "a" / "b", src / "c"])
        d.mkdir(parents=True, exist_ok=True)
        size = rng.choice([0, 10, 5000, 70_000, 1_300_000])
        (d / f"new-{rng.randrange(10**6)}").write_bytes(rng.randbytes(size))
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    if files and rng.random() < 0.5:
        first = rng.choice(files)
        link = first.with_name(f"hl-{rng.randrange(10**6)}")
        os.link(first, link)
    if rng.random() < 0.5:
        link = src / "c" / "sym"
        link.parent.mkdir(exist_ok=True)
        if link.is_symlink():
            link.unlink()
        os.symlink(f"target-{rng.randrange(100)}", link)


def test_twenty_rounds_of_churn_restore_every_snapshot_exactly(server: RunningServer, tmp_path: Path) -> None:
    rng = random.Random(13)
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    for i in range(12):
        size = rng.choice([0, 100, 40_000, 2_000_000])
        (src / rng.choice(["", "a", "a/b"]) / f"f{i}").write_bytes(rng.randbytes(size))
    expected: dict[int, dict[str, Any]] = {}
    for _round in range(20):
        churn(src, rng)
        summary = push(server, src, "churn", "--delete")  # a mirror: files deleted here leave the snapshot
        expected[summary["snapshot"]] = properties(src)
    live = tmp_path / "live"  # one copy brought from each snapshot to the next
    ids = sorted(expected)
    for sid, want in expected.items():
        if sid in ids[::6] or sid == ids[-1]:  # from scratch too (not every one: each pull is a process)
            fresh = tmp_path / f"s{sid}"
            pull(server, "churn", fresh, "--snapshot", str(sid))
            assert properties(fresh) == want, sid
        pull(server, "churn", live, "--snapshot", str(sid))
        got = properties(live)
        for rel, props in want.items():
            if rel != "<hard links>":
                assert got.get(rel) == props, (sid, rel)


def test_pull_delete_removes_what_the_snapshot_lacks_and_never_follows_a_symlink(
    server: RunningServer, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "keep").mkdir(parents=True)
    (src / "keep" / "a.txt").write_text("a\n")
    push(server, src, "mirror")
    out = tmp_path / "out"
    (out / "keep" / "old-dir" / "deep").mkdir(parents=True)
    (out / "keep" / "old-dir" / "deep" / "x").write_text("x")
    (out / "stale.txt").write_text("stale")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("not ours")
    os.symlink(outside, out / "escape")  # removed as a link; what it points to is untouched
    summary = pull(server, "mirror", out, "--delete")
    assert summary["deleted"] == 3, summary
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["keep", "keep/a.txt"]
    assert (outside / "precious").read_text() == "not ours"
    # without --delete nothing goes; in $HOME it is refused without --force
    (out / "stale.txt").write_text("stale")
    assert pull(server, "mirror", out)["deleted"] == 0 and (out / "stale.txt").exists()
    home = Path(server.env()["HOME"])
    r = server.cli("neo-pull", "--delete", server.remote("mirror"), str(home))
    assert r.returncode == 1 and "refusing to --delete in your home directory" in r.stderr, r.stderr
    assert (home / "twistd.log").exists()  # nothing was touched
