"""The files cache's directory signatures: a directory the last push remembered whole, and whose signature is
the same, is taken over in SQL; an incomplete or changed one never is."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from neotwist.client.filescache import FilesCache
from neotwist.client.scan import SameDir

OLD = time.time_ns() - 3600 * 10**9
IDS = os.urandom(32)
DIGEST = b"d" * 16


def _dir(path: str = "d", signature: bytes = b"s" * 16, items: int = 3, files: int = 2) -> SameDir:
    return SameDir(path, signature, items, files, 200)


def _push(tmp_path: Path, files: tuple[str, ...] = ("d/f", "d/g"), others: tuple[str, ...] = ("d/sub",)) -> None:
    """What a push of a directory d (two files, a subdirectory) leaves in the cache: saved as snapshot 1."""
    c = FilesCache("k", tmp_path / "cache")
    c.load()
    c.begin()
    c.see_dir(_dir(), take=False)
    for path in files:
        c.remember(path, 100, OLD, hash(path) & 0xFFFF, OLD, IDS)
    for path in files + others:
        c.note_entry(path, DIGEST)
    c.note_entry("", DIGEST)  # the root's own entry
    c.snapshot = 1
    c.save()


def _next(tmp_path: Path) -> FilesCache:
    c = FilesCache("k", tmp_path / "cache")
    c.load()
    c.begin()
    return c


def test_a_complete_directory_with_the_same_signature_is_taken_over(tmp_path: Path) -> None:
    _push(tmp_path)
    c = _next(tmp_path)
    assert c.see_dir(_dir(), take=True)
    assert c.dirs_taken == 1
    assert sorted(c.remembered()) == ["d/f", "d/g"]  # its rows are this push's too
    c.note_entry("", DIGEST)
    assert list(c.gone()) == []
    c.snapshot = 2
    c.save()
    again = _next(tmp_path)  # and it is complete in the cache that took it over
    assert again.see_dir(_dir(), take=True)
    assert again.lookup("d/f", 100, OLD, hash("d/f") & 0xFFFF, OLD) == IDS
    again.close()


def test_a_changed_signature_or_count_or_no_take_is_not_taken(tmp_path: Path) -> None:
    _push(tmp_path)
    c = _next(tmp_path)
    assert not c.see_dir(_dir(signature=b"t" * 16), take=True)
    assert not c.see_dir(_dir(items=4), take=True)
    assert not c.see_dir(_dir(), take=False)
    assert not c.see_dir(_dir("e"), take=True)
    assert c.dirs_taken == 0 and list(c.remembered()) == []
    c.close()


def test_a_directory_not_remembered_whole_is_never_taken(tmp_path: Path) -> None:
    _push(tmp_path, files=("d/f",), others=("d/sub", "d/g"))  # d/g (racy, say) was not remembered
    c = _next(tmp_path)
    assert not c.see_dir(_dir(), take=True)
    c.close()
    _push(tmp_path, others=())  # no entry digest for d/sub (not stored, say)
    c = _next(tmp_path)
    assert not c.see_dir(_dir(), take=True)
    c.close()


def test_gone_still_names_what_left_a_directory_that_was_walked(tmp_path: Path) -> None:
    _push(tmp_path)
    c = _next(tmp_path)
    c.see_dir(_dir(items=2, files=1), take=True)
    c.note_entry("", DIGEST)
    c.note_entry("d/f", DIGEST)
    c.note_entry("d/sub", DIGEST)
    assert list(c.gone()) == ["d/g"]
    c.close()


def test_a_cache_from_before_signatures_is_used_without_them(tmp_path: Path) -> None:
    """A cache written before directories had signatures: no dirs table, and the root's own digest kept with
    the root's items. Files are still looked up in it, no directory is taken, and the root is never gone."""
    _push(tmp_path)
    c = _next(tmp_path)
    path = c.path
    c.close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE dirs")
    db.execute("UPDATE entries SET dir = '' WHERE dir = '/'")
    db.commit()
    db.close()
    c = _next(tmp_path)
    assert not c.see_dir(_dir(), take=True)
    assert c.lookup("d/g", 100, OLD, hash("d/g") & 0xFFFF, OLD) == IDS
    assert c.old_entry("") is None  # sent once more
    c.note_entry("", DIGEST)
    assert list(c.gone()) == ["d/f", "d/g", "d/sub"]  # (this push noted nothing else)
    c.close()


def test_gone_refuses_to_answer_when_this_push_lost_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory taken whole has its rows copied at the next flush; if that flush fails, the directory would
    look gone from this push's cache, every item of it: gone() raises instead of naming them."""
    from neotwist.client import filescache

    _push(tmp_path)
    c = _next(tmp_path)
    assert c.see_dir(_dir(), take=True)  # the push sends nothing for d/f, d/g, d/sub

    def full(rows: object) -> bytes:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(filescache, "_encode", full)
    c.note_entry("", DIGEST)
    with pytest.raises(filescache.CacheBroken):
        list(c.gone())
    c.close()
