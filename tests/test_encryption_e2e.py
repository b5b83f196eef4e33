"""Encrypted targets end to end: real ``twistd``, real ``neo-key`` / ``neo-push`` / ``neo-pull``, real files.

What the issue asks, checked on the server's bytes and on restored files:

- the whole data directory (packs, SQLite files and their WAL) holds none of the pushed plaintext, none of the
  file names and none of the plaintext BLAKE3 chunk ids or file hashes (a plaintext target of the same tree on
  the same server is the control: there they are all found, so the search itself works);
- the round trip is byte-identical, sub-paths included, and unchanged files make no new versions;
- a modified ciphertext chunk and a modified manifest entry fail with an error naming the file, and the other
  files still restore;
- a wrong passphrase, a foreign key file or a missing one are refused before anything is written;
- plaintext and encrypted pushes never mix;
- an encrypted re-push after a small change sends about as few bytes as a plaintext one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import struct
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any

import blake3
import msgspec
import pytest
from support import BIN, RunningServer, assert_clean, snapshot_of

from neotwist.chunking import DEFAULT_PARAMS, Chunker
from neotwist.crypto import keyfile
from neotwist.crypto.keys import MasterKey
from neotwist.crypto.names import PathCipher

if shutil.which("ssh-keygen") is None:
    pytest.skip("OpenSSH tools not installed", allow_module_level=True)

PASSPHRASE = "a long passphrase for tests"
FAST_KDF = ("--kdf-memory", "8", "--kdf-iterations", "1")  # the defaults cost 128 MiB and ~0.2 s per run
OLD = 1_600_000_000


def key_env(server: RunningServer, passphrase: str = PASSPHRASE, **extra: str) -> dict[str, str]:
    return server.env(NEO_PASSPHRASE=passphrase, **extra)


def neo_key(server: RunningServer, *args: str, env: dict[str, str] | None = None, **kw: Any) -> Any:
    return subprocess.run(
        [str(BIN / "neo-key"), *args], capture_output=True, text=True, timeout=60, env=env or key_env(server), **kw
    )


def run_json(server: RunningServer, program: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    r = server.cli(program, "--json", *args, env=env or key_env(server))
    assert r.returncode == 0, f"{program} exited {r.returncode}: {r.stderr}\n{server.log_text()[-3000:]}"
    summary: dict[str, Any] = json.loads(r.stdout)
    return summary


def init_key(server: RunningServer, *extra: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    r = neo_key(server, "init", "--json", *FAST_KDF, *extra, env=env)
    assert r.returncode == 0, r.stderr
    info: dict[str, Any] = json.loads(r.stdout)
    return info


MARKERS = [os.urandom(16).hex().encode() for _ in range(4)]
NAMES = ["confidential-quarterly-report.txt", "private-keys-folder", "payroll-spreadsheet.bin",
         "target-text-of-the-symlink", "ünïcödé-sëcret-name.txt", "L" * 200]  # fmt: skip


def make_secret_tree(root: Path) -> None:
    """Distinctive content (markers inside incompressible data, so a plaintext target stores them verbatim),
    distinctive names, a symlink, a long name, an empty directory."""
    rng = random.Random(11)
    (root / NAMES[1] / "empty").mkdir(parents=True)
    (root / NAMES[0]).write_bytes(MARKERS[0] + rng.randbytes(50_000) + MARKERS[1])
    (root / NAMES[1] / NAMES[2]).write_bytes(rng.randbytes(700_000) + MARKERS[2] + rng.randbytes(300_000))
    (root / NAMES[4]).write_bytes(MARKERS[3] + b" readable text " * 1000)
    (root / NAMES[5]).write_bytes(rng.randbytes(1000))
    os.symlink(NAMES[3], root / "link")
    for n, p in enumerate(sorted(root.rglob("*"))):
        if not p.is_symlink():
            os.utime(p, ns=((OLD + n) * 10**9, (OLD + n) * 10**9))


def plaintext_fingerprints(root: Path) -> list[bytes]:
    """Everything about the tree the server must not hold: contents, names, chunk ids, file hashes (raw and
    hex)."""
    out = list(MARKERS) + [n.encode() for n in NAMES]
    chunker = Chunker(DEFAULT_PARAMS)
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            digest = blake3.blake3(data).digest()
            out += [digest, digest.hex().encode()]
            for piece, _view in chunker.cut_bytes(data):
                out += [piece.id, piece.id.hex().encode()]
    return out


def found_in(directory: Path, needles: list[bytes], skip: Path | None = None) -> set[bytes]:
    found: set[bytes] = set()
    for p in directory.rglob("*"):
        if p.is_file() and (skip is None or skip not in p.parents):
            data = p.read_bytes()
            found.update(n for n in needles if n in data)
    return found


def target_dir(server: RunningServer, name: str) -> Path:
    db = sqlite3.connect(server.data / "repo" / "catalog.sqlite")
    try:
        (tid,) = db.execute("SELECT id FROM targets WHERE name = ?", (name,)).fetchone()
    finally:
        db.close()
    return server.data / "repo" / f"t{tid}"


def server_path(server: RunningServer, target: str, plain: str, key_file: Path | None = None) -> str:
    """What the server calls ``plain`` in an encrypted target (the test holds the key, as a client would)."""
    kf = keyfile.load(key_file or server.tmp / "config" / "neophytos" / "key")
    master = MasterKey(keyfile.unlock(kf, PASSPHRASE))
    return PathCipher(master.token_key).encrypt_path(plain)


def test_server_holds_no_plaintext_and_round_trip_is_identical(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_secret_tree(src)
    needles = plaintext_fingerprints(src)
    info = init_key(server)
    assert len(info["key_id"]) == 32 and info["kdf"]["memory_kib"] == 8192
    first = run_json(server, "neo-push", "--accept-new-host-key", "--encrypt", str(src), server.remote("vault"))
    assert first["encrypted"] is True and first["files_changed"] == 4
    control = run_json(server, "neo-push", str(src), server.remote("control"))
    assert control["encrypted"] is False
    plain_dir = target_dir(server, "control")
    wal = [p for p in server.data.rglob("*-wal") if plain_dir not in p.parents]
    assert wal and any(p.stat().st_size for p in wal)  # the server runs: its WAL files hold recent pages
    assert found_in(server.data, needles, skip=plain_dir) == set()
    server.stop()  # and again once SQLite has checkpointed and closed everything
    assert found_in(plain_dir, needles) >= set(MARKERS[:3]) | {n.encode() for n in NAMES[:3]}  # the search works
    leaked = found_in(server.data, needles, skip=plain_dir)
    assert leaked == set(), f"plaintext found on the server: {sorted(leaked)[:5]}"
    leaked_log = {n for n in (n.encode() for n in NAMES) if n in server.log_text().encode()}
    assert leaked_log == set()

    server.start()
    out = tmp_path / "out"
    back = run_json(server, "neo-pull", server.remote("vault"), str(out))
    assert back["encrypted"] is True and back["files_changed"] == 4
    assert snapshot_of(out) == snapshot_of(src)
    # a sub-path given in plaintext (the client encrypts it), including a long name
    sub = tmp_path / "sub"
    run_json(server, "neo-pull", server.remote(f"vault/{NAMES[1]}"), str(sub))
    assert snapshot_of(sub) == snapshot_of(src / NAMES[1])
    # a re-push of the unchanged tree makes no new version (metadata seals deterministically)
    again = run_json(server, "neo-push", str(src), server.remote("vault"))
    assert again["chunks_sent"] == 0 and again["new_bytes"] == 0  # (files this fresh are re-read: racy ctime)
    db = sqlite3.connect(target_dir(server, "vault") / "index.sqlite")
    assert db.execute("SELECT count(*) FROM versions WHERE first > 1").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM versions WHERE mode != 0 OR mtime_ns != 0 OR size != 0").fetchone() == (0,)
    db.close()
    # a sub-path push, listed from the root by a pull of everything
    (src / NAMES[1] / "added.txt").write_text("added through a sub-path push")
    run_json(server, "neo-push", str(src / NAMES[1]), server.remote(f"vault/{NAMES[1]}"))
    run_json(server, "neo-pull", server.remote("vault"), str(out))
    assert snapshot_of(out) == snapshot_of(src)
    server.stop()
    assert found_in(server.data, [b"added through a sub-path push", b"added.txt"], skip=plain_dir) == set()
    assert_clean(server.log_text())


def _flip_chunk(server: RunningServer, target: str, path_enc: str, fix_crc: bool) -> None:
    """Flip one byte of the stored ciphertext of the first chunk of ``path_enc``; with ``fix_crc`` also fix the
    record's CRC, as a malicious server (or one with silently rotten disks and a recomputed CRC) would."""
    tdir = target_dir(server, target)
    db = sqlite3.connect(tdir / "index.sqlite")
    (chunks,) = db.execute("SELECT chunks FROM versions WHERE path = ? AND last IS NULL", (path_enc,)).fetchone()
    pack, offset, length = db.execute(
        "SELECT pack, offset, length FROM chunks WHERE id = ?", (chunks[:32],)
    ).fetchone()
    db.close()
    pack_file = tdir / "packs" / f"{pack // 1000:02}" / f"{pack:08}.pack"
    with open(pack_file, "r+b") as f:
        f.seek(offset + 53 + length // 2)
        byte = f.read(1)
        f.seek(offset + 53 + length // 2)
        f.write(bytes([byte[0] ^ 0x20]))
        if fix_crc:
            f.seek(offset + 53)
            data = f.read(length)
            f.seek(offset)
            header = bytearray(f.read(53))
            struct.pack_into(">I", header, 45, zlib.crc32(data))
            struct.pack_into(">I", header, 49, zlib.crc32(bytes(header[:49])))
            f.seek(offset)
            f.write(bytes(header))


def test_tampered_chunks_and_manifest_fail_by_name(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(5)
    for name in ("a.bin", "b.bin", "c.bin", "d.txt"):
        (src / name).write_bytes(rng.randbytes(200_000))
    init_key(server)
    run_json(server, "neo-push", "--accept-new-host-key", "--encrypt", str(src), server.remote("t"))
    server.stop()
    _flip_chunk(server, "t", server_path(server, "t", "a.bin"), fix_crc=True)  # only the client can tell
    _flip_chunk(server, "t", server_path(server, "t", "b.bin"), fix_crc=False)  # the server's CRC tells
    index = sqlite3.connect(target_dir(server, "t") / "index.sqlite")
    enc_c = server_path(server, "t", "c.bin")
    (meta,) = index.execute("SELECT meta FROM versions WHERE path = ?", (enc_c,)).fetchone()
    index.execute("UPDATE versions SET meta = ? WHERE path = ?", (meta[:-3] + bytes([meta[-3] ^ 1]) + meta[-2:], enc_c))
    index.commit()
    index.close()
    server.start()

    out = tmp_path / "out"
    r = server.cli("neo-pull", "--json", server.remote("t"), str(out), env=key_env(server))
    assert r.returncode == 1, r.stderr  # incomplete: the rest is restored
    # each failure names its file, and the others still restore
    assert "damaged, not restored: a.bin: a chunk failed authentication" in r.stderr, r.stderr
    assert "damaged, not restored: b.bin: its data is damaged on the server" in r.stderr, r.stderr
    assert "damaged, not restored: c.bin: its metadata failed authentication" in r.stderr, r.stderr
    assert "3 file(s) failed their checks" in r.stderr and "everything else was" in r.stderr, r.stderr
    summary = json.loads(r.stdout)
    assert summary["files_changed"] == 1 and summary["files_damaged"] == 3, (summary, r.stderr)
    assert (out / "d.txt").read_bytes() == (src / "d.txt").read_bytes()
    assert sorted(os.listdir(out)) == ["d.txt"]  # nothing half-written, no temp files
    # the server's own check sees the rotten record (not the re-CRC'd one: only the key can), named in plaintext;
    # the pull that met it had the server mark it, so it is lost until a push sends it again
    check = server.cli("neo-check", server.remote("t"), env=key_env(server))
    assert check.returncode == 1 and "lost: b.bin in snapshot(s) 1" in check.stderr, check.stderr
    assert "push the intact file again to heal it" in check.stderr
    assert "a.bin" not in check.stderr
    # a push of the intact files sends b.bin's chunk again: snapshot 1 restores it now
    r = server.cli("neo-push", "--json", "--no-cache", str(src), server.remote("t"), env=key_env(server))
    assert r.returncode == 0 and json.loads(r.stdout)["chunks_sent"] >= 1, r.stderr
    back = tmp_path / "back"
    r = server.cli("neo-pull", "--snapshot", "1", server.remote("t"), str(back), env=key_env(server))
    assert r.returncode == 1 and "b.bin" not in r.stderr, r.stderr  # a.bin and c.bin are still what they were
    assert (back / "b.bin").read_bytes() == (src / "b.bin").read_bytes()
    server.stop()
    assert_clean(server.log_text())


def test_wrong_passphrase_foreign_or_missing_key_write_nothing(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("secret")
    init_key(server)
    run_json(server, "neo-push", "--accept-new-host-key", "--encrypt", str(src), server.remote("t"))
    out = tmp_path / "out"

    wrong = server.cli("neo-pull", server.remote("t"), str(out), env=key_env(server, "not it"))
    assert wrong.returncode == 3 and "wrong passphrase for the key file" in wrong.stderr, wrong.stderr
    assert not out.exists()

    other = tmp_path / "other.key"
    init_key(server, "--key-file", str(other))
    foreign = server.cli("neo-pull", "--key-file", str(other), server.remote("t"), str(out), env=key_env(server))
    assert foreign.returncode == 1 and "the target was encrypted with key" in foreign.stderr, foreign.stderr
    assert not out.exists()

    missing = server.cli("neo-pull", "--key-file", str(tmp_path / "nope"), server.remote("t"), str(out))
    assert missing.returncode == 1 and "neo-key init" in missing.stderr and "neo-key import" in missing.stderr
    assert not out.exists()

    # a push with a foreign key or a wrong passphrase sends nothing: still one snapshot, no new chunk
    (src / "g.txt").write_text("more")
    before = sorted(p.stat().st_size for p in target_dir(server, "t").rglob("*.pack"))
    bad_push = server.cli("neo-push", "--key-file", str(other), str(src), server.remote("t"), env=key_env(server))
    assert bad_push.returncode == 1 and "encrypted with key" in bad_push.stderr, bad_push.stderr
    wrong_push = server.cli("neo-push", str(src), server.remote("t"), env=key_env(server, "nope"))
    assert wrong_push.returncode == 3, wrong_push.stderr
    assert sorted(p.stat().st_size for p in target_dir(server, "t").rglob("*.pack")) == before
    pulled = run_json(server, "neo-pull", server.remote("t"), str(out))
    assert pulled["snapshot"] == 1 and sorted(os.listdir(out)) == ["f.txt"]


def test_plaintext_and_encrypted_targets_never_mix(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("data")
    init_key(server)
    run_json(server, "neo-push", "--accept-new-host-key", str(src), server.remote("plain"))
    refused = server.cli("neo-push", "--encrypt", str(src), server.remote("plain"), env=key_env(server))
    assert refused.returncode == 1 and "exists and is not encrypted" in refused.stderr, refused.stderr
    run_json(server, "neo-push", "--encrypt", str(src), server.remote("sealed"))
    # without the key the client cannot push plaintext into it
    no_key = server.cli("neo-push", "--key-file", str(tmp_path / "none"), str(src), server.remote("sealed"))
    assert no_key.returncode == 1 and "neo-key init" in no_key.stderr, no_key.stderr
    # later pushes find out by themselves (no --encrypt), and pull needs no flag either
    later = run_json(server, "neo-push", str(src), server.remote("sealed"))
    assert later["encrypted"] is True and later["snapshot"] == 2


def test_key_moves_to_another_machine_and_passwd_keeps_it(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("portable")
    init_key(server)
    run_json(server, "neo-push", "--accept-new-host-key", "--encrypt", str(src), server.remote("t"))
    exported = neo_key(server, "export")
    assert exported.returncode == 0 and json.loads(exported.stdout)["format"] == "neophytos-key"

    elsewhere = tmp_path / "elsewhere"
    env2 = server.env(XDG_CONFIG_HOME=str(elsewhere / "config"), XDG_CACHE_HOME=str(elsewhere / "cache"),
                      NEO_PASSPHRASE=PASSPHRASE)  # fmt: skip
    imported = neo_key(server, "import", "-", env=env2, input=exported.stdout)
    assert imported.returncode == 0, imported.stderr
    key2 = elsewhere / "config" / "neophytos" / "key"
    assert oct(key2.stat().st_mode & 0o777) == "0o600"
    twice = neo_key(server, "import", "-", env=env2, input=exported.stdout)
    assert twice.returncode == 0 and "already holds" in twice.stdout
    other = neo_key(server, "init", *FAST_KDF, "--key-file", str(tmp_path / "x.key"))
    assert other.returncode == 0
    clash = neo_key(server, "import", str(tmp_path / "x.key"), env=env2)
    assert clash.returncode == 1 and "already holds another key" in clash.stderr

    run_json(server, "neo-pull", server.remote("t"), str(tmp_path / "there"), env=env2)
    assert (tmp_path / "there" / "f.txt").read_text() == "portable"

    changed = neo_key(server, "passwd", "--passphrase-stdin", *FAST_KDF, env=server.env(),
                      input=f"{PASSPHRASE}\nbrand new passphrase\n")  # fmt: skip
    assert changed.returncode == 0, changed.stderr
    bad = neo_key(server, "passwd", "--passphrase-stdin", env=server.env(), input="wrong\nx\n")
    assert bad.returncode == 3 and "wrong passphrase" in bad.stderr
    new_env = key_env(server, "brand new passphrase")
    run_json(server, "neo-pull", server.remote("t"), str(tmp_path / "again"), env=new_env)
    old = server.cli("neo-pull", server.remote("t"), str(tmp_path / "old"), env=key_env(server))
    assert old.returncode == 3


def _target_keys(server: RunningServer, target: str) -> Any:
    """The target's content keys, as a client holding the key derives them from the server's key-check record."""
    db = sqlite3.connect(server.data / "repo" / "catalog.sqlite")
    (record,) = db.execute("SELECT key_check FROM targets WHERE name = ?", (target,)).fetchone()
    db.close()
    master = MasterKey(keyfile.unlock(keyfile.load(server.tmp / "config" / "neophytos" / "key"), PASSPHRASE))
    return master.open_target(record)


def _ideal_delta(chunker: Chunker, old: list[bytes], new: list[bytes]) -> int:
    """Raw bytes of the distinct chunks of ``new`` that ``old`` does not have: what a perfect delta sends."""
    have = {p.id for data in old for p, _ in chunker.cut_bytes(data)}
    fresh: dict[bytes, int] = {}
    for data in new:
        for p, _ in chunker.cut_bytes(data):
            if p.id not in have:
                fresh[p.id] = p.length
    return sum(fresh.values())


def test_encrypted_delta_push_is_about_as_small_as_plaintext(server: RunningServer, tmp_path: Path) -> None:
    size = 32 * 1024 * 1024
    rng = random.Random(9)
    data = bytearray(rng.randbytes(size))
    text = ("".join(rng.choice("abcdefghij \n") for _ in range(200_000))).encode()
    old = [bytes(data), text]
    src = tmp_path / "src"
    src.mkdir()
    (src / "disk.img").write_bytes(data)
    (src / "notes.txt").write_bytes(text)
    init_key(server)
    time.sleep(1.1)  # the files cache remembers files whose ctime is over a second old (the deltas need it)
    run_json(server, "neo-push", "--accept-new-host-key", str(src), server.remote("plain"))
    run_json(server, "neo-push", "--encrypt", str(src), server.remote("sealed"))
    stale_plain, stale_sealed = tmp_path / "stale-plain", tmp_path / "stale-sealed"
    run_json(server, "neo-pull", server.remote("plain"), str(stale_plain))
    run_json(server, "neo-pull", server.remote("sealed"), str(stale_sealed))

    for _ in range(128):  # 1 % of the image rewritten in 128 places, an insertion in the text
        at = rng.randrange(0, size - 3000)
        data[at : at + 2621] = rng.randbytes(2621)
    new = [bytes(data), text[:1000] + b"inserted line\n" + text[1000:]]
    (src / "disk.img").write_bytes(new[0])
    (src / "notes.txt").write_bytes(new[1])
    plain = run_json(server, "neo-push", str(src), server.remote("plain"))
    sealed = run_json(server, "neo-push", str(src), server.remote("sealed"))
    print(f"\ndelta push bytes: plaintext {plain['bytes_sent']}, encrypted {sealed['bytes_sent']} "
          f"({sealed['bytes_sent'] / plain['bytes_sent']:.3f}x); chunks {plain['chunks_sent']} / "
          f"{sealed['chunks_sent']}")  # fmt: skip
    # Each side sends exactly the chunks its own chunker says changed, nothing more ...
    keys = _target_keys(server, "sealed")
    keyed = Chunker(msgspec.structs.replace(DEFAULT_PARAMS, seed=keys.chunker_seed), keys.id_key)
    assert sealed["chunk_bytes_sent"] == _ideal_delta(keyed, old, new)
    assert plain["chunk_bytes_sent"] == _ideal_delta(Chunker(DEFAULT_PARAMS), old, new)
    assert plain["bytes_sent"] < size * 0.25  # 128 edits touch about 140 chunks of ~40 KiB
    # ... and the two are about the same, chunk for chunk. The encrypted target cuts with a keyed seed, so an
    # edit touches other chunks; over 128 edits, 30 random seeds gave 0.92-1.09x the plaintext delta. The
    # plaintext target sends its changed chunks as deltas inside them (the server cannot read a sealed base to
    # sign it), so the encrypted push is held to what the plaintext one's chunks weigh whole.
    assert plain["chunks_sent_as_deltas"] > 0 and sealed["chunks_sent_as_deltas"] == 0, (plain, sealed)
    assert plain["bytes_sent"] < plain["chunk_bytes_sent"] / 4, plain
    assert sealed["bytes_sent"] <= plain["chunk_bytes_sent"] * 1.2, (plain, sealed)

    back_plain = run_json(server, "neo-pull", server.remote("plain"), str(stale_plain))
    back_sealed = run_json(server, "neo-pull", server.remote("sealed"), str(stale_sealed))
    print(f"delta pull bytes: plaintext {back_plain['bytes_received']}, encrypted {back_sealed['bytes_received']}")
    assert back_sealed["bytes_received"] <= back_plain["bytes_received"] * 1.2
    assert snapshot_of(stale_sealed) == snapshot_of(src) == snapshot_of(stale_plain)


def test_listings_of_an_encrypted_target_are_decrypted(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "report.txt").write_text("first draft")
    (src / "old-notes.txt").write_text("to be deleted")
    os.symlink("docs/report.txt", src / "link")
    init_key(server)
    run_json(server, "neo-push", "--accept-new-host-key", "--encrypt", str(src), server.remote("t"))
    (src / "docs" / "report.txt").write_text("second, longer draft")
    (src / "old-notes.txt").unlink()
    run_json(server, "neo-push", "--delete", str(src), server.remote("t"))
    (src / "docs" / "added.txt").write_text("new")
    run_json(server, "neo-push", str(src / "docs"), server.remote("t/docs"))

    listing = run_json(server, "neo-ls", "-R", server.remote("t"))
    got = {e["path"]: (e["kind"], e["size"], e["link"]) for e in listing["entries"]}
    assert got == {
        "": ("d", 0, None), "docs": ("d", 0, None), "docs/report.txt": ("f", 20, None),
        "docs/added.txt": ("f", 3, None), "link": ("l", 0, "docs/report.txt"),
    }  # fmt: skip
    sub = run_json(server, "neo-ls", server.remote("t/docs"))
    assert sorted(e["path"] for e in sub["entries"]) == ["", "added.txt", "report.txt"]
    versions = run_json(server, "neo-ls", "--versions", "docs/report.txt", server.remote("t"))
    assert [(v["snapshot"], v["size"]) for v in versions["versions"]] == [(1, 11), (2, 20)]
    deleted = run_json(server, "neo-ls", "--deleted", server.remote("t"))
    assert [(d["path"], d["size"], d["last_snapshot"]) for d in deleted["deleted"]] == [("old-notes.txt", 13, 1)]
    snaps = run_json(server, "neo-ls", "--snapshots", server.remote("t"))
    assert [s["root"] for s in snaps["snapshots"]] == ["", "", "docs"]
    human = server.cli("neo-ls", "-R", server.remote("t"), env=key_env(server))
    assert human.returncode == 0 and "docs/report.txt" in human.stdout and "link -> docs/report.txt" in human.stdout

    # neo-pull of an older snapshot and of one file, through plaintext names
    old = tmp_path / "old"
    run_json(server, "neo-pull", "--snapshot", "1", server.remote("t"), str(old))
    assert (old / "old-notes.txt").read_text() == "to be deleted"
    assert (old / "docs" / "report.txt").read_text() == "first draft"
    one = tmp_path / "one"
    one.mkdir()
    run_json(server, "neo-pull", server.remote("t/docs/report.txt"), str(one))
    assert (one / "report.txt").read_text() == "second, longer draft"

    # a missing or deleted path is named in plaintext (the server knows only its tokens)
    for program, args in [("neo-ls", ()), ("neo-pull", (str(tmp_path / "none"),))]:
        r = server.cli(program, server.remote("t/docs/nope"), *args, env=key_env(server))
        assert r.returncode == 1 and "nothing at 'docs/nope' in snapshot 3" in r.stderr, r.stderr
        r = server.cli(program, server.remote("t/old-notes.txt"), *args, env=key_env(server))
        assert r.returncode == 1, r.stderr
        assert "'old-notes.txt' was deleted in snapshot 2; snapshot 1 holds its last version" in r.stderr, r.stderr
        assert "neo-ls --versions old-notes.txt" in r.stderr
    r = server.cli("neo-ls", "--versions", "nope", server.remote("t/docs"), env=key_env(server))
    assert r.returncode == 1 and "no stored version of 'docs/nope'" in r.stderr, r.stderr

    wrong = server.cli("neo-ls", server.remote("t"), env=key_env(server, "nope"))
    assert wrong.returncode == 3 and "wrong passphrase" in wrong.stderr


def test_a_grant_on_an_encrypted_sub_path(server: RunningServer, tmp_path: Path) -> None:
    """The owner grants a sub-path by its encrypted form; the grantee, holding the key, reads and pushes there
    with --grant-root; the server never sees a plaintext name, and the rest of the target stays out of reach."""
    host = f"127.0.0.1:{server.tls_port}"
    src = tmp_path / "papers"
    files = {"year-2024/a.txt": b"alpha", "year-2024/sub/b.bin": os.urandom(50_000), "year-2025/c.txt": b"gamma"}
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    init_key(server)
    run_json(server, "neo-push", "--accept-new-host-key", "--encrypt", str(src), server.remote("papers"))
    token = neo_key(server, "path", "year-2024")
    assert token.returncode == 0, token.stderr
    assert token.stdout.strip() == server_path(server, "papers", "year-2024")
    share = ["neo-share", "--accept-new-host-key", f"alice@127.0.0.1:{server.ssh_port}"]
    r = server.cli(*share, "subaccount", "add", "alice.bob", "--password-stdin", input="bob pass 1\n")
    assert r.returncode == 0, r.stderr
    r = server.cli(*share, "grant", f"papers/{token.stdout.strip()}", "--to", "alice.bob", "--right", "write",
                   "--as", "p2024")  # fmt: skip
    assert r.returncode == 0, r.stderr

    bob_home = tmp_path / "bob"
    bob_env = server.env(XDG_CONFIG_HOME=str(bob_home / "config"), XDG_CACHE_HOME=str(bob_home / "cache"),
                         NEO_PASSWORD="bob pass 1", NEO_PASSPHRASE=PASSPHRASE)  # fmt: skip
    exported = neo_key(server, "export").stdout
    assert neo_key(server, "import", "-", env=bob_env, input=exported).returncode == 0

    def bob(program: str, *args: str) -> Any:
        argv = [str(BIN / program), "--known-hosts", str(tmp_path / "bob_known"), "--accept-new-host-key",
                "--no-agent", *args]  # fmt: skip
        return subprocess.run(argv, env=bob_env, capture_output=True, text=True, timeout=120)

    out = tmp_path / "bob-out"
    lost = bob("neo-pull", f"tls://alice.bob@{host}/p2024", str(out))
    assert lost.returncode == 1 and "--grant-root" in lost.stderr, lost.stderr
    got = bob("neo-pull", "--json", "--grant-root", "year-2024", f"tls://alice.bob@{host}/p2024", str(out))
    assert got.returncode == 0, got.stderr
    assert snapshot_of(out) == snapshot_of(src / "year-2024")
    (out / "from-bob.txt").write_text("bob was here")
    pushed = bob("neo-push", "--json", "--grant-root", "year-2024", str(out), f"tls://alice.bob@{host}/p2024")
    # (the grantee's push is confined to the grant like any other: the server checks the right, not the key)
    assert pushed.returncode == 0 and json.loads(pushed.stdout)["encrypted"] is True, pushed.stderr
    listed = bob("neo-ls", "--json", "-R", "--grant-root", "year-2024", f"tls://alice.bob@{host}/p2024")
    assert sorted(e["path"] for e in json.loads(listed.stdout)["entries"]) == [
        "", "a.txt", "from-bob.txt", "sub", "sub/b.bin"
    ], listed.stderr

    back = tmp_path / "alice-back"
    run_json(server, "neo-pull", server.remote("papers"), str(back))
    assert (back / "year-2024" / "from-bob.txt").read_text() == "bob was here"
    assert (back / "year-2025" / "c.txt").read_bytes() == b"gamma"
    server.stop()
    assert found_in(server.data, [b"from-bob", b"bob was here", b"year-2024", b"year-2025"]) == set()
