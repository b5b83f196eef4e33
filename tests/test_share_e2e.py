"""Sharing end to end with the real programs against a real ``twistd``: the original README's scenario (a
read-only sub-account that sees only ``presentations`` inside ``documents``), the ransomware-proof append-only
backup key, neo-share, neo-ls --usage, quotas set by neo-admin on the running server, neo-target remove, and
failed-login throttling with nothing secret in the log."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from support import BIN, PASSWORD, RunningServer, assert_clean, snapshot_of
from test_admin import admin

VIEWER_PW = "viewer pass 3e1d"
BACKUP_PW = "backup pass 77a0"


def as_user(server: RunningServer, program: str, *args: str, password: str) -> subprocess.CompletedProcess[str]:
    """Run a client as another account, with its password (no key, no agent); ``args`` in the program's order."""
    argv = [str(BIN / program), "--known-hosts", str(server.known_hosts), "--accept-new-host-key", "--no-agent", *args]
    return subprocess.run(argv, env=server.env(NEO_PASSWORD=password), capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr}"
    return r


def js(r: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(r).stdout)


def test_readme_scenarios(server: RunningServer, tmp_path: Path) -> None:
    host = f"127.0.0.1:{server.ssh_port}"
    tls = f"tls://%s@127.0.0.1:{server.tls_port}"
    docs = tree(tmp_path / "documents", {
        "presentations/q3.odp": os.urandom(70_000), "presentations/talk/notes.md": b"# notes\n" * 50,
        "taxes/2024.pdf": os.urandom(30_000), "diary.txt": b"dear diary\n",
    })  # fmt: skip
    ok(server.cli("neo-push", "--accept-new-host-key", str(docs), server.remote("documents")))

    # "an additional account that references into a sub-folder called presentations in your documents target
    # that only has read permission": created by alice herself with neo-share
    share = ["neo-share", "--accept-new-host-key", f"alice@{host}"]
    ok(server.cli(*share, "subaccount", "add", "alice.viewer", "--password-stdin", input=VIEWER_PW + "\n"))
    r = ok(server.cli(*share, "grant", "documents/presentations", "--to", "alice.viewer", "--right", "read",
                      "--as", "presentations"))  # fmt: skip
    assert "alice.viewer has read on documents/presentations as 'presentations'" in r.stdout
    listed = js(server.cli(*share, "list", "--json"))
    assert [s["name"] for s in listed["sub_accounts"]] == ["alice.viewer"]
    assert [(g["grantee"], g["path"], g["right"], g["name"]) for g in listed["grants"]] == [
        ("alice.viewer", "presentations", "read", "presentations")
    ]

    viewer = tls % "alice.viewer"
    targets = js(as_user(server, "neo-ls", "--json", viewer, password=VIEWER_PW))["targets"]
    assert [(t["name"], t["right"], t["owner"]) for t in targets] == [("presentations", "read", "alice")]
    out = tmp_path / "viewer-restore"
    ok(as_user(server, "neo-pull", f"{viewer}/presentations", str(out), password=VIEWER_PW))
    assert snapshot_of(out) == {k: v for k, v in snapshot_of(docs / "presentations").items()}
    push = as_user(server, "neo-push", str(docs / "presentations"), f"{viewer}/presentations", password=VIEWER_PW)
    assert push.returncode == 1
    assert "push needs the append right on presentations; alice.viewer has read" in push.stderr
    for outside in (f"{viewer}/documents", f"{viewer}/presentations/../taxes"):
        r = as_user(server, "neo-pull", outside, str(tmp_path / "nope"), password=VIEWER_PW)
        assert r.returncode in (1, 2) and not (tmp_path / "nope" / "2024.pdf").exists(), r.stderr

    # the ransomware-proof backup key: append only, with neo-admin this time, on a running server
    laptop = tree(tmp_path / "laptop", {"work/report.odt": os.urandom(20_000), "photo.jpg": os.urandom(50_000)})
    ok(admin(server.data, "account", "add", "alice.laptop", "--parent", "alice", "--password-stdin",
             stdin=BACKUP_PW + "\n"))  # fmt: skip
    ok(admin(server.data, "grant", "add", "alice.laptop", "alice/laptop", "--right", "append"))
    backup = f"ssh://alice.laptop@{host}/laptop"
    ok(as_user(server, "neo-push", str(laptop), backup, password=BACKUP_PW))
    (laptop / "photo.jpg").unlink()
    r = as_user(server, "neo-push", "--delete", str(laptop), backup, password=BACKUP_PW)
    assert r.returncode == 1 and "needs the write right on laptop; alice.laptop has append" in r.stderr
    r = as_user(server, "neo-prune", "--keep-last", "1", backup, password=BACKUP_PW)
    assert r.returncode == 1 and "prune needs the full right on laptop; alice.laptop has append" in r.stderr
    r = as_user(server, "neo-target", "remove", "--yes", backup, password=BACKUP_PW)
    assert r.returncode == 1 and "needs the full right on laptop; alice.laptop has append" in r.stderr
    assert js(server.cli("neo-ls", "--json", server.remote("laptop") + "/", "--snapshots"))["snapshots"]

    # quotas: set on the running server, refused with the numbers, usage shown by neo-ls --usage
    ok(admin(server.data, "account", "set", "alice", "--quota", "300KB", "--per-file", "1KiB", "--per-dir", "1KiB"))
    usage = js(server.cli("neo-ls", "--usage", "--json", f"alice@{host}"))
    assert usage["quota"] == 300_000 and usage["used"] == usage["stored_bytes"] + usage["charges"]
    assert {t["name"] for t in usage["targets"]} == {"documents", "laptop"}
    big = tree(tmp_path / "big", {"video.bin": os.urandom(400_000)})
    r = as_user(server, "neo-push", str(big), backup, password=BACKUP_PW)
    assert r.returncode == 1 and "account alice's quota is full" in r.stderr, r.stderr
    assert "account alice uses" not in r.stderr  # a grantee does not see the owner's totals
    assert js(server.cli("neo-ls", "--usage", "--json", f"alice@{host}"))["used"] == usage["used"]
    text = ok(server.cli("neo-ls", "--usage", f"alice@{host}")).stdout
    assert "used of 293.0 KiB" in text and "laptop" in text
    sub = js(as_user(server, "neo-ls", "--usage", "--json", f"ssh://alice.laptop@{host}", password=BACKUP_PW))
    assert sub["charged_to"] == "alice" and sub["targets"] == []

    # revoke applies at once; removing a target drops its grants
    ok(server.cli(*share, "revoke", "presentations", "--from", "alice.viewer"))
    r = as_user(server, "neo-pull", f"{viewer}/presentations", str(tmp_path / "again"), password=VIEWER_PW)
    assert r.returncode == 1 and "no grant called 'presentations'" in r.stderr
    removed = js(server.cli("neo-target", "remove", "--yes", "--json", server.remote("laptop")))
    assert removed["removed"] == "laptop" and removed["snapshots"] == 1
    assert "laptop" not in {t["name"] for t in js(server.cli("neo-ls", "--json", f"alice@{host}"))["targets"]}
    assert js(admin(server.data, "grant", "list", "--json")) == []
    server.stop()
    log = server.log_text()
    for secret in (PASSWORD, VIEWER_PW, BACKUP_PW):
        assert secret not in log
    assert_clean(log)


def test_failed_logins_are_throttled(server: RunningServer, tmp_path: Path) -> None:
    remote = f"tls://alice@127.0.0.1:{server.tls_port}"
    for _ in range(5):
        r = as_user(server, "neo-ls", remote, password="wrong guess 1234")
        assert r.returncode == 3 and "authentication failed" in r.stderr, r.stderr
    r = as_user(server, "neo-ls", remote, password=PASSWORD)
    # the wait counts down from 30 s while this client starts (the exact figure is tested on a clock)
    wait = re.search(r"too many failed logins; try again in (\d+) s", r.stderr)
    assert r.returncode == 3 and wait is not None and 20 <= int(wait.group(1)) <= 30, r.stderr
    # SSH from the same address is refused too, before any password check
    r = as_user(server, "neo-ls", f"ssh://alice@127.0.0.1:{server.ssh_port}", password=PASSWORD)
    assert r.returncode == 3 and "too many failed logins" in r.stderr, r.stderr
    server.stop()
    log = server.log_text()
    assert "login throttled: account=alice address=127.0.0.1" in log
    assert "login failed: account=alice" in log
    assert "wrong guess 1234" not in log and PASSWORD not in log
    assert_clean(log)


def with_key(server: RunningServer, key: Path, program: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a client with only ``key`` (no password, no agent)."""
    argv = [str(BIN / program), "-i", str(key), "--known-hosts", str(server.known_hosts), "--accept-new-host-key",
            "--no-agent", *args]  # fmt: skip
    return subprocess.run(argv, env=server.env(), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_sub_account_key_login_and_per_address_throttling(server: RunningServer, tmp_path: Path) -> None:
    """A sub-account made with neo-share with only an SSH key (and one given a key by neo-admin key add) logs in
    with that key over SSH and sees its grants; then guesses at several accounts from one address block that
    address for everyone, the right password included."""
    host = f"127.0.0.1:{server.ssh_port}"
    ok(server.cli("neo-push", "--accept-new-host-key", str(tree(tmp_path / "laptop", {"a.txt": b"hello"})),
                  server.remote("laptop")))  # fmt: skip
    keys = {}
    for name in ("laptop", "phone"):
        keys[name] = tmp_path / f"{name}_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys[name])], check=True)
    share = ["neo-share", "--accept-new-host-key", f"alice@{host}"]
    ok(server.cli(*share, "subaccount", "add", "alice.laptop", "--no-password", "--ssh-key", f"{keys['laptop']}.pub"))
    ok(server.cli(*share, "grant", "laptop", "--to", "alice.laptop", "--right", "append"))
    targets = js(with_key(server, keys["laptop"], "neo-ls", "--json", f"ssh://alice.laptop@{host}"))["targets"]
    assert [(t["name"], t["right"], t["owner"]) for t in targets] == [("laptop", "append", "alice")]
    listed = js(with_key(server, keys["laptop"], "neo-ls", "--json", f"ssh://alice.laptop@{host}/laptop"))
    assert "a.txt" in json.dumps(listed)
    # another key is not the sub-account's; neo-admin key add makes it one
    r = with_key(server, keys["phone"], "neo-ls", f"ssh://alice.laptop@{host}")
    assert r.returncode == 3, r.stderr
    ok(admin(server.data, "key", "add", "alice.laptop", f"{keys['phone']}.pub"))
    assert js(with_key(server, keys["phone"], "neo-ls", "--json", f"ssh://alice.laptop@{host}"))["targets"]

    # per address: one wrong password for each of five names (none blocked by its own count) blocks the address
    tls = f"tls://%s@127.0.0.1:{server.tls_port}"
    for name in ("alice", "bob", "carol", "dave", "erin"):
        r = as_user(server, "neo-ls", tls % name, password="a wrong guess")
        assert r.returncode == 3 and "authentication failed" in r.stderr, r.stderr
    r = as_user(server, "neo-ls", tls % "alice", password=PASSWORD)
    assert r.returncode == 3 and "too many failed logins" in r.stderr, r.stderr
    server.stop()
    log = server.log_text()
    assert "login: account=alice.laptop" in log and "method=publickey" in log
    assert "login throttled: account=alice address=127.0.0.1" in log
    assert_clean(log)
