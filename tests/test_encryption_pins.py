"""Encryption pins and the order of opens: a server may not turn an encrypted target into plaintext (or another
key's) for a client that has seen it encrypted, and no plaintext sub-path is sent before the client knows
whether the target is encrypted.

Real ``twistd``, real CLIs; the server is made to lie by editing its catalog, as a malicious operator would.
What the client sends is recorded on the wire itself: ``--ssh-command`` runs OpenSSH through ``tee``, so the
record is every byte the server received.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import sys
from pathlib import Path

import pytest
from support import PASSWORD, RunningServer
from test_encryption_e2e import FAST_KDF, PASSPHRASE, found_in, init_key, key_env, neo_key, run_json

from neotwist.client.pins import HEADER, PinFile, PinFileError, TargetPin
from neotwist.client.remote import parse_remote

if shutil.which("ssh-keygen") is None or shutil.which("ssh") is None:
    pytest.skip("OpenSSH tools not installed", allow_module_level=True)


# --- the pin file alone ----------------------------------------------------------------------------------


def test_pin_file_records_replaces_forgets_and_stays_readable(tmp_path: Path) -> None:
    pins = PinFile(tmp_path / "conf" / "encrypted_targets")
    assert pins.lookup("[nas]:4322", "alice", "papers") is None and pins.forget("[nas]:4322", "alice", "x") is None
    assert pins.record("[nas]:4322", "alice", "papers", "a" * 32) is True
    assert pins.record("[nas]:4322", "alice", "papers", "a" * 32) is False  # already so: not rewritten
    pins.record("[nas]:4323", "alice", "papers", "b" * 32)  # the tls port is another address
    pins.record("[nas]:4322", "alice", "papers", "c" * 32)  # a new key id replaces the old pin
    text = pins.path.read_text()
    assert text.startswith(HEADER)
    assert text[len(HEADER) :] == f"[nas]:4323 alice papers {'b' * 32}\n[nas]:4322 alice papers {'c' * 32}\n"
    assert stat.S_IMODE(pins.path.stat().st_mode) == 0o600
    found = pins.lookup("[nas]:4322", "alice", "papers")
    assert found is not None and found.key_id == "c" * 32 and found.lineno == 5
    gone = pins.forget("[nas]:4322", "alice", "papers")
    assert gone is not None and gone.key_id == "c" * 32
    assert pins.lookup("[nas]:4322", "alice", "papers") is None
    assert sorted(p.name for p in pins.path.parent.iterdir()) == ["encrypted_targets", "encrypted_targets.lock"]
    # a remote names its pin as known_hosts names the address
    pin = TargetPin.for_remote(parse_remote("tls://alice@NAS.example/papers/2024"), pins)
    assert (pin.address, pin.account, pin.target) == ("[nas.example]:4323", "alice", "papers")
    assert pin.remote == "alice@NAS.example:4323/papers"
    # every port of one host name: ssh's, tls's, port 22's bare name, an IPv6 address's brackets
    pins.record("[nas]:4322", "alice", "papers", "c" * 32)
    pins.record("nas", "alice", "papers", "d" * 32)
    pins.record("[nas]:4322", "alice", "other", "e" * 32)
    pins.record("[nas]:4322", "bob", "papers", "e" * 32)
    pins.record("[nas.example]:4322", "alice", "papers", "e" * 32)
    pins.record("[::1]:4322", "alice", "papers", "f" * 32)
    gone_all = pins.forget_host("NAS", "alice", "papers")
    assert [p.address for p in gone_all] == ["[nas]:4323", "[nas]:4322", "nas"]
    assert [(p.address, p.account, p.target) for p in pins.pins()] == [
        ("[nas]:4322", "alice", "other"), ("[nas]:4322", "bob", "papers"), ("[nas.example]:4322", "alice", "papers"),
        ("[::1]:4322", "alice", "papers"),
    ]  # fmt: skip
    assert [p.address for p in pins.forget_host("::1", "alice", "papers")] == ["[::1]:4322"]
    assert pins.forget_host("nas", "alice", "papers") == []


def test_a_malformed_pin_line_is_an_error_not_skipped(tmp_path: Path) -> None:
    """Skipping it would silently drop the pin, re-opening the downgrade it exists to stop."""
    path = tmp_path / "encrypted_targets"
    path.write_text(f"# comment\n\n[nas]:4322 alice papers {'a' * 32}\n[nas]:4322 alice broken zz\n")
    with pytest.raises(PinFileError, match=r"line 4 of .* is not 'ADDRESS ACCOUNT TARGET KEY_ID'"):
        PinFile(path).lookup("[nas]:4322", "alice", "papers")


# --- downgrades end to end -------------------------------------------------------------------------------


def _catalog(server: RunningServer, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Edit the server's catalog while it is stopped (what a malicious operator can do)."""
    db = sqlite3.connect(server.data / "repo" / "catalog.sqlite")
    try:
        rows = db.execute(sql, args).fetchall()
        db.commit()
        return rows
    finally:
        db.close()


def _pin_file(server: RunningServer) -> Path:
    return server.tmp / "config" / "neophytos" / "encrypted_targets"


def test_a_server_cannot_downgrade_a_pinned_target(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text("first")
    info = init_key(server)
    run_json(server, "neo-push", "--accept-new-host-key", "--encrypt", str(src), server.remote("vault"))
    pins = _pin_file(server).read_text()
    assert f"[127.0.0.1]:{server.ssh_port} alice vault {info['key_id']}\n" in pins

    # the server now says "vault" is plaintext
    server.stop()
    _catalog(server, "UPDATE targets SET encrypted = 0, key_check = X'' WHERE name = 'vault'")
    server.start()
    secret = b"NEW-FILE-THAT-MUST-NOT-BE-STORED-IN-PLAINTEXT-" + os.urandom(8).hex().encode()
    (src / "docs" / "new.txt").write_bytes(secret)
    out = tmp_path / "out"
    runs = {
        "push": server.cli("neo-push", str(src), server.remote("vault"), env=key_env(server)),
        "push sub-path": server.cli("neo-push", str(src / "docs"), server.remote("vault/docs"), env=key_env(server)),
        "pull": server.cli("neo-pull", server.remote("vault"), str(out), env=key_env(server)),
        "pull sub-path": server.cli("neo-pull", server.remote("vault/docs"), str(out), env=key_env(server)),
        "ls": server.cli("neo-ls", server.remote("vault"), env=key_env(server)),
        "check": server.cli("neo-check", server.remote("vault"), env=key_env(server)),
    }
    for what, r in runs.items():
        assert r.returncode == 3, (what, r.returncode, r.stderr)
        assert "says target vault is not encrypted" in r.stderr and "neo-key forget" in r.stderr, (what, r.stderr)
        assert r.stderr.count("\n") == 1, (what, r.stderr)  # one line
    assert not out.exists()
    server.stop()
    assert found_in(server.data, [secret, b"new.txt"]) == set()  # nothing of the new file reached the server

    # the server names another key (a record of another key's target, copied over)
    server.start()
    other_key = tmp_path / "other.key"
    made = neo_key(server, "init", "--json", *FAST_KDF, "--key-file", str(other_key))
    assert made.returncode == 0, made.stderr
    other_id = json.loads(made.stdout)["key_id"]
    run_json(server, "neo-push", "--encrypt", "--key-file", str(other_key), str(src), server.remote("other"))
    server.stop()
    (record,) = _catalog(server, "SELECT key_check FROM targets WHERE name = 'other'")[0]
    _catalog(server, "UPDATE targets SET encrypted = 1, key_check = ? WHERE name = 'vault'", record)
    server.start()
    r = server.cli("neo-pull", server.remote("vault/docs"), str(out), env=key_env(server))
    assert r.returncode == 3 and f"says target vault is encrypted with {other_id}" in r.stderr, r.stderr
    # the other key file is refused against the pin, before its passphrase is asked
    r = server.cli("neo-pull", "--key-file", str(other_key), server.remote("vault/docs"), str(out), env=server.env())
    assert r.returncode == 1 and f"pinned as encrypted with key {info['key_id']}" in r.stderr, r.stderr
    assert not out.exists()

    # a deliberate change: forget the pin, and the server's word is taken again (and pinned again)
    forgot = neo_key(server, "forget", "--json", server.remote("vault"))
    assert forgot.returncode == 0, forgot.stderr
    assert json.loads(forgot.stdout) == {
        "remote": f"alice@127.0.0.1:{server.ssh_port}/vault", "pins_file": str(_pin_file(server)),
        "forgotten": True, "key_id": info["key_id"],
    }  # fmt: skip
    assert " vault " not in _pin_file(server).read_text()
    again = neo_key(server, "forget", server.remote("vault"))
    assert again.returncode == 0 and "was not pinned" in again.stdout
    run_json(server, "neo-ls", "--snapshots", "--key-file", str(other_key), server.remote("vault"))
    assert f" vault {other_id}\n" in _pin_file(server).read_text()  # pinned again, to the key it now names


def test_a_pinned_target_that_is_gone_is_recreated_encrypted_and_neo_target_remove_forgets_it(
    server: RunningServer, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("x")
    init_key(server)
    run_json(server, "neo-push", "--accept-new-host-key", "--encrypt", str(src), server.remote("t"))
    # removed from another machine (its own config dir): this client still pins "t", and re-creates it encrypted
    elsewhere = tmp_path / "elsewhere"
    other = server.env(XDG_CONFIG_HOME=str(elsewhere / "config"), XDG_CACHE_HOME=str(elsewhere / "cache"))
    r = server.cli("neo-target", "remove", "--yes", "--json", "--accept-new-host-key", server.remote("t"), env=other)
    assert r.returncode == 0 and json.loads(r.stdout)["pin_forgotten"] is False, r.stderr
    assert run_json(server, "neo-push", str(src), server.remote("t"))["encrypted"] is True
    # removed from this client: the pin goes too, and a new target of that name may be plaintext
    removed = run_json(server, "neo-target", "remove", "--yes", server.remote("t"))
    assert removed["pin_forgotten"] is True and " t " not in _pin_file(server).read_text()
    assert run_json(server, "neo-push", str(src), server.remote("t"))["encrypted"] is False

    # pinned over both transports (ssh's port and tls's are two addresses): removing it over one forgets both,
    # and nothing else (another target, the same target under another name of the server)
    run_json(server, "neo-target", "remove", "--yes", server.remote("t"))
    run_json(server, "neo-push", "--encrypt", str(src), server.remote("t"))
    run_json(server, "neo-push", "--encrypt", str(src), server.remote("u"))
    tls = key_env(server, NEO_PASSWORD=PASSWORD)
    run_json(server, "neo-ls", "--accept-new-host-key", server.remote("t", "tls"), env=tls)
    key_id = PinFile(_pin_file(server)).lookup(f"[127.0.0.1]:{server.ssh_port}", "alice", "t")
    assert key_id is not None
    other_name = f"[localhost]:{server.ssh_port} alice t {key_id.key_id}\n"
    with _pin_file(server).open("a") as f:
        f.write(other_name)
    removed = run_json(server, "neo-target", "remove", "--yes", server.remote("t"))
    assert removed["pin_forgotten"] is True
    assert removed["pins_forgotten"] == [
        {"address": f"[127.0.0.1]:{server.ssh_port}", "key_id": key_id.key_id},
        {"address": f"[127.0.0.1]:{server.tls_port}", "key_id": key_id.key_id},
    ]
    left = _pin_file(server).read_text()
    assert " alice u " in left and left.endswith(other_name) and f"[127.0.0.1]:{server.tls_port} alice t" not in left
    assert run_json(server, "neo-push", str(src), server.remote("t", "tls"), env=tls)["encrypted"] is False


def test_a_pinned_target_needs_no_writable_config_dir(server: RunningServer, tmp_path: Path) -> None:
    """An already-pinned target is used without taking the pin file's lock. The lock path is made a directory,
    which no open can create or write even as root (where a read-only mode would not stop anything): before the
    fix every encrypted run failed here with "cannot write the encryption pins" (exit 1)."""
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text("first")
    info = init_key(server)
    run_json(server, "neo-push", "--accept-new-host-key", "--encrypt", str(src), server.remote("vault"))
    lock = _pin_file(server).with_name("encrypted_targets.lock")
    lock.unlink()
    lock.mkdir()
    before = _pin_file(server).read_text()
    (src / "docs" / "b.txt").write_text("second")
    assert run_json(server, "neo-push", str(src), server.remote("vault"))["encrypted"] is True
    assert run_json(server, "neo-push", str(src / "docs"), server.remote("vault/docs"))["encrypted"] is True
    run_json(server, "neo-pull", server.remote("vault"), str(tmp_path / "out"))
    assert (tmp_path / "out" / "docs" / "b.txt").read_text() == "second"
    run_json(server, "neo-pull", server.remote("vault/docs"), str(tmp_path / "out2"))
    assert (tmp_path / "out2" / "a.txt").read_text() == "first"
    run_json(server, "neo-ls", server.remote("vault"))
    run_json(server, "neo-check", server.remote("vault"))
    assert _pin_file(server).read_text() == before
    # a pin that would change still needs the lock, and says so rather than dropping it
    with pytest.raises(PinFileError, match="cannot write the encryption pins"):
        PinFile(_pin_file(server)).record(f"[127.0.0.1]:{server.ssh_port}", "alice", "vault", "f" * 32)
    assert PinFile(_pin_file(server)).record(
        f"[127.0.0.1]:{server.ssh_port}", "alice", "vault", info["key_id"]
    ) is False


def test_require_encryption_protects_a_first_contact(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("x")
    init_key(server)
    run_json(server, "neo-push", "--accept-new-host-key", str(src), server.remote("plain"))
    for program, args in [
        ("neo-push", [str(src), server.remote("plain")]),
        ("neo-push", [str(src), server.remote("plain/sub")]),
        ("neo-pull", [server.remote("plain"), str(tmp_path / "o")]),
        ("neo-ls", [server.remote("plain")]),
        ("neo-check", [server.remote("plain")]),
    ]:
        r = server.cli(program, "--require-encryption", *args, env=key_env(server))
        assert r.returncode == 3 and "--require-encryption was given" in r.stderr, (program, r.stderr)
    assert not (tmp_path / "o").exists()
    missing = server.cli("neo-push", "--require-encryption", str(src), server.remote("new"), env=key_env(server))
    assert missing.returncode == 1 and "add --encrypt" in missing.stderr, missing.stderr
    made = run_json(server, "neo-push", "--require-encryption", "--encrypt", str(src), server.remote("new"))
    assert made["encrypted"] is True
    run_json(server, "neo-ls", "--require-encryption", server.remote("new"))


# --- no plaintext sub-path on the wire -------------------------------------------------------------------

SECRET_DIR, SECRET_SUB = "private-keys-folder", "quarterly-secret-plans"


_TEE_SSH = """\
import os, subprocess, sys, threading
record = open({record!r}, "ab")
ssh = subprocess.Popen(["ssh", *sys.argv[1:]], stdin=subprocess.PIPE)
def pump():
    while data := os.read(0, 65536):
        record.write(data)
        record.flush()
        try:
            ssh.stdin.write(data)
            ssh.stdin.flush()
        except BrokenPipeError:
            break
    ssh.stdin.close()
threading.Thread(target=pump, daemon=True).start()
code = ssh.wait()
record.flush()
os._exit(code)  # at once: the client's stdin may still be open, and the client waits for our stdout to close
"""


def _recording_ssh(server: RunningServer, tmp_path: Path, record: Path) -> str:
    """An --ssh-command that runs OpenSSH with everything the client sends also appended to ``record``."""
    script = tmp_path / "tee_ssh.py"
    script.write_text(_TEE_SSH.format(record=str(record)))
    return (
        f"{sys.executable} {script} -F /dev/null -i {server.key} -o IdentitiesOnly=yes -o BatchMode=yes "
        "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
    )


def test_no_plaintext_sub_path_reaches_the_server(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / SECRET_DIR / SECRET_SUB).mkdir(parents=True)
    (src / SECRET_DIR / SECRET_SUB / "f.txt").write_text("x")
    init_key(server)
    run_json(server, "neo-push", "--accept-new-host-key", "--encrypt", str(src), server.remote("vault"))
    run_json(server, "neo-push", str(src), server.remote("control"))
    record = tmp_path / "sent.bin"
    ssh = _recording_ssh(server, tmp_path, record)
    sub = f"{SECRET_DIR}/{SECRET_SUB}"

    # the control: the same commands on a plaintext target put the names on the wire, so the search works
    run_json(server, "neo-ls", "--ssh-command", ssh, server.remote(f"control/{sub}"))
    assert SECRET_SUB.encode() in record.read_bytes()
    record.unlink()

    # a fresh client holding the key (nothing pinned: the root is opened first), then a pinned one
    fresh = tmp_path / "fresh"
    fresh_env = server.env(XDG_CONFIG_HOME=str(fresh / "config"), XDG_CACHE_HOME=str(fresh / "cache"),
                           NEO_PASSPHRASE=PASSPHRASE)  # fmt: skip
    exported = neo_key(server, "export")
    assert neo_key(server, "import", "-", env=fresh_env, input=exported.stdout).returncode == 0
    fresh_pins = fresh / "config" / "neophytos" / "encrypted_targets"
    for env in (fresh_env, key_env(server)):
        for program, args in [
            ("neo-pull", [server.remote(f"vault/{sub}"), str(tmp_path / "out")]),
            ("neo-ls", ["-R", server.remote(f"vault/{sub}")]),
            ("neo-ls", ["--snapshots", server.remote(f"vault/{SECRET_DIR}")]),
            ("neo-check", [server.remote(f"vault/{sub}")]),
            ("neo-push", [str(src / SECRET_DIR / SECRET_SUB), server.remote(f"vault/{sub}")]),
            ("neo-push", [str(src / SECRET_DIR), server.remote(f"vault/{SECRET_DIR}")]),
        ]:
            if env is fresh_env and fresh_pins.exists():
                fresh_pins.unlink()
            r = server.cli(program, "--ssh-command", ssh, *args, env=env)
            assert r.returncode == 0, (program, r.stderr)
            sent = record.read_bytes()
            assert sent, "nothing recorded"
            leaked = [name for name in (SECRET_DIR, SECRET_SUB, "f.txt") if name.encode() in sent]
            assert leaked == [], f"{program} {args} sent {leaked} in plaintext"
        assert (tmp_path / "out" / "f.txt").read_text() == "x"


def test_a_server_cannot_choose_an_encrypted_targets_chunker(server: RunningServer, tmp_path: Path) -> None:
    """Tiny chunks would tell the server more about sizes and shared content: the chunker of an encrypted
    target is the one its key-check record fixes, and any other is refused (exit 3) before anything moves."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(200_000))
    init_key(server)
    run_json(server, "neo-push", "--accept-new-host-key", "--encrypt", str(src), server.remote("vault"))
    server.stop()
    _catalog(server, "UPDATE targets SET chunker_min = 256, chunker_avg = 512, chunker_max = 2048 WHERE name = 'vault'")
    server.start()
    (src / "b.bin").write_bytes(os.urandom(100_000))
    out = tmp_path / "out"
    runs = {
        "push": server.cli("neo-push", str(src), server.remote("vault"), env=key_env(server)),
        "pull": server.cli("neo-pull", server.remote("vault"), str(out), env=key_env(server)),
        "ls": server.cli("neo-ls", server.remote("vault"), env=key_env(server)),
    }
    for what, r in runs.items():
        assert r.returncode == 3, (what, r.returncode, r.stderr)
        assert "names a chunker for this encrypted target" in r.stderr and "256/512/2048" in r.stderr, (what, r.stderr)
        assert r.stderr.count("\n") == 1, (what, r.stderr)
    assert not out.exists()
