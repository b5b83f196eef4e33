"""The browsing commands' pure parts: snapshot names, glob patterns, the comparison of two trees, the mount's
chunk cache and directory index (the commands themselves run end to end in test_browse_e2e.py)."""

from __future__ import annotations

import pytest

from neotwist.client.diff import compare, totals
from neotwist.client.find import _ranges, compile_pattern
from neotwist.client.history import BrowseError, Tree, parse_spec, resolve
from neotwist.client.metadata import Extra, encode
from neotwist.client.mountfs import ChunkCache, Listed, _time_names
from neotwist.client.remote import UsageError
from neotwist.client.stash import StashError
from neotwist.client.timespec import format_time
from neotwist.wire.messages import Entry, SnapshotRecord

NOW = 1_800_000_000.0


def snap(i: int, t: float) -> SnapshotRecord:
    return SnapshotRecord(i, t, 1, 1, 0, 0, 0, 0, "", False)


RECORDS = [snap(3, NOW - 7200), snap(5, NOW - 3600), snap(9, NOW - 60)]


def test_snapshot_names() -> None:
    assert resolve(RECORDS, parse_spec("5", NOW)).id == 5
    assert resolve(RECORDS, parse_spec("latest", NOW)).id == 9
    assert resolve(RECORDS, parse_spec("latest~2", NOW)).id == 3
    assert resolve(RECORDS, parse_spec("30min ago", NOW)).id == 5  # the newest at or before
    assert resolve(RECORDS, parse_spec(f"@{NOW - 3600:.0f}", NOW)).id == 5
    with pytest.raises(BrowseError, match="keeps only 3 snapshot"):
        resolve(RECORDS, parse_spec("latest~3", NOW))
    with pytest.raises(StashError, match="no snapshot 4"):
        resolve(RECORDS, parse_spec("4", NOW))
    with pytest.raises(StashError, match="no snapshot was taken at or before"):
        resolve(RECORDS, parse_spec("3h ago", NOW))
    with pytest.raises(UsageError, match="names no snapshot"):
        parse_spec("latest~x", NOW)


def test_patterns() -> None:
    name = compile_pattern("*.ods")
    assert name("q3.ods", False) and name("a/b/q3.ods", False) and not name("a/q3.odsx", False)
    assert not compile_pattern("*.ODS")("a/q3.ods", False) and compile_pattern("*.ODS", True)("a/q3.ods", False)
    path = compile_pattern("reports/**/q?.ods")
    assert path("reports/q3.ods", False) and path("reports/2026/nov/q4.ods", False)
    assert not path("old/reports/q3.ods", False) and not path("reports/q10.ods", False)
    assert compile_pattern("/etc/hosts")("etc/hosts", False) and not compile_pattern("/hosts")("etc/hosts", False)
    star = compile_pattern("src/*")
    assert star("src/a.py", False) and not star("src/a/b.py", False)  # '*' stays within one directory
    dirs = compile_pattern("build/")
    assert dirs("x/build", True) and not dirs("x/build", False)
    assert compile_pattern("**/x")("x", False) and compile_pattern("a/**")("a/b/c", False)
    with pytest.raises(UsageError):
        compile_pattern("/")


def test_ranges_follow_the_snapshots_searched() -> None:
    assert _ranges([3, 5, 9], [3, 5, 9]) == "3-9"  # 4, 6-8 were pruned: still one run
    assert _ranges([3, 9], [3, 5, 9]) == "3, 9"
    assert _ranges([5], [3, 5, 9]) == "5"


def e(path: str, kind: str = "f", size: int = 0, chunks: bytes = b"", mode: int = 0o644, mtime: int = 1,
      link: str = "", extra: Extra | None = None) -> Entry:  # fmt: skip
    return Entry(path, kind, mode, mtime, size, chunks, link, encode(extra) if extra else b"")


def test_compare_classifies_every_change() -> None:
    a = Tree(1, {x.path: x for x in [
        e("", "d"), e("d", "d", mtime=1), e("d/same", size=3, chunks=b"A" * 32), e("d/grown", size=3, chunks=b"B" * 32),
        e("gone", size=7, chunks=b"C" * 32), e("typed", size=1, chunks=b"D" * 32), e("ln", "l", link="x"),
        e("meta", size=2, chunks=b"E" * 32, extra=Extra(uid=1, xattrs=[("user.a", b"1")])),
        e("fifo", extra=Extra(special="p")),
    ]})  # fmt: skip
    b = Tree(2, {x.path: x for x in [
        e("", "d"), e("d", "d", mtime=2), e("d/same", size=3, chunks=b"A" * 32), e("d/grown", size=9, chunks=b"F" * 32),
        e("new", size=5, chunks=b"G" * 32), e("typed", "d"), e("ln", "l", link="y"),
        e("meta", size=2, chunks=b"E" * 32, mode=0o600, extra=Extra(uid=2, xattrs=[("user.a", b"2")])),
        e("fifo", size=0),
    ]})  # fmt: skip
    got = {c.path: c for c in compare(a, b)}
    assert {p: c.status for p, c in got.items()} == {
        "d/grown": "M",
        "gone": "-",
        "new": "+",
        "typed": "T",
        "ln": "M",
        "meta": "U",
        "fifo": "T",
    }  # fmt: skip  (a directory whose mtime alone changed is not listed)
    assert got["meta"].changes == {"mode": [0o644, 0o600], "uid": [1, 2], "xattrs": [["user.a"], ["user.a"]]}
    assert (got["typed"].old_kind, got["typed"].kind) == ("f", "d") and (got["fifo"].old_kind, got["fifo"].kind) == (
        "p", "f")  # fmt: skip
    assert got["ln"].changes["link"] == ["x", "y"]
    assert "meta" not in {c.path for c in compare(a, b, metadata=False)}
    t = totals(compare(a, b))
    assert (t.added, t.removed, t.changed, t.type_changed, t.metadata) == (1, 1, 2, 2, 1)
    assert (t.bytes_added, t.bytes_removed) == (5 + 6, 7 + 1)
    assert compare(a, a) == []


def test_chunk_cache_is_bounded() -> None:
    cache = ChunkCache(100)
    cache.put(b"a", b"x" * 60)
    cache.put(b"b", b"y" * 30)
    assert cache.get(b"a") == b"x" * 60  # now the most recent
    cache.put(b"c", b"z" * 30)  # evicts b, the least recently used
    assert cache.get(b"b") is None and cache.get(b"a") is not None and cache.size == 90
    cache.put(b"huge", b"h" * 101)  # larger than the cache: not kept
    assert cache.get(b"huge") is None and cache.size <= 100


def test_listed_indexes_children() -> None:
    listed = Listed.of(Tree(1, {x.path: x for x in [e("", "d"), e("a", "d"), e("a/b"), e("c")]}))
    assert listed.children == {"": ["a", "c"], "a": ["b"]}


def test_by_time_names_are_unique() -> None:
    records = [snap(1, NOW), snap(2, NOW + 0.5), snap(3, NOW + 5)]
    t = format_time(NOW)
    assert _time_names(records) == {f"{t}_1": 1, f"{t}_2": 2, format_time(NOW + 5): 3}
