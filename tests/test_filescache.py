"""The push files cache: lookups, racy timestamps, atomic save, damaged and foreign cache files."""

from __future__ import annotations

import os
import time
from pathlib import Path

from neotwist.client.filescache import FilesCache, cache_key

OLD = time.time_ns() - 3600 * 10**9
IDS = os.urandom(64)


def _cache(tmp_path: Path, key: str = "k") -> FilesCache:
    return FilesCache(key, tmp_path / "cache")


def test_round_trip_and_stat_mismatches(tmp_path: Path) -> None:
    c = _cache(tmp_path)
    c.load()
    assert c.lookup("a", 1, OLD, 2, OLD) is None
    c.remember("a", 1, OLD, 2, OLD, IDS)
    c.save()
    d = _cache(tmp_path)
    d.load()
    assert d.lookup("a", 1, OLD, 2, OLD) == IDS
    assert d.lookup("a", 2, OLD, 2, OLD) is None  # size
    assert d.lookup("a", 1, OLD + 1, 2, OLD) is None  # mtime
    assert d.lookup("a", 1, OLD, 3, OLD) is None  # inode
    assert d.lookup("a", 1, OLD, 2, OLD + 1) is None  # ctime
    assert d.lookup("b", 1, OLD, 2, OLD) is None


def test_save_keeps_only_this_push(tmp_path: Path) -> None:
    c = _cache(tmp_path)
    c.remember("gone", 1, OLD, 2, OLD, IDS)
    c.save()
    d = _cache(tmp_path)
    d.load()
    d.remember("kept", 1, OLD, 3, OLD, IDS)
    d.save()
    e = _cache(tmp_path)
    e.load()
    assert e.lookup("gone", 1, OLD, 2, OLD) is None
    assert e.lookup("kept", 1, OLD, 3, OLD) == IDS


def test_racy_timestamps_are_not_remembered(tmp_path: Path) -> None:
    now = time.time_ns()
    c = FilesCache("k", tmp_path, start_ns=now)
    c.remember("fresh-mtime", 1, now, 2, OLD, IDS)
    c.remember("fresh-ctime", 1, OLD, 2, now - 10**8, IDS)
    c.remember("old", 1, OLD, 2, OLD, IDS)
    assert set(c.new) == {"old"}


def test_keys_separate_caches(tmp_path: Path) -> None:
    k1 = cache_key("h:4322", "alice", "t", "", str(tmp_path / "a"))
    k2 = cache_key("h:4322", "alice", "t", "sub", str(tmp_path / "a"))
    assert k1 != k2
    c = _cache(tmp_path, k1)
    c.remember("a", 1, OLD, 2, OLD, IDS)
    c.save()
    d = _cache(tmp_path, k2)
    d.load()
    assert d.path != c.path
    assert d.lookup("a", 1, OLD, 2, OLD) is None


def test_damaged_cache_is_ignored_with_a_note(tmp_path: Path) -> None:
    c = _cache(tmp_path)
    c.remember("a", 1, OLD, 2, OLD, IDS)
    c.save()
    c.path.write_bytes(b"\xc1garbage")
    d = _cache(tmp_path)
    d.load()
    assert d.old == {}
    assert d.load_error is not None and "damaged" in d.load_error


def test_cache_with_another_key_in_the_same_file_is_ignored(tmp_path: Path) -> None:
    c = _cache(tmp_path, "one")
    c.remember("a", 1, OLD, 2, OLD, IDS)
    c.save()
    other = _cache(tmp_path, "two")
    other.path = c.path  # as if two keys hashed alike
    other.load()
    assert other.old == {}


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    c = _cache(tmp_path)
    for i in range(1000):
        c.remember(f"f{i}", i, OLD, i, OLD, IDS)
    c.save()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [c.path.name]
    assert oct((tmp_path / "cache").stat().st_mode & 0o777) == oct(0o700)


def test_ids_of_one_keying_are_never_lent_to_another(tmp_path: Path) -> None:
    """Plaintext and keyed (encrypted) ids never mix, even for one (address, account, target, path, root)."""
    plain = _cache(tmp_path)
    plain.bind("plaintext")
    plain.remember("a", 1, OLD, 2, OLD, IDS)
    plain.save()
    for keying in ("encrypted 0123", "encrypted 4567"):
        other = _cache(tmp_path)
        other.bind(keying)
        other.load()
        assert other.lookup("a", 1, OLD, 2, OLD) is None and other.path != plain.path
        other.remember("a", 1, OLD, 2, OLD, os.urandom(32))
        other.save()
    again = _cache(tmp_path)
    again.bind("plaintext")
    again.load()
    assert again.lookup("a", 1, OLD, 2, OLD) == IDS
