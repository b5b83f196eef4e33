"""The crypto modules on their own: key file, subkeys and key check, chunk sealing, names, metadata, trees."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import blake3
import msgspec
import pytest
import zstandard

from neotwist import paths
from neotwist.crypto import AuthenticationFailed, KeyFileError, WrongKey, WrongPassphrase, keyfile
from neotwist.crypto.chunks import OVERHEAD, ChunkSealer
from neotwist.crypto.keys import KEY_CHECK_SIZE, MasterKey, key_check_id
from neotwist.crypto.meta import EntryMeta, MetaSealer
from neotwist.crypto.names import TOKEN_CHARS, PathCipher
from neotwist.crypto.tree import TreeCipher
from neotwist.wire import limits
from neotwist.wire.messages import Entry

FAST = keyfile.KdfParams("argon2id", b"s" * 16, keyfile.MIN_MEMORY_KIB, 1, 1)


def fast() -> keyfile.KdfParams:
    return keyfile.KdfParams("argon2id", os.urandom(16), keyfile.MIN_MEMORY_KIB, 1, 1)


# --- key file ------------------------------------------------------------------------------------------------


def test_key_file_round_trip_stores_kdf_params_and_unlocks_only_with_the_passphrase(tmp_path: Path) -> None:
    kf, master = keyfile.create("open sesame", fast())
    path = tmp_path / "cfg" / "key"
    keyfile.save(path, kf)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["format"] == "neophytos-key" and doc["version"] == 1
    assert doc["kdf"]["algorithm"] == "argon2id"
    assert doc["kdf"]["memory_kib"] == keyfile.MIN_MEMORY_KIB and doc["kdf"]["iterations"] == 1
    assert doc["key_id"] == MasterKey(master).id.hex()
    assert master not in path.read_bytes()
    loaded = keyfile.load(path)
    assert loaded == kf
    assert keyfile.unlock(loaded, "open sesame") == master
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        keyfile.unlock(loaded, "open sesamE")


def test_default_params_are_memory_hard() -> None:
    params = keyfile.default_params()
    assert params.memory_kib >= 64 * 1024
    assert params.algorithm == ("argon2id" if keyfile.argon2_available() else "scrypt")


def test_unicode_passphrase_is_normalized() -> None:
    kf, master = keyfile.create("caf\u00e9", fast())  # composed é
    assert keyfile.unlock(kf, "cafe\u0301") == master  # decomposed: what some keyboards send


def test_tampered_header_fails_like_a_wrong_passphrase() -> None:
    kf, _ = keyfile.create("pw", fast())
    weaker = msgspec.structs.replace(kf, kdf=msgspec.structs.replace(kf.kdf, iterations=2))
    with pytest.raises(WrongPassphrase):
        keyfile.unlock(weaker, "pw")
    other_id = msgspec.structs.replace(kf, key_id="0" * 32)
    with pytest.raises(WrongPassphrase):
        keyfile.unlock(other_id, "pw")


def test_rewrap_changes_the_passphrase_and_keeps_the_key(tmp_path: Path) -> None:
    kf, master = keyfile.create("old", fast())
    path = tmp_path / "key"
    keyfile.save(path, kf)
    new = keyfile.wrap(keyfile.unlock(keyfile.load(path), "old"), "new", fast())
    keyfile.save(path, new, replace=True)
    again = keyfile.load(path)
    assert again.key_id == kf.key_id and again.kdf.salt != kf.kdf.salt and again.nonce != kf.nonce
    assert keyfile.unlock(again, "new") == master
    with pytest.raises(WrongPassphrase):
        keyfile.unlock(again, "old")
    assert [p.name for p in tmp_path.iterdir()] == ["key"]  # no temporary file left behind


def test_save_never_overwrites_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "key"
    first, _ = keyfile.create("a", fast())
    second, _ = keyfile.create("b", fast())
    keyfile.save(path, first)
    with pytest.raises(KeyFileError, match="already exists"):
        keyfile.save(path, second)
    assert keyfile.load(path) == first
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def test_scrypt_key_files_work_too() -> None:
    params = keyfile.KdfParams("scrypt", os.urandom(16), keyfile.MIN_MEMORY_KIB, 1, 1)
    kf, master = keyfile.create("pw", params)
    assert keyfile.unlock(keyfile.loads(keyfile.dumps(kf)), "pw") == master


def test_malformed_and_missing_key_files_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="neo-key init"):
        keyfile.load(tmp_path / "nothing")
    (tmp_path / "junk").write_text("not json")
    with pytest.raises(KeyFileError, match="not a valid Neophytos key file"):
        keyfile.load(tmp_path / "junk")
    kf, _ = keyfile.create("pw", fast())
    doc = json.loads(keyfile.dumps(kf))
    doc["kdf"]["memory_kib"] = 1 << 40  # a crafted file must not make the client allocate a terabyte
    with pytest.raises(KeyFileError, match="memory_kib"):
        keyfile.loads(json.dumps(doc).encode())
    with pytest.raises(KeyFileError, match="empty"):
        keyfile.create("", fast())


def test_kdf_costs_a_read_key_file_may_ask_are_bounded() -> None:
    """Each field is in range, but together they would stall the client (4 GiB x 64 passes is minutes;
    scrypt at 4 GiB with p = 64 longer): refused when read, with the way out."""
    kf, _ = keyfile.create("pw", fast())
    doc = json.loads(keyfile.dumps(kf))
    doc["kdf"].update(memory_kib=keyfile.MAX_MEMORY_KIB, iterations=keyfile.MAX_ITERATIONS)
    with pytest.raises(KeyFileError, match="more than this client runs"):
        keyfile.loads(json.dumps(doc).encode())
    doc["kdf"].update(algorithm="scrypt", memory_kib=keyfile.MAX_MEMORY_KIB, iterations=1, lanes=64)
    with pytest.raises(KeyFileError, match="scrypt takes iterations 1 and lanes"):
        keyfile.loads(json.dumps(doc).encode())
    doc["kdf"].update(lanes=2, memory_kib=3 * 8192)
    with pytest.raises(KeyFileError, match="power of two"):
        keyfile.loads(json.dumps(doc).encode())
    doc["kdf"].update(memory_kib=keyfile.MAX_MEMORY_KIB, lanes=keyfile.MAX_SCRYPT_P)
    with pytest.raises(KeyFileError, match="more than this client runs"):
        keyfile.loads(json.dumps(doc).encode())
    # the defaults, and the scrypt fallback's, are well inside
    keyfile.check_bounds(keyfile.default_params())
    keyfile.check_bounds(keyfile.KdfParams("scrypt", os.urandom(16), keyfile.DEFAULT_MEMORY_KIB, 1, 1))
    assert keyfile.weak(keyfile.default_params()) is None
    assert keyfile.weak(fast()) is not None


# --- subkeys and the key check -------------------------------------------------------------------------------


def test_key_check_names_the_key_and_refuses_another() -> None:
    mine, other = MasterKey(os.urandom(32)), MasterKey(os.urandom(32))
    record, keys = mine.new_target()
    assert len(record) == KEY_CHECK_SIZE and key_check_id(record) == mine.id
    assert mine.open_target(record).id_key == keys.id_key
    with pytest.raises(WrongKey, match=mine.id.hex()):
        other.open_target(record)
    forged = record[:-1] + bytes([record[-1] ^ 1])
    with pytest.raises(WrongKey, match="does not verify"):
        mine.open_target(forged)
    with pytest.raises(WrongKey, match="missing"):
        mine.open_target(b"")


def test_targets_of_one_key_share_no_content_keys() -> None:
    master = MasterKey(os.urandom(32))
    (_, a), (_, b) = master.new_target(), master.new_target()
    assert len({a.id_key, a.chunk_key, b.id_key, b.chunk_key}) == 4
    assert a.meta_key != b.meta_key and len(a.meta_key) == 64
    assert a.chunker_seed != b.chunker_seed and 0 <= a.chunker_seed < 2**48
    assert "chunk_key" not in repr(a) and a.chunk_key.hex() not in repr(a)


# --- chunks --------------------------------------------------------------------------------------------------


def _sealer() -> ChunkSealer:
    return ChunkSealer(MasterKey(os.urandom(32)).new_target()[1])


def test_chunk_ids_are_keyed_and_seals_round_trip() -> None:
    sealer = _sealer()
    dctx = zstandard.ZstdDecompressor()
    raw = os.urandom(1000) + b"a" * 30000
    cid = sealer.chunk_id(raw)
    assert cid != blake3.blake3(raw).digest() and len(cid) == limits.ID_SIZE
    plain = sealer.seal(cid, raw)
    packed = sealer.seal(cid, raw, zstandard.ZstdCompressor().compress(raw))
    assert len(plain) == len(raw) + OVERHEAD and len(packed) < len(raw) // 2
    assert raw not in plain
    assert sealer.open(cid, plain, dctx) == raw
    assert sealer.open(cid, packed, dctx) == raw


def test_nonces_are_unique() -> None:
    sealer = _sealer()
    raw = b"same chunk every time"
    cid = sealer.chunk_id(raw)
    records = [sealer.seal(cid, raw) for _ in range(2000)]
    assert len({r[1:13] for r in records}) == 2000
    assert len(set(records)) == 2000


def test_a_record_is_bound_to_its_id_and_its_target() -> None:
    sealer = _sealer()
    dctx = zstandard.ZstdDecompressor()
    a, b = b"chunk a" * 100, b"chunk b" * 100
    ida, idb = sealer.chunk_id(a), sealer.chunk_id(b)
    rec_a = sealer.seal(ida, a)
    with pytest.raises(AuthenticationFailed, match="authentication"):
        sealer.open(idb, rec_a, dctx)  # the server answers a get for b with a's record
    flipped = bytearray(rec_a)
    flipped[40] ^= 0x01
    with pytest.raises(AuthenticationFailed):
        sealer.open(ida, bytes(flipped), dctx)
    with pytest.raises(AuthenticationFailed):
        _sealer().open(ida, rec_a, dctx)  # another target's keys
    # a key holder sealing the wrong plaintext under an id is caught by the keyed id check
    with pytest.raises(AuthenticationFailed, match="keyed id"):
        sealer.open(ida, sealer.seal(ida, b), dctx)


# --- names ---------------------------------------------------------------------------------------------------


def _paths() -> PathCipher:
    return PathCipher(MasterKey(os.urandom(32)).token_key)


def test_names_are_short_deterministic_tokens_per_parent_and_safe_on_the_wire() -> None:
    pc = _paths()
    a = pc.encrypt_path("home/alice/.bashrc")
    assert a == pc.encrypt_path("home/alice/.bashrc")
    assert "alice" not in a and "bashrc" not in a
    paths.check_path(a)
    assert [len(c) for c in a.split("/")] == [TOKEN_CHARS] * 3
    # the same name under two parents does not give the same token
    assert pc.encrypt_path("x/.git").split("/")[1] != pc.encrypt_path("y/.git").split("/")[1]
    # lengths do not show: a one-letter name and a 255-byte one give tokens of one size
    assert len(pc.encrypt_name("", "a")) == len(pc.encrypt_name("", "é" * 127)) == TOKEN_CHARS
    assert _paths().encrypt_path("home") != pc.encrypt_path("home")  # another key, other tokens


# --- metadata ------------------------------------------------------------------------------------------------


def test_metadata_is_deterministic_and_bound_to_path_kind_and_chunks() -> None:
    sealer = MetaSealer(os.urandom(64))
    meta = EntryMeta(mode=0o640, mtime_ns=123, size=5, link="")
    ids = os.urandom(64)
    sealed = sealer.seal("p/q", "f", ids, "q.txt", meta)
    assert sealed == sealer.seal("p/q", "f", ids, "q.txt", meta)  # unchanged entries stay unchanged
    assert sealer.open("p/q", "f", ids, sealed) == meta and sealer.open_name("p/q", sealed) == "q.txt"
    with pytest.raises(AuthenticationFailed):
        sealer.open("p/r", "f", ids, sealed)
    with pytest.raises(AuthenticationFailed):
        sealer.open_name("p/r", sealed)
    with pytest.raises(AuthenticationFailed):
        sealer.open("p/q", "d", ids, sealed)
    with pytest.raises(AuthenticationFailed):
        sealer.open("p/q", "f", ids[32:] + ids[:32], sealed)  # chunks reordered
    with pytest.raises(AuthenticationFailed):
        sealer.open("p/q", "f", ids[:32], sealed)  # chunks cut
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(AuthenticationFailed):
        sealer.open("p/q", "f", ids, flipped)
    assert sealer.open_name("p/q", flipped) == "q.txt"  # a tampered entry can still be named
    # padding hides exact lengths
    short = sealer.seal("l", "l", b"", "a", EntryMeta(0o777, 0, 0, link="ab"))
    longer = sealer.seal("l", "l", b"", "abcdefgh", EntryMeta(0o777, 0, 0, link="abcd"))
    assert len(short) == len(longer)


# --- whole trees ---------------------------------------------------------------------------------------------


def _tree(master: MasterKey, keys: object, root: str = "") -> TreeCipher:
    return TreeCipher(master, keys, root)  # type: ignore[arg-type]


def test_tree_round_trip_including_sub_paths_long_names_and_continuations() -> None:
    master = MasterKey(os.urandom(32))
    _, keys = master.new_target()
    long = "L" * 250
    big_ids = os.urandom(32) * (limits.MAX_FILE_CHUNK_IDS + 3)
    items = [
        ("", "d", 0o755, 1, 0, b"", ""),
        ("docs", "d", 0o750, 2, 0, b"", ""),
        ("docs/a.txt", "f", 0o644, 3, 10, os.urandom(64), ""),
        (f"docs/{long}", "d", 0o700, 4, 0, b"", ""),
        (f"docs/{long}/big.bin", "f", 0o600, 5, 99, big_ids, ""),
        ("link", "l", 0o777, 6, 0, b"", "docs/a.txt"),
    ]
    tree = _tree(master, keys)
    sent = [r for item in items for r in tree.encrypt_entries(*item)]  # type: ignore[arg-type]
    assert all(e.mode == 0 and e.mtime_ns == 0 and e.size == 0 and e.link == "" for e in sent)
    assert sum(1 for e in sent if e.more) == 1
    listing = sorted(_merge(sent), key=lambda e: e.path.encode())
    back = _tree(master, keys).decrypt_listing(listing)
    assert back.errors == []
    got = {(e.path, e.kind, e.mode, e.mtime_ns, e.size, e.chunks, e.link) for e in back.entries}
    assert got == set(items)
    # a pull of the sub-path "docs/<long>" through a handle opened at its encrypted form
    sub = _tree(master, keys, f"docs/{long}")
    assert sub.root_enc == tree.paths.encrypt_path(f"docs/{long}")
    prefix = sub.root_enc + "/"
    below = [
        msgspec.structs.replace(e, path=e.path[len(prefix) :] if e.path != sub.root_enc else "")
        for e in listing
        if e.path == sub.root_enc or e.path.startswith(prefix)
    ]
    part = sub.decrypt_listing(below)
    assert part.errors == []
    assert {e.path for e in part.entries} == {"", "big.bin"}
    assert part.remote["big.bin"] == tree.paths.encrypt_path(f"docs/{long}/big.bin")[len(prefix) :]
    assert sub.encrypt_subpath("big.bin") == part.remote["big.bin"]


def test_a_sub_path_push_is_named_from_the_root() -> None:
    master = MasterKey(os.urandom(32))
    _, keys = master.new_target()
    sub = _tree(master, keys, "deep/x")
    sent = sub.encrypt_entries("", "d", 0o755, 1, 0, b"", "") + sub.encrypt_entries("f", "f", 0o644, 1, 0, b"", "")
    prefixed = [msgspec.structs.replace(e, path=sub.root_enc + ("/" + e.path if e.path else "")) for e in sent]
    back = _tree(master, keys).decrypt_listing(prefixed)  # "deep" itself was never listed
    assert back.errors == []
    assert [e.path for e in back.entries] == ["deep/x", "deep/x/f"]


def test_tampered_listings_are_reported_by_name_and_the_rest_survives() -> None:
    master = MasterKey(os.urandom(32))
    _, keys = master.new_target()
    tree = _tree(master, keys)
    a = tree.encrypt_entries("a.txt", "f", 0o644, 1, 3, os.urandom(32), "")[0]
    b = tree.encrypt_entries("b.txt", "f", 0o644, 1, 3, os.urandom(32), "")[0]
    c = tree.encrypt_entries("c.txt", "f", 0o644, 1, 3, os.urandom(32), "")[0]
    d = tree.encrypt_entries("d.txt", "f", 0o644, 1, 3, os.urandom(32), "")[0]
    bad_meta = msgspec.structs.replace(a, meta=a.meta[:-1] + bytes([a.meta[-1] ^ 1]))
    swapped = msgspec.structs.replace(b, chunks=c.chunks)
    moved = msgspec.structs.replace(c, meta=d.meta)
    bad_name = msgspec.structs.replace(d, meta=d.meta[:5] + bytes([d.meta[5] ^ 1]) + d.meta[6:])
    back = tree.decrypt_listing([bad_meta, swapped, moved, bad_name])
    assert back.entries == []
    assert back.errors[0].startswith("a.txt: its metadata failed authentication")
    assert back.errors[1].startswith("b.txt: its metadata failed authentication")
    assert back.errors[2].startswith("(unnamed): its name failed authentication")
    assert back.errors[3].startswith("(unnamed): its name failed authentication")
    other = _tree(MasterKey(os.urandom(32)), MasterKey(os.urandom(32)).new_target()[1]).decrypt_listing([a])
    assert other.entries == [] and "(unnamed)" in other.errors[0]


def _merge(records: list[Entry]) -> list[Entry]:
    out: list[Entry] = []
    for e in records:
        if out and out[-1].more:
            prev = out.pop()
            out.append(msgspec.structs.replace(prev, chunks=prev.chunks + e.chunks, more=e.more))
        else:
            out.append(e)
    return out


def _forged(tree: TreeCipher, name: str, kind: str = "f", recorded: str = "") -> Entry:
    """An entry named ``name`` at the root, sealed with the real key: what a key holder (a grantee) could
    forge. The token and both seals are right; only the name itself is bad."""
    token = tree.paths.encrypt_name("", name)
    meta = EntryMeta(mode=0o644, mtime_ns=1, size=0, link="", path=recorded)
    return Entry(token, kind, 0, 0, 0, b"", "", tree.meta.seal(token, kind, b"", name, meta))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["a/b", "..", ".", "x\0y", "..\0", ""])
def test_a_decrypted_name_that_is_not_a_path_component_is_refused(name: str) -> None:
    master = MasterKey(os.urandom(32))
    _, keys = master.new_target()
    tree = _tree(master, keys)
    good = tree.encrypt_entries("ok.txt", "f", 0o644, 1, 3, b"", "")[0]
    back = tree.decrypt_listing([_forged(tree, name), good])
    assert [e.path for e in back.entries] == ["ok.txt"]  # the rest still decrypts
    assert len(back.errors) == 1 and "its decrypted name" in back.errors[0] and "skipped" in back.errors[0]
    assert back.errors[0].startswith("(unnamed): ")  # never shown as a path made of the bad name


def test_a_recorded_sub_path_with_dot_dot_is_refused() -> None:
    """The root entry of a sub-path push records its plaintext path; a forged one must not name the entries
    below it with '..' components."""
    master = MasterKey(os.urandom(32))
    _, keys = master.new_target()
    tree = _tree(master, keys)
    forged_path = "../etc"
    full = tree.paths.encrypt_path(forged_path)
    meta = EntryMeta(mode=0o755, mtime_ns=1, size=0, link="", path=forged_path)
    entry = Entry(full, "d", 0, 0, 0, b"", "", tree.meta.seal(full, "d", b"", "etc", meta))
    back = tree.decrypt_listing([entry])
    assert back.entries == []
    assert len(back.errors) == 1 and "its recorded path '../etc' is not a valid path" in back.errors[0]


def test_key_source_check_id_refuses_another_key_before_the_passphrase(tmp_path: Path) -> None:
    """check_id takes the key id (from a pin, or a key-check record): one check for both, never asking for the
    passphrase, and naming who named the other key."""
    from neotwist.client.encryption import KeySource

    kf, _master = keyfile.create("pw", fast())
    keyfile.save(tmp_path / "key", kf)

    def no_passphrase(_where: str) -> str | None:
        raise AssertionError("the passphrase was asked")

    source = KeySource(tmp_path / "key", no_passphrase)
    source.check_id(kf.key_id)
    source.check_id(None)  # nothing named: nothing to compare
    other = "0" * 32
    with pytest.raises(WrongKey, match=f"^the target was encrypted with key {other}, but .* holds key {kf.key_id}"):
        source.check_id(other)
    with pytest.raises(WrongKey, match=f"^target t is pinned as encrypted with key {other} .*, but .* holds key"):
        source.check_id(other, f"target t is pinned as encrypted with key {other} (line 4 of pins)")


def test_names_are_bytes_in_encrypted_entries() -> None:
    """A name that is not UTF-8, or holds a backslash, seals and hashes as its bytes and decrypts to them; a
    UTF-8 name keeps the token it always had (its bytes are the same)."""
    master = MasterKey(os.urandom(32))
    _, keys = master.new_target()
    tree = _tree(master, keys)
    names = [os.fsdecode(b"caf\xe9"), "back\\slash", "\\xff", "caf\u00e9"]
    entries = [tree.encrypt_entries("d", "d", 0o755, 1, 0, b"", "")[0]]
    entries += [tree.encrypt_entries(f"d/{n}", "f", 0o644, 1, 0, b"", "")[0] for n in names]
    back = tree.decrypt_listing(entries)
    assert back.errors == []
    assert [e.path for e in back.entries] == ["d"] + [f"d/{n}" for n in names]
    assert len({e.path for e in entries}) == len(entries)  # latin-1 "café" and UTF-8 "café" are two names
