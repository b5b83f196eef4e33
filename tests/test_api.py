"""The public client API (neotwist.client.api): the example script under etc/ against a real twistd over real
OpenSSH-compatible SSH and TLS, the blocking wrapper in a process of its own, and the same script's work run
in memory with neotwist.testing, as a user tests theirs."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from support import PASSWORD, RunningServer, snapshot_of
from twisted.trial.unittest import TestCase

from neotwist.client import api
from neotwist.testing import Kit
from neotwist.wire.errors import ErrorCode, RemoteError

EXAMPLE = Path(__file__).parent.parent / "etc" / "backup-and-verify.py"


def _tree(root: Path) -> Path:
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "docs" / "a.txt").write_bytes(b"alpha\n" * 1000)
    (root / "docs" / "deep" / "b.bin").write_bytes(os.urandom(300_000))
    (root / "empty").touch()
    return root


def _example(server: RunningServer, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), "-i", str(server.key), "--known-hosts", str(server.known_hosts),
         "--accept-new-host-key", *args],
        capture_output=True, text=True, timeout=300, env=server.env(**env),
    )  # fmt: skip


def test_the_example_script_backs_up_checks_and_restores_against_twistd(server: RunningServer, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    out = tmp_path / "out"
    r = _example(server, str(src), server.remote("nightly"), str(out))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["snapshot"] == 1 and result["check_ok"] is True and result["differences"] == []
    assert result["files"] == 3 and result["restored"] == 3 and result["snapshots"] == [1]
    assert snapshot_of(out) == snapshot_of(src)
    # over TLS with the password from the environment: a second snapshot, the same tree back
    (src / "docs" / "a.txt").write_bytes(b"changed\n")
    r = _example(server, str(src), server.remote("nightly", "tls"), str(tmp_path / "out2"), NEO_PASSWORD=PASSWORD)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["snapshots"] == [1, 2]
    assert snapshot_of(tmp_path / "out2") == snapshot_of(src)
    # a wrong password is a typed refusal: exit 3
    r = _example(server, str(src), server.remote("nightly", "tls"), str(tmp_path / "out3"), NEO_PASSWORD="wrong")
    assert r.returncode == 3 and "authentication failed" in r.stderr, r.stderr


BLOCKING = """
import json, sys
from neotwist.client import api
options = api.ConnectOptions(identity_files=[sys.argv[2]], known_hosts=__import__("pathlib").Path(sys.argv[3]),
                             accept_new_host_key=True)
with api.connect_blocking(sys.argv[1], options) as client:
    summary = client.push(sys.argv[4], "blocking")
    snapshot, entries = client.ls("blocking", recursive=True)
    try:
        client.ls("blocking", "no/such/path")
        refused = None
    except api.RemoteError as e:
        refused = str(e.code)
    print(json.dumps({"snapshot": summary.snapshot, "listed": snapshot, "paths": sorted(e.path for e in entries),
                      "targets": [t.name for t in client.targets()], "refused": refused}))
"""


def test_the_blocking_wrapper_needs_no_reactor_of_the_script(server: RunningServer, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    r = subprocess.run(
        [sys.executable, "-c", BLOCKING, server.remote(""), str(server.key), str(server.known_hosts), str(src)],
        capture_output=True, text=True, timeout=300, env=server.env(),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["snapshot"] == 1 and got["listed"] == 1 and got["targets"] == ["blocking"]
    assert got["paths"] == ["", "docs", "docs/a.txt", "docs/deep", "docs/deep/b.bin", "empty"]
    assert got["refused"] == ErrorCode.NO_SUCH_PATH


def _load_example() -> Any:
    spec = importlib.util.spec_from_file_location("backup_and_verify", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class InMemoryTests(TestCase):
    """The example's work and the API's calls against neotwist.testing's in-memory server."""

    timeout = 120

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="neo-api-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.kit = Kit(self.tmp / "server")
        self.addCleanup(self.kit.close)
        self.kit.account("alice")

    async def test_the_example_script_in_memory(self) -> None:
        src = _tree(self.tmp / "src")
        client = await self.kit.client("alice")
        try:
            result = await _load_example().backup_and_verify(client, str(src), "docs", str(self.tmp / "out"))
        finally:
            await client.close()
        assert result["check_ok"] and result["differences"] == [] and result["snapshots"] == [1]
        assert snapshot_of(self.tmp / "out") == snapshot_of(src)

    async def test_targets_ls_snapshots_prune_and_typed_errors(self) -> None:
        src = _tree(self.tmp / "src")
        client = await self.kit.client("alice")
        try:
            for _ in range(3):
                await client.push(str(src), "t", options=api.PushOptions(delete=True))
            assert [t.name for t in await client.targets()] == ["t"]
            assert [s.id for s in await client.snapshots("t")] == [1, 2, 3]
            snapshot, entries = await client.ls("t", "docs")
            assert snapshot == 3 and sorted(e.path for e in entries) == ["", "a.txt", "deep"]
            _, entries = await client.ls("t", "docs", snapshot=1, recursive=True)
            assert "deep/b.bin" in {e.path for e in entries}
            pruned = await client.prune("t", {"keep_last": 1})
            assert (pruned.kept, pruned.removed) == (1, 2)
            assert [s.id for s in await client.snapshots("t")] == [3]
            with pytest.raises(RemoteError) as no_target:
                await client.ls("nope")
            assert no_target.value.code == ErrorCode.NO_SUCH_TARGET
            with pytest.raises(RemoteError) as pruned_away:
                await client.ls("t", snapshot=1)
            assert pruned_away.value.code == ErrorCode.NO_SUCH_SNAPSHOT
            usage = await client.usage()
            assert usage.account == "alice" and usage.stored_bytes > 300_000
        finally:
            await client.close()

    async def test_an_encrypted_target_needs_its_key(self) -> None:
        src = _tree(self.tmp / "src")
        client = await self.kit.client("alice")
        try:
            with pytest.raises(api.EncryptionRefused, match="needs a key"):
                await client.push(str(src), "secret", options=api.PushOptions(encrypt=True))
        finally:
            await client.close()

    async def test_a_target_is_opened_in_one_flow_and_named_in_errors(self) -> None:
        src = _tree(self.tmp / "src")
        client = await self.kit.client("alice")
        try:
            await client.push(str(src), "t")
            sent: list[str] = []
            request = client.peer.request

            def spy(message: Any, more: Any = None) -> Any:
                sent.append(type(message).__name__)
                return request(message, more)

            client.peer.request = spy
            # a plaintext sub-path goes out only after the root said the target is not encrypted: the close of
            # the probe and the open of the sub-path share a round trip
            target = await client.open("t", "docs")
            assert sent == ["Open", "Close", "Open"]
            assert not target.encrypted and target.key_id is None and target.latest == 1
            assert target.chunker == target.opened.chunker
            snapshot, entries = await target.entries(recursive=True)
            assert snapshot == 1 and {e.path for e in entries} == {"", "a.txt", "deep", "deep/b.bin"}
            with pytest.raises(RemoteError) as missing:
                await target.versions("nothing/here")
            assert missing.value.code == ErrorCode.NO_SUCH_PATH
            await target.close()
        finally:
            await client.close()
