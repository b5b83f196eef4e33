"""The push files cache: lookups, racy timestamps, atomic save, damaged and foreign cache files."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

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
    assert set(c.remembered()) == {"old"}
    c.close()


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
    assert d.lookup("a", 1, OLD, 2, OLD) is None
    assert d.load_error is not None and "damaged" in d.load_error
    d.close()


def test_cache_with_another_key_in_the_same_file_is_ignored(tmp_path: Path) -> None:
    c = _cache(tmp_path, "one")
    c.remember("a", 1, OLD, 2, OLD, IDS)
    c.save()
    other = _cache(tmp_path, "two")
    other.path = c.path  # as if two keys hashed alike
    other.load()
    assert other.lookup("a", 1, OLD, 2, OLD) is None
    other.close()


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


def test_memory_does_not_grow_with_the_files_remembered(tmp_path: Path) -> None:
    """A push of a million files must not hold a million cache rows in Python: the rows go to disk as they
    come, and the last push's are looked up there. 40,000 files in dicts took about 20 MB."""
    import tracemalloc

    first = _cache(tmp_path)
    first.load()
    for i in range(40_000):
        first.remember(f"d{i // 1000:04}/f{i % 1000:03}.txt", i, OLD, i, OLD, IDS)
        first.note_entry(f"d{i // 1000:04}/f{i % 1000:03}.txt", IDS[:16])
    first.save()
    tracemalloc.start()
    try:
        again = _cache(tmp_path)
        again.load()
        base = tracemalloc.get_traced_memory()[0]
        for i in range(40_000):
            path = f"d{i // 1000:04}/f{i % 1000:03}.txt"
            assert again.lookup(path, i, OLD, i, OLD) == IDS
            assert again.old_entry(path) == IDS[:16]
            again.remember(path, i, OLD, i, OLD, IDS)
            again.note_entry(path, IDS[:16])
        held = tracemalloc.get_traced_memory()[0] - base
        again.save()
    finally:
        tracemalloc.stop()
    assert held < 4 * 1024 * 1024, held
    last = _cache(tmp_path)
    last.load()
    assert last.lookup("d0039/f999.txt", 39_999, OLD, 39_999, OLD) == IDS
    last.close()


def test_gone_names_what_the_last_push_sent_and_this_one_did_not(tmp_path: Path) -> None:
    first = _cache(tmp_path)
    first.load()
    for path in ("a", "b", "c/d", "c/e"):
        first.note_entry(path, b"x" * 16)
    first.snapshot = 7
    first.save()
    again = _cache(tmp_path)
    again.load()
    assert again.old_snapshot == 7
    again.begin()
    for path in ("a", "c/e", "new"):
        again.note_entry(path, b"y" * 16)
    assert list(again.gone()) == ["b", "c/d"]
    assert again.old_entry("b") == b"x" * 16 and again.old_entry("new") is None
    again.close()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.path.name]  # the unsaved one is gone


def test_a_cache_that_cannot_be_written_is_not_saved_and_stops_nothing(tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("a file where the directory should be")
    c = _cache(tmp_path)
    c.load()
    assert c.load_error is not None
    assert c.lookup("a", 1, OLD, 2, OLD) is None
    c.remember("a", 1, OLD, 2, OLD, IDS)
    try:
        c.save()
    except OSError:
        pass
    else:
        raise AssertionError("save must say the cache could not be written")


def test_a_directory_bigger_than_a_batch_is_read_once(tmp_path: Path) -> None:
    """A push compares its entries with the last push's a batch at a time: a directory whose entries run over
    many batches is read once, not once per batch (which made the work grow with the square of its size)."""
    first = _cache(tmp_path)
    first.load()
    paths = [f"big/f{i:05}" for i in range(5_000)]
    for path in paths:
        first.note_entry(path, path.encode().ljust(16, b"."))
    first.snapshot = 3
    first.save()
    again = _cache(tmp_path)
    again.load()
    reads: list[str] = []
    real = again._read_dir

    def counted(table: str, directory: str, decode: Any) -> Any:
        reads.append(f"{table}:{directory}")
        return real(table, directory, decode)

    again._read_dir = counted  # type: ignore[method-assign]
    for start in range(0, len(paths), 1_000):  # five batches' worth
        part = [*paths[start : start + 1_000], "new"]
        digests = again.old_entries(part)
        assert digests[:-1] == [p.encode().ljust(16, b".") for p in paths[start : start + 1_000]]
        assert digests[-1] is None
    assert reads.count("old.entries:big") == 1
    again.close()
