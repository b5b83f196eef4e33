"""The extra record (owner, xattrs, hard links, specials) and how a pull sorts a listing by it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from neotwist.client.metadata import EMPTY, Applier, BadExtra, Capture, Extra, decode, encode
from neotwist.client.restore import plan
from neotwist.wire.messages import Entry


def test_the_record_round_trips_and_an_empty_one_is_not_stored() -> None:
    x = Extra(uid=1234, gid=5678, user="u", group="g", xattrs=[("user.a", b"\0\xff")], first="a/b", special="c", rdev=7)
    assert decode(encode(x)) == x
    assert encode(EMPTY) == b"" and decode(b"") == EMPTY  # entries pushed before the record existed
    with pytest.raises(BadExtra):
        decode(b"\x02whatever")
    with pytest.raises(BadExtra):
        decode(b"\x01\xc1")


def test_a_later_name_of_an_inode_names_the_first(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x")
    os.link(tmp_path / "a", tmp_path / "b")
    os.setxattr(tmp_path / "a", "user.k", b"v")
    cap = Capture()
    first, _ = cap.record(str(tmp_path / "a"), "a", os.lstat(tmp_path / "a"), "f")
    second, _ = cap.record(str(tmp_path / "b"), "b", os.lstat(tmp_path / "b"), "f")
    assert decode(first).first == "" and decode(second).first == "a"
    assert decode(second).xattrs == [("user.k", b"v")]  # one inode: the same xattrs
    assert decode(first).uid == os.getuid()


def _file(path: str, x: Extra | None = None) -> Entry:
    return Entry(path, "f", 0o644, 0, 1, b"\0" * 32, "", encode(x) if x is not None else b"")


def test_a_pull_links_later_names_and_writes_one_in_place_of_a_first_name_it_does_not_pull() -> None:
    laid = plan([_file("etc/h2", Extra(first="h1")), _file("h1"), _file("home/h3", Extra(first="h1"))])
    assert [e.path for e in laid.files] == ["h1"]
    assert [(first, e.path) for first, e in laid.links] == [("h1", "etc/h2"), ("h1", "home/h3")]
    # a sub-path pull without the first name: the first pulled name is written, the others link to it
    laid = plan([_file("x/one", Extra(first="elsewhere")), _file("x/two", Extra(first="elsewhere"))])
    assert [e.path for e in laid.files] == ["x/one"] and [(f, e.path) for f, e in laid.links] == [("x/one", "x/two")]
    laid = plan([_file("fifo", Extra(special="p")), Entry("bad", "f", 0, 0, 0, b"", "", b"\x09")])
    assert [e.path for e in laid.specials] == ["fifo"] and laid.problems[0].startswith("bad: ")


def test_a_pull_decodes_each_distinct_record_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Most items of a tree share one record (the same owner, no xattrs): it is decoded once, and a bad record
    is named for every item that carries it."""
    import neotwist.client.restore as restore

    decoded: list[bytes] = []

    def counting(data: bytes) -> Extra:
        decoded.append(data)
        return decode(data)

    monkeypatch.setattr(restore, "decode", counting)
    owner = Extra(uid=1000, gid=1000, user="u", group="g")
    entries = [_file(f"d/f{i:04}", owner) for i in range(1000)]
    entries += [Entry(f"e/bad{i}", "f", 0o644, 0, 1, b"\0" * 32, "", b"\x09") for i in (1, 2)]
    entries += [_file("e/h1"), _file("e/h2", Extra(first="e/h1", uid=1000, gid=1000, user="u", group="g"))]
    laid = plan(entries)
    assert len(decoded) == 3  # the owner's record, the bad one, the hard link's
    assert len(laid.files) == 1003 and [(f, e.path) for f, e in laid.links] == [("e/h1", "e/h2")]
    assert [p.split(":")[0] for p in laid.problems] == ["e/bad1", "e/bad2"]
    assert all(laid.extras[f"d/f{i:04}"] == owner for i in range(1000))


def test_owners_are_kept_but_not_applied_when_not_root() -> None:
    applier = Applier()
    applier.root = False
    assert applier.owner(Extra(uid=1, gid=2)) is None and applier.owners_kept == 1
    assert not applier.settable("trusted.x") and not applier.settable("security.y") and applier.settable("user.z")
    root = Applier(numeric_ids=True)
    root.root = True
    assert root.owner(Extra(uid=4321, gid=8765, user="root", group="root")) == (4321, 8765)  # by number
    by_name = Applier()
    by_name.root = True
    assert by_name.owner(Extra(uid=4321, gid=8765, user="root", group="root")) == (0, 0)  # by name
    assert by_name.owner(Extra(uid=4321, gid=8765, user="no-such-user-here", group="")) == (4321, 8765)
