"""Names are bytes, and paths have no PATH_MAX: end to end with the real twistd, neo-push, neo-pull and neo-ls.

Any name the kernel allows (not UTF-8, latin-1, with a backslash, one that merely looks like an escape), any
symlink target, and a tree deeper than 4096 bytes are pushed and pulled back byte-identical, in plaintext and
encrypted targets. Both trees are walked with directory descriptors (``rsync`` itself stops at PATH_MAX), and
every name, kind, mode, mtime, content, link target and xattr is compared.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support import RunningServer

if shutil.which("ssh") is None:
    pytest.skip("OpenSSH client not installed", allow_module_level=True)

OLD = 1_600_000_000 * 10**9
PASSPHRASE = "a long passphrase for tests"
FAST_KDF = ("--kdf-memory", "8", "--kdf-iterations", "1")


def walk(root: str | bytes) -> dict[bytes, dict[str, Any]]:
    """Every item under ``root`` by its relative path in bytes, read with directory descriptors only (no path
    longer than one name is ever given to the kernel), with the properties ``rsync -aHAX`` keeps."""
    out: dict[bytes, dict[str, Any]] = {}
    inodes: dict[int, list[bytes]] = {}

    def visit(fd: int, prefix: bytes) -> None:
        with os.scandir(fd) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            name = os.fsencode(entry.name)
            rel = prefix + name
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            props: dict[str, Any] = {"mode": st.st_mode, "owner": (st.st_uid, st.st_gid)}
            if stat.S_ISLNK(st.st_mode):
                props["target"] = os.readlink(name, dir_fd=fd)
            else:
                props["mtime"] = st.st_mtime_ns
                sub = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
                try:
                    props["xattrs"] = {n: os.getxattr(sub, n) for n in sorted(os.listxattr(sub))}
                    if stat.S_ISDIR(st.st_mode):
                        visit(sub, rel + b"/")
                    elif stat.S_ISREG(st.st_mode):
                        h = hashlib.blake2b()
                        while block := os.read(sub, 1 << 20):
                            h.update(block)
                        props["digest"] = h.hexdigest()
                        if st.st_nlink > 1:
                            inodes.setdefault(st.st_ino, []).append(rel)
                finally:
                    os.close(sub)
            out[rel] = props

    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        visit(top, b"")
    finally:
        os.close(top)
    out[b"<hard links>"] = {"groups": sorted(sorted(v) for v in inodes.values())}
    return out


def odd_tree(src: Path) -> None:
    """Names the kernel allows and UTF-8 does not, and the ones an escape scheme could confuse with them."""
    s = bytes(src)
    os.makedirs(s + b"/caf\xe9")  # a latin-1 directory
    for name, data in [
        (b"\xff\xfe.bin", b"not UTF-8\n"),
        (b"caf\xe9/men\xfc.txt", b"latin-1 in latin-1\n"),
        (b"back\\slash.txt", b"a backslash is a byte like any other\n"),
        (b"\\xff", b"a UTF-8 name that looks like an escape\n"),
        (b"\\\\xff", b"and its escape\n"),
        (b"ok-\xc3\xa9.txt", b"valid UTF-8\n"),
        (b"\xe9.skip", b"excluded by a pattern\n"),
    ]:
        with open(s + b"/" + name, "wb") as f:
            f.write(data)
    os.link(s + b"/\xff\xfe.bin", s + b"/caf\xe9/hard-\xfe")  # a hard link whose first name is not UTF-8
    os.setxattr(s + b"/caf\xe9/men\xfc.txt", "user.note", b"on an odd name")
    os.setxattr(s + b"/caf\xe9/men\xfc.txt", b"user.\xff\xfe odd\\name", b"an xattr name that is not UTF-8")
    os.symlink(b"\xe9t\xe9", s + b"/latin-link")  # a target that is not UTF-8
    os.symlink(b"..\\x41\\", s + b"/backslash-link")  # a target with backslashes (that look like escapes)
    os.symlink(b"caf\xe9/men\xfc.txt", s + b"/link-\xff")
    os.chmod(s + b"/caf\xe9/men\xfc.txt", 0o640)
    if os.geteuid() == 0:
        os.chown(s + b"/caf\xe9/men\xfc.txt", 1234, 5678)
        os.chown(s + b"/link-\xff", 4321, 8765, follow_symlinks=False)
    for rel in sorted(walk(src), reverse=True):
        if not rel.startswith(b"<"):
            os.utime(s + b"/" + rel, ns=(OLD, OLD), follow_symlinks=False)
    os.utime(src, ns=(OLD, OLD))


def make_deep(root: Path, depth_bytes: int) -> bytes:
    """A directory chain deeper than ``depth_bytes`` under ``root`` (made with directory descriptors: the
    kernel refuses such a path in one call) holding a file with an xattr, a symlink and an odd name. Returns
    the relative path of its deepest directory."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    rel = b""
    try:
        i = 0
        while len(rel) < depth_bytes:
            name = b"d%d-" % i + b"x" * 200
            os.mkdir(name, 0o750, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            rel += name + b"/"
            i += 1
        wfd = os.open("deep.txt", os.O_WRONLY | os.O_CREAT, 0o604, dir_fd=fd)
        os.write(wfd, b"deep\n" * 1000)
        os.setxattr(wfd, "user.deep", b"yes")
        os.close(wfd)
        wfd = os.open(b"\xff deep", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd)
        os.close(wfd)
        os.symlink("deep.txt", "deep-link", dir_fd=fd)
        os.link("deep.txt", "deep-hard", src_dir_fd=fd, dst_dir_fd=fd)
        if os.geteuid() == 0:  # an owner given through a directory descriptor, deep down
            os.chown("deep.txt", 1234, 5678, dir_fd=fd)
            os.chown("deep-link", 4321, 8765, dir_fd=fd, follow_symlinks=False)
        for name in ("deep.txt", "\udcff deep"):
            os.utime(name, ns=(OLD, OLD), dir_fd=fd)
    finally:
        os.close(fd)
    return rel


def encrypted_env(server: RunningServer, encrypted: bool) -> tuple[dict[str, str] | None, tuple[str, ...]]:
    if not encrypted:
        return None, ()
    env = server.env(NEO_PASSPHRASE=PASSPHRASE)
    key = Path(os.sys.executable).parent / "neo-key"  # type: ignore[attr-defined]
    r = subprocess.run([str(key), "init", *FAST_KDF], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return env, ("--encrypt",)


def cli_json(server: RunningServer, *args: str, env: dict[str, str] | None = None, code: int = 0) -> dict[str, Any]:
    r = server.cli(*args, env=env)
    assert r.returncode == code, f"{args[0]} exited {r.returncode}: {r.stderr}"
    out: dict[str, Any] = json.loads(r.stdout)
    return out


@pytest.mark.parametrize("encrypted", [False, True], ids=["plaintext", "encrypted"])
def test_names_and_link_targets_are_bytes_end_to_end(server: RunningServer, tmp_path: Path, encrypted: bool) -> None:
    src = tmp_path / os.fsdecode(b"src-\xe9")  # the pushed directory itself has an odd name
    src.mkdir()
    odd_tree(src)
    env, extra = encrypted_env(server, encrypted)
    remote = server.remote("odd")
    exclude = os.fsdecode(b"*.skip")
    summary = cli_json(server, "neo-push", "--accept-new-host-key", "--json", *extra, "--exclude", exclude,
                       str(src), remote, env=env)  # fmt: skip
    assert summary["warnings"] == 0, summary
    want = walk(src)
    del want[b"\xe9.skip"]

    out = tmp_path / os.fsdecode(b"out-\xff")
    cli_json(server, "neo-pull", "--json", remote, str(out), env=env)
    got = walk(out)
    assert sorted(got) == sorted(want)
    for rel in want:
        assert got[rel] == want[rel], rel

    # a second push of the unchanged tree changes nothing (names map to the same stored paths every time)
    cli_json(server, "neo-push", "--json", *extra, "--exclude", exclude, str(src), remote, env=env)
    snapshots = cli_json(server, "neo-ls", "--snapshots", "--json", remote, env=env)["snapshots"]
    assert [s["changed"] for s in snapshots][1:] == [0], snapshots

    # listings: escaped for people, exact in --json (path as escaped text, path_b64 the bytes when not UTF-8)
    r = server.cli("neo-ls", "-R", remote, env=env)
    assert r.returncode == 0, r.stderr
    assert "\\377\\376.bin" in r.stdout and "caf\\351/men\\374.txt" in r.stdout, r.stdout
    assert "back\\\\slash.txt" in r.stdout and "latin-link -> \\351t\\351" in r.stdout, r.stdout
    listed = cli_json(server, "neo-ls", "-R", "--json", remote, env=env)
    by_path = {base64.b64decode(e["path_b64"]) if "path_b64" in e else e["path"].encode(): e for e in listed["entries"]}
    assert by_path[b"\xff\xfe.bin"]["path"] == "\\xff\\xfe.bin"
    assert by_path[b"\\xff"]["path"] == "\\xff" and "path_b64" not in by_path[b"\\xff"]
    link = by_path[b"latin-link"]
    assert base64.b64decode(link["link_b64"]) == b"\xe9t\xe9" and link["link"] == "\\xe9t\\xe9", link
    assert by_path[b"backslash-link"]["link"] == "..\\x41\\" and "link_b64" not in by_path[b"backslash-link"]

    # history by odd names: versions of one, deleted ones listed exactly, and pull --delete removes them
    odd = os.fsdecode(b"\xff\xfe.bin")
    os.unlink(Path(os.fsdecode(bytes(src))) / os.fsdecode(b"caf\xe9") / os.fsdecode(b"hard-\xfe"))
    (Path(os.fsdecode(bytes(src))) / odd).unlink()
    cli_json(server, "neo-push", "--json", "--delete", *extra, "--exclude", exclude, str(src), remote, env=env)
    versions = cli_json(server, "neo-ls", "--json", "--versions", odd, remote, env=env)
    assert len(versions["versions"]) == 1, versions
    gone = cli_json(server, "neo-ls", "--json", "--deleted", remote, env=env)["deleted"]
    assert sorted(base64.b64decode(d["path_b64"]) for d in gone) == [b"caf\xe9/hard-\xfe", b"\xff\xfe.bin"], gone
    pulled = cli_json(server, "neo-pull", "--json", "--delete", remote, str(out), env=env)
    assert pulled["deleted"] == 2, pulled
    now = walk(src)
    del now[b"\xe9.skip"]
    assert walk(out) == now

    # the human-readable runs print such names escaped, never crash on them
    human = tmp_path / "human"
    for args in (("neo-push", "--progress", *extra, str(src), remote), ("neo-pull", "--progress", remote, str(human))):
        r = server.cli(*args, env=env)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr

    # one odd directory and one odd file by name (as a latin-1 shell passes them)
    cli_json(server, "neo-pull", "--json", remote + "/" + os.fsdecode(b"caf\xe9"), str(tmp_path / "sub"), env=env)
    assert walk(tmp_path / "sub")[b"men\xfc.txt"] == want[b"caf\xe9/men\xfc.txt"]
    one = remote + "/" + os.fsdecode(b"caf\xe9/men\xfc.txt")
    cli_json(server, "neo-pull", "--json", one, str(tmp_path / "single"), env=env)
    assert (tmp_path / "single").read_bytes() == b"latin-1 in latin-1\n"


@pytest.mark.parametrize("encrypted", [False, True], ids=["plaintext", "encrypted"])
def test_a_tree_deeper_than_path_max_round_trips(server: RunningServer, tmp_path: Path, encrypted: bool) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "top.txt").write_text("top\n")
    make_deep(src, 4096 + 600)
    env, extra = encrypted_env(server, encrypted)
    remote = server.remote("deep")
    summary = cli_json(server, "neo-push", "--accept-new-host-key", "--json", *extra, str(src), remote, env=env)
    assert summary["warnings"] == 0, summary
    want = walk(src)
    assert max(len(rel) for rel in want) > 4096
    out = tmp_path / "out"
    cli_json(server, "neo-pull", "--json", remote, str(out), env=env)
    got = walk(out)
    assert sorted(got) == sorted(want)
    for rel in want:
        assert got[rel] == want[rel], rel
    # pulled again into the existing copy: nothing to write, nothing fails
    again = cli_json(server, "neo-pull", "--json", remote, str(out), env=env)
    assert again["warnings"] == 0, again
    assert walk(out) == want
