"""neo-admin's sharing commands, as the installed entry point: sub-accounts, quotas (SpaceQuota-style sizes), grants,
account show with usage, target list and remove."""

from __future__ import annotations

import json
import time
from pathlib import Path

import blake3
import pytest
from repo_support import store_chunk
from test_admin import admin

from neotwist.chunking import DEFAULT_PARAMS
from neotwist.server.accounts import AccountStore
from neotwist.server.repository import Repository
from neotwist.sizes import parse_size
from neotwist.wire.messages import Entry


def push(data: Path, account: str, target: str, files: dict[str, bytes]) -> None:
    """Store a snapshot directly through the repository (the server need not run for neo-admin)."""
    store = AccountStore(data / "accounts.sqlite", bcrypt_rounds=4)
    owner = store.get(account)
    assert owner is not None
    repository = Repository(data / "repo")
    try:
        t = repository.create_target(owner.id, target, encrypted=False, chunker=DEFAULT_PARAMS)
        entries = [Entry("", "d", 0o755, 0, 0)]
        for name, content in files.items():
            cid = blake3.blake3(content).digest()
            store_chunk(t, cid, 0, len(content), content)
            entries.append(Entry(name, "f", 0o644, 0, len(content), cid))
        p = t.begin_push("", False)
        p.add(entries)
        p.commit(time.time())
    finally:
        repository.close()


def test_parse_size() -> None:
    assert parse_size("100000000") == 100_000_000
    assert parse_size("100MB") == 100_000_000
    assert parse_size("1GiB") == 2**30
    assert parse_size("4 KiB") == 4096
    assert parse_size("1.5k") == 1500
    assert parse_size("none", allow_unlimited=True) is None
    for bad in ["", "-1", "12 apples", "none", "0x10"]:
        with pytest.raises(ValueError, match="not a size"):
            parse_size(bad)


def test_sub_accounts_quotas_and_show(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert admin(data, "account", "add", "alice", "--password-stdin", stdin="pw\n").returncode == 0
    r = admin(data, "account", "add", "alice.viewer", "--parent", "alice", "--password-stdin", stdin="pw2\n")
    assert r.returncode == 0 and "sub-account of alice" in r.stdout, r.stderr
    r = admin(data, "account", "add", "x", "--parent", "nobody", "--no-password")
    assert r.returncode == 1 and "no such account: 'nobody'" in r.stderr
    listed = json.loads(admin(data, "account", "list", "--json").stdout)
    assert {a["name"]: a["parent"] for a in listed} == {"alice": None, "alice.viewer": "alice"}

    r = admin(data, "account", "set", "alice", "--SpaceQuota", "100MB", "--space-per-file", "4KiB", "--per-dir", "512")
    assert r.returncode == 0, r.stderr
    assert "quota 100,000,000 bytes, per file 4,096 bytes, per dir 512 bytes" in r.stdout
    r = admin(data, "account", "set", "alice", "--quota", "lots")
    assert r.returncode == 1 and "not a size" in r.stderr
    r = admin(data, "account", "set", "alice.viewer", "--quota", "1GB")
    assert r.returncode == 1 and "charged to 'alice'" in r.stderr

    push(data, "alice", "documents", {"a": b"x" * 1000, "b": b"y" * 10})
    shown = json.loads(admin(data, "account", "show", "alice", "--json").stdout)
    usage = shown["usage"]
    assert (usage["stored_bytes"], usage["file_versions"], usage["dir_versions"]) == (1010, 2, 1)
    assert usage["used"] == 1010 + 2 * 4096 + 512 and usage["quota"] == 100_000_000
    assert shown["sub_accounts"] == ["alice.viewer"]
    text = admin(data, "account", "show", "alice").stdout
    assert "usage         9,714 B (9.5 KiB) of 100,000,000 B (95.4 MiB)" in text
    assert "target      documents: 1,010 B" in text
    viewer = admin(data, "account", "show", "alice.viewer").stdout
    assert "none of its own: what it pushes is charged to alice" in viewer
    assert admin(data, "account", "set", "alice", "--quota", "none").returncode == 0
    assert json.loads(admin(data, "account", "show", "alice", "--json").stdout)["usage"]["quota"] is None


def test_grants_and_targets(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in ("alice", "bob"):
        assert admin(data, "account", "add", name, "--no-password").returncode == 0
    assert admin(data, "account", "add", "alice.viewer", "--parent", "alice", "--no-password").returncode == 0
    push(data, "alice", "documents", {"presentations/deck": b"d", "private/p": b"p"})
    push(data, "bob", "slides", {"mine": b"m"})

    where = "alice/documents/presentations"
    r = admin(data, "grant", "add", "alice.viewer", where, "--right", "read", "--as", "slides")
    assert r.returncode == 0
    assert "granted: alice.viewer has read on alice/documents/presentations as 'slides'" in r.stdout
    r = admin(data, "grant", "add", "alice.viewer", where, "--right", "append", "--as", "slides")
    assert r.returncode == 0 and r.stdout.startswith("changed: ")
    # bob has a target called "slides": a grant by that name would hide it
    r = admin(data, "grant", "add", "bob", "alice/documents/presentations", "--right", "read", "--as", "slides")
    assert r.returncode == 1 and "bob has a target called 'slides' itself" in r.stderr
    r = admin(data, "grant", "add", "bob", "alice/documents/../private", "--right", "read")
    assert r.returncode == 1 and "'..'" in r.stderr
    r = admin(data, "grant", "add", "bob", "alice/documents", "--right", "admin")
    assert r.returncode == 2
    assert admin(data, "grant", "add", "bob", "alice/documents", "--right", "read", "--as", "alices").returncode == 0
    grants = json.loads(admin(data, "grant", "list", "--json").stdout)
    assert [(g["grantee"], g["name"], g["right"], g["path"]) for g in grants] == [
        ("alice.viewer", "slides", "append", "presentations"),
        ("bob", "alices", "read", ""),
    ]
    assert len(json.loads(admin(data, "grant", "list", "bob", "--json").stdout)) == 1
    assert admin(data, "grant", "remove", "bob", "alices").returncode == 0
    r = admin(data, "grant", "remove", "bob", "alices")
    assert r.returncode == 1 and "no grant called 'alices'" in r.stderr

    targets = json.loads(admin(data, "target", "list", "alice", "--json").stdout)
    assert [(t["name"], t["snapshots"]) for t in targets] == [("documents", 1)]
    r = admin(data, "account", "remove", "alice")
    assert r.returncode == 1 and "owns 1 target(s) (documents)" in r.stderr
    r = admin(data, "target", "remove", "alice", "documents")  # no terminal, no --yes
    assert r.returncode == 1 and "--yes" in r.stderr
    r = admin(data, "target", "remove", "alice", "documents", "--yes", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "account": "alice", "target": "documents", "snapshots": 1, "stored_bytes": 2, "grants_removed": 1,
    }  # fmt: skip
    assert json.loads(admin(data, "target", "list", "alice", "--json").stdout) == []
    assert [p.name for p in (data / "repo").iterdir() if p.name.startswith("t")] == ["t2"]  # bob's only
    r = admin(data, "account", "remove", "alice")
    assert r.returncode == 0 and "with its sub-accounts alice.viewer" in r.stdout
