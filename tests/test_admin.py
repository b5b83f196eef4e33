"""neo-admin, run as the installed entry point in a subprocess against a data directory in tmp_path."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from neotwist.server.accounts import AccountStore

NEO_ADMIN = Path(sys.executable).with_name("neo-admin")


def admin(data: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NEO_ADMIN), "--data", str(data), "--bcrypt-rounds", "4", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def pubkey(tmp_path: Path) -> Path:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen not installed")
    keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice@laptop"]
    subprocess.run([*keygen, "-f", str(tmp_path / "k")], check=True)
    return tmp_path / "k.pub"


def test_entry_point_exists() -> None:
    assert NEO_ADMIN.exists(), "neo-admin is not installed in the venv (pip install -e .)"


def test_account_lifecycle(tmp_path: Path, pubkey: Path) -> None:
    data = tmp_path / "data"
    args = ("account", "add", "alice", "--password-stdin", "--ssh-key", str(pubkey))
    r = admin(data, *args, stdin="pw one\nignored\n")
    assert r.returncode == 0, r.stderr
    assert "account alice added" in r.stdout and "SHA256:" in r.stdout
    assert stat.S_IMODE(data.stat().st_mode) == 0o700

    store = AccountStore(data / "accounts.sqlite", bcrypt_rounds=4)
    assert store.verify_password("alice", "pw one") is not None
    assert store.verify_password("alice", "ignored") is None

    r = admin(data, "account", "passwd", "alice", "--password-stdin", stdin="pw two\n")
    assert r.returncode == 0, r.stderr
    assert store.verify_password("alice", "pw one") is None
    assert store.verify_password("alice", "pw two") is not None

    r = admin(data, "account", "add", "bob", "--no-password")
    assert r.returncode == 0, r.stderr
    r = admin(data, "account", "list", "--json")
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    summary = [(a["name"], a["has_password"], a["keys"]) for a in listed]
    assert summary == [("alice", True, 1), ("bob", False, 0)]
    r = admin(data, "account", "list")
    assert r.stdout.splitlines()[0].split("\t") == ["alice", "password=yes", "keys=1"]


def test_keys(tmp_path: Path, pubkey: Path) -> None:
    data = tmp_path / "data"
    assert admin(data, "account", "add", "alice", "--no-password").returncode == 0
    r = admin(data, "key", "add", "alice", str(pubkey))
    assert r.returncode == 0, r.stderr
    r = admin(data, "key", "list", "alice", "--json")
    (record,) = json.loads(r.stdout)
    assert record["comment"] == "alice@laptop" and record["type"] == "ssh-ed25519"
    expected = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(pubkey)], capture_output=True, text=True, check=True
    )
    assert record["fingerprint"] == expected.stdout.split()[1]  # same fingerprint as OpenSSH prints

    r = admin(data, "key", "add", "alice", str(pubkey))
    assert r.returncode == 1 and "already has key" in r.stderr
    r = admin(data, "key", "remove", "alice", "alice@laptop")
    assert r.returncode == 0, r.stderr
    assert json.loads(admin(data, "key", "list", "alice", "--json").stdout) == []


def test_failures_exit_1_with_one_line(tmp_path: Path, pubkey: Path) -> None:
    data = tmp_path / "data"
    assert admin(data, "account", "add", "alice", "--password-stdin", stdin="pw\n").returncode == 0
    cases = [
        (("account", "add", "alice", "--no-password"), "", "already exists"),
        (("account", "add", "bad/name", "--no-password"), "", "account name must be"),
        (("account", "add", "carol", "--password-stdin"), "x" * 73 + "\n", "at most 72"),
        (("account", "add", "dave", "--password-stdin"), "", "no password on stdin"),
        (("account", "add", "erin"), "", "use --password-stdin"),  # no terminal to prompt on
        (("account", "add", "frank", "--no-password", "--ssh-key", str(tmp_path / "k")), "", "private key"),
        (("account", "passwd", "nobody", "--password-stdin"), "pw\n", "no such account"),
        (("key", "add", "nobody", str(pubkey)), "", "no such account"),
        (("key", "add", "alice", str(tmp_path / "missing.pub")), "", "cannot read"),
        (("key", "remove", "alice", "SHA256:nope"), "", "no key with fingerprint or comment"),
    ]
    for args, stdin, message in cases:
        r = admin(data, *args, stdin=stdin)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr
    names = [a["name"] for a in json.loads(admin(data, "account", "list", "--json").stdout)]
    assert names == ["alice"]  # nothing half-created by the failures


def test_missing_data_dir_and_usage_errors(tmp_path: Path) -> None:
    r = admin(tmp_path / "nope", "account", "list")
    assert r.returncode == 1 and "no data directory" in r.stderr
    assert admin(tmp_path, "frobnicate").returncode == 2
    assert admin(tmp_path, "account").returncode == 2
    r = subprocess.run([str(NEO_ADMIN), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "account" in r.stdout and "bcrypt" not in r.stdout
