"""Paths as bytes: the wire text of any name, the checks on it, and the walk's fallback for old servers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from neotwist import paths
from neotwist.client.remote import parse_remote
from neotwist.client.scan import ScanStats, plain_names_only, scan
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, NeoError

NAMES = [
    b"plain.txt",
    b"caf\xc3\xa9",  # UTF-8: unchanged on the wire
    b"\xff\xfe.bin",
    b"caf\xe9/men\xfc.txt",
    b"back\\slash",
    b"\\xff",  # a UTF-8 name that looks like an escape
    b"\\\\",
    b"\xe2\x82",  # a cut multi-byte sequence
    b"\xed\xa0\x80",  # an encoded surrogate (not UTF-8)
]


@pytest.mark.parametrize("raw", NAMES)
def test_every_name_has_one_wire_text_that_gives_its_bytes_back(raw: bytes) -> None:
    local = os.fsdecode(raw)
    wire = paths.to_wire(local)
    wire.encode("utf-8")  # always valid UTF-8 (msgpack str)
    assert paths.wire_bytes(wire) == raw
    assert paths.from_wire(wire) == local
    assert paths.check_path(wire) == wire
    if b"\\" not in raw and raw.decode("utf-8", "replace").encode() == raw:
        assert wire == local  # what was storable before is stored as before


def test_wire_texts_of_distinct_names_are_distinct() -> None:
    texts = [paths.to_wire(os.fsdecode(raw)) for raw in NAMES]
    assert len(set(texts)) == len(texts)


@pytest.mark.parametrize(
    "text",
    [
        "a\\",  # a lone backslash
        "a\\q",  # an unknown escape
        "\\x41",  # an escape of a byte that needs none
        "\\xc3\\xa9",  # escaped valid UTF-8
        "\\xFF",  # upper-case hex: not the one form
        "a\\x2fb",  # '/' smuggled in an escape
        "\\x00",  # NUL
        "\\x2e\\x2e",  # '..'
    ],
)
def test_malformed_or_ambiguous_wire_text_is_refused(text: str) -> None:
    with pytest.raises(NeoError) as info:
        paths.check_path(text)
    assert info.value.code == ErrorCode.BAD_PATH


def test_limits_count_the_bytes_not_the_escapes() -> None:
    name = os.fsdecode(b"\xff" * limits.MAX_NAME)
    wire = paths.to_wire(name)
    assert len(wire) == 4 * limits.MAX_NAME
    paths.check_path(wire)
    with pytest.raises(NeoError):
        paths.check_path(paths.to_wire(name + "\udcff"))
    deep = "/".join(["d" * 200] * (limits.MAX_PATH // 201))
    assert len(deep) > 4096
    paths.check_path(deep)
    with pytest.raises(NeoError):
        paths.check_path(deep + "/" + "x" * 250)


def test_a_user_may_name_an_odd_sub_path() -> None:
    r = parse_remote(os.fsdecode(b"alice@host/t/caf\xe9/a\\b"))
    assert paths.local_bytes(r.path) == b"caf\xe9/a\\b"
    with pytest.raises(NeoError):
        paths.check_local("a/../b")


def test_for_a_server_without_byte_names_odd_names_are_skipped_and_named(tmp_path: Path) -> None:
    root = bytes(tmp_path)
    os.makedirs(root + b"/ok/caf\xe9")
    for name in (b"ok/a.txt", b"ok/caf\xe9/x", b"b\\c"):
        with open(root + b"/" + name, "wb") as f:
            f.write(b"x")
    stats = ScanStats()
    kept = [r.path for r in plain_names_only(scan(str(tmp_path), stats=stats), stats)]
    assert kept == ["", "ok", "ok/a.txt"]
    assert sorted(p.path for p in stats.warnings) == ["b\\c", "ok/caf\\xe9", "ok/caf\\xe9/x"]
    assert stats.skipped == 3 and "upgrade it" in stats.warnings[0].reason


def test_a_long_chain_of_short_names_is_walked_in_linear_time_without_leaking_descriptors(tmp_path: Path) -> None:
    """3,000 levels of one-letter directories (6 KB deep): each deep directory is opened from its parent's
    descriptor, not again from the top. The tree is removed here, one level at a time: pytest's own clean-up
    (shutil.rmtree) recurses once per level and would overflow the stack."""
    import subprocess
    import time

    from neotwist.client.metadata import Capture, decode

    chain = tmp_path / "chain"
    chain.mkdir()
    fd = os.open(chain, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(3000):
        os.mkdir("d", dir_fd=fd)
        sub = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = sub
    leaf = os.open("leaf", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd)
    os.setxattr(leaf, "user.k", b"v")
    os.close(leaf)
    os.close(fd)
    try:
        before = len(os.listdir("/proc/self/fd"))
        started = time.monotonic()
        records = list(scan(str(chain), capture=Capture()))
        assert time.monotonic() - started < 20
        assert len(records) == 3002 and records[-1].path == "d/" * 3000 + "leaf"
        assert decode(records[-1].extra).xattrs == [("user.k", b"v")]  # read through /proc/self/fd, deep down
        assert len(os.listdir("/proc/self/fd")) <= before
    finally:
        subprocess.run(["rm", "-rf", str(chain)], check=True)  # GNU rm walks with descriptors, not recursion


def test_a_listing_with_a_malformed_or_smuggling_path_is_refused() -> None:
    """A server (or anyone in its place) cannot make a pull write a '/' or '..' through an escape."""
    from neotwist.client.stash import StashError, local_paths
    from neotwist.wire.messages import Entry

    good = [Entry("\\xff", "f", 0o644, 0, 0), Entry("a", "d", 0o755, 0, 0)]
    assert [paths.local_bytes(e.path) for e in local_paths(good)] == [b"\xff", b"a"]
    for bad in ("a\\x2f..\\x2fetc", "\\x2e\\x2e", "a\\q"):
        with pytest.raises(StashError, match="malformed path"):
            local_paths([Entry(bad, "f", 0o644, 0, 0)])
