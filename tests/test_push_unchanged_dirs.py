"""A push of a tree whose directories are as the last push left them does no work per item: each unchanged
directory is recognised by its signature (names and ``lstat`` values) and taken whole from the files cache.
And it never misses a change: a directory with any change, or one the last push did not remember whole (a file
too recent to trust, say), is walked item by item.

Real push and pull pipelines against the real server session over loopback TCP (as in test_push_pull).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import test_push_pull as pp
from support import snapshot_of

from neotwist.client.filescache import FilesCache


class CountingCache(FilesCache):
    """The real files cache, counting the per-item calls a push makes into it."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.calls = {"lookup": 0, "remember": 0, "note_entry": 0}
        self.transactions = 0  # BEGINs on this push's new cache
        self.old_reads: list[str] = []  # directories whose rows of the last push's files were read
        self.old_entry_reads: list[str] = []  # and whose rows of its entries' digests (but to list what is gone)
        self.listing_gone = False

    def _read_dir(self, table: str, directory: str, decode: Any) -> dict[str, Any]:
        if table == "old.files":
            self.old_reads.append(directory)
        elif table == "old.entries" and not self.listing_gone:
            self.old_entry_reads.append(directory)
        return super()._read_dir(table, directory, decode)

    def gone(self) -> Any:
        self.listing_gone = True
        yield from super().gone()

    def _create(self) -> Any:
        db = super()._create()

        def traced(statement: str) -> None:
            if statement.strip().upper().startswith("BEGIN"):
                self.transactions += 1

        db.set_trace_callback(traced)
        return db

    def find(self, *args: Any) -> Any:
        self.calls["lookup"] += 1
        return super().find(*args)

    def remember(self, *args: Any, **kw: Any) -> None:
        self.calls["remember"] += 1
        super().remember(*args, **kw)

    def note_entry(self, path: str, digest: bytes) -> None:
        self.calls["note_entry"] += 1
        super().note_entry(path, digest)


class _Loopback(pp.LoopbackCase):
    """Real push and pull pipelines against a real server session (test_push_pull's helpers), with a files
    cache in the test's directory."""

    def _cache(self) -> FilesCache:
        return FilesCache("test", self.tmp / "cache")


class UnchangedDirectoryTests(_Loopback):
    def _cache(self) -> CountingCache:
        return CountingCache("test", self.tmp / "cache")

    def _fill(self) -> None:
        for d in ("a", "a/b", "c"):
            (self.src / d).mkdir()
        for i in range(5):
            (self.src / "a" / f"f{i}").write_bytes(os.urandom(100 + i))
            (self.src / "c" / f"g{i}").write_text(f"text {i}\n")
        (self.src / "a" / "b" / "deep").write_text("deep")
        os.symlink("../f0", self.src / "a" / "b" / "link")
        (self.src / "top").write_text("top")
        (self.src / "empty-dir").mkdir()

    def _same(self, dest: Path) -> None:
        assert snapshot_of(self.src) == snapshot_of(dest)

    async def test_an_unchanged_tree_costs_no_call_per_item(self) -> None:
        self._fill()
        await self._settle()
        peer = await self._connect()
        first = await self._push(peer, cache=self._cache(), delete=True)
        assert first.files_changed == 12
        for _ in range(2):  # the second push takes over what the first took over: it stays complete
            cache = self._cache()
            again = await self._push(peer, cache=cache, delete=True)
            assert cache.dirs_taken == 5  # the root, a, a/b, c, empty-dir
            assert cache.transactions == 1  # their rows copied together when the cache is saved, not one by one
            # no file looked up or remembered one by one; only the root's own entry (from no directory) noted
            assert cache.calls == {"lookup": 0, "remember": 0, "note_entry": 1}
            assert (again.files_scanned, again.files, again.files_changed) == (first.files_scanned, 12, 0)
            assert again.bytes_read == 0 and again.chunks_sent == 0 and again.deleted == 0
        dest = self.tmp / "dest"
        await self._pull(peer, dest)
        self._same(dest)

    async def test_the_last_pushs_rows_of_a_directory_are_read_once(self) -> None:
        """Files rewritten beside unchanged ones: each directory's rows of the last push are read once, by the
        walk, and the chunk ids it finds there for each file are what the push's deltas grow from (not read
        again a batch later); its entries' digests are read once too, though the directory's entries come in
        twice (the unchanged file's with the walk, the others once read)."""
        rng = random.Random(3)
        for d in range(6):
            (self.src / f"d{d}").mkdir()
            (self.src / f"d{d}" / "same").write_text("unchanged")
            for i in range(4):
                (self.src / f"d{d}" / f"f{i}").write_bytes(rng.randbytes(40_000))
        await self._settle()
        peer = await self._connect()
        await self._push(peer, cache=self._cache(), delete=True)
        for path in sorted(self.src.glob("d*/f*")):
            data = bytearray(path.read_bytes())
            data[1000:1100] = rng.randbytes(100)
            path.write_bytes(bytes(data))
        await self._settle()
        cache = self._cache()
        summary = await self._push(peer, cache=cache, delete=True)
        assert summary.files_changed == 24
        assert summary.chunks_sent_as_deltas > 0
        assert sorted(cache.old_reads) == sorted(set(cache.old_reads))  # each directory once
        assert len(cache.old_reads) == 6  # d0..d5 (the root holds no file)
        assert sorted(cache.old_entry_reads) == ["/", "d0", "d1", "d2", "d3", "d4", "d5"]

    async def test_every_change_is_seen_in_the_directory_it_is_in(self) -> None:
        self._fill()
        await self._settle()
        peer = await self._connect()
        await self._push(peer, cache=self._cache(), delete=True)
        # same size and mtime, new bytes: only the ctime tells
        f0 = self.src / "a" / "f0"
        st = f0.stat()
        f0.write_bytes(os.urandom(st.st_size))
        os.utime(f0, ns=(st.st_atime_ns, st.st_mtime_ns))
        (self.src / "a" / "b" / "new").write_text("new")
        shutil.rmtree(self.src / "c")
        os.chmod(self.src / "empty-dir", 0o700)
        await self._settle()
        cache = self._cache()
        summary = await self._push(peer, cache=cache, delete=True)
        assert summary.files_changed == 2  # a/f0 and a/b/new: the other files of a and a/b from their cache rows
        assert cache.calls["lookup"] == 5 + 2 + 1  # the files of a, a/b and the root (c is gone from it)
        assert summary.deleted == 6  # c and its five files
        # the root, a and a/b changed; c is gone; empty-dir's own mode is in the root's listing, not in its own
        assert cache.dirs_taken == 1
        dest = self.tmp / "dest"
        await self._pull(peer, dest)
        self._same(dest)
        cache = self._cache()
        await self._push(peer, cache=cache, delete=True)
        assert cache.dirs_taken == 4 and cache.calls["lookup"] == 0

    async def test_a_directory_with_a_file_too_recent_to_trust_is_walked_again(self) -> None:
        self._fill()
        await self._settle()
        peer = await self._connect()
        await self._push(peer, cache=self._cache())
        await self._push(peer, cache=self._cache())
        (self.src / "c" / "g0").write_text("rewritten just now")  # racy: not remembered by the next push
        cache = self._cache()
        summary = await self._push(peer, cache=cache)
        assert summary.files_changed == 1
        assert cache.dirs_taken == 4  # all but c (a rewrite in place leaves c's own stat, in the root's listing)
        await self._settle()
        cache = self._cache()
        summary = await self._push(peer, cache=cache)
        assert summary.files_changed == 1  # g0 was not remembered: read again, and c with it is walked
        assert cache.dirs_taken == 4 and cache.calls["lookup"] == 5
        cache = self._cache()
        await self._push(peer, cache=cache)
        assert cache.dirs_taken == 5 and cache.calls["lookup"] == 0
        dest = self.tmp / "dest"
        await self._pull(peer, dest)
        self._same(dest)

    async def test_a_directory_with_a_symlink_too_recent_to_trust_is_walked_again(self) -> None:
        """A symlink made again within the clock's tick may keep its inode, size and timestamps with a new
        target: a directory with any item that recent is not recorded whole, as a file that recent is not."""
        self._fill()
        await self._settle()
        peer = await self._connect()
        await self._push(peer, cache=self._cache())
        link = self.src / "a" / "b" / "link"
        link.unlink()
        os.symlink("../f1", link)  # just now
        cache = self._cache()
        summary = await self._push(peer, cache=cache)
        assert summary.files_changed == 0
        assert cache.dirs_taken == 3  # all but a/b and a (its item b has a new mtime)
        await self._settle()
        cache = self._cache()
        await self._push(peer, cache=cache)
        # neither was recorded by the push that saw the link (and b's mtime) so recent: both walked again
        assert cache.dirs_taken == 3
        assert cache.calls["note_entry"] == 1 + 6 + 2  # the root's own entry, a's six items, a/b's two
        cache = self._cache()
        await self._push(peer, cache=cache)
        assert cache.dirs_taken == 5 and cache.calls["note_entry"] == 1
        dest = self.tmp / "dest"
        await self._pull(peer, dest)
        self._same(dest)

    async def test_without_the_last_snapshot_as_parent_everything_is_listed(self) -> None:
        """Another snapshot came in since the last push: the cache still spares reading files, but every item
        is listed, so no directory is taken whole (its entries would be missing from the listing)."""
        self._fill()
        await self._settle()
        peer = await self._connect()
        await self._push(peer, cache=self._cache())
        other = self.tmp / "other"
        other.mkdir()
        (other / "x").write_text("x")
        from twisted.internet import reactor

        from neotwist.client.push import PushOptions, push

        await push(reactor, peer, str(other), "t", "elsewhere", PushOptions())
        cache = self._cache()
        summary = await self._push(peer, cache=cache)
        assert cache.dirs_taken == 0 and summary.files_changed == 0 and cache.calls["lookup"] == 12
        cache = self._cache()
        await self._push(peer, cache=cache)
        assert cache.dirs_taken == 5
        dest = self.tmp / "dest"
        await self._pull(peer, dest)
        assert snapshot_of(dest / "elsewhere") == snapshot_of(other)
        shutil.rmtree(dest / "elsewhere")
        self._same(dest)


class ChangedRulesTests(_Loopback):
    """What a push keeps out is part of what an unchanged directory is: a directory as the last push left it,
    pushed now with other rules, is walked again, so newly excluded items leave the snapshot and newly included
    ones enter it."""

    async def test_new_rules_on_an_unchanged_tree_change_the_snapshot(self) -> None:
        from neotwist.client.filters import Filter

        (self.src / "d").mkdir()
        (self.src / "d" / "keep.txt").write_text("keep")
        (self.src / "d" / "noise.log").write_text("noise")
        await self._settle()
        peer = await self._connect()
        await self._push(peer, cache=self._cache(), delete=True)
        await self._push(peer, cache=self._cache(), delete=True, filter=Filter.from_lines(["*.log"]))
        out = self.tmp / "out1"
        await self._pull(peer, out)
        assert sorted(p.name for p in (out / "d").iterdir()) == ["keep.txt"]
        await self._push(peer, cache=self._cache(), delete=True)  # the rule dropped again: the log comes back
        out = self.tmp / "out2"
        await self._pull(peer, out)
        assert sorted(p.name for p in (out / "d").iterdir()) == ["keep.txt", "noise.log"]


class DeleteAfterPushesWithoutItTests(_Loopback):
    """A push without --delete keeps in its snapshot what is gone locally, and its files cache does not name
    those paths; a later --delete push must list everything once (not only the changes since), or what was gone
    before it would stay in every snapshot after."""

    async def test_delete_drops_what_earlier_pushes_without_it_kept(self) -> None:
        (self.src / "c").mkdir()
        for i in range(3):
            (self.src / "c" / f"g{i}").write_text(f"text {i}\n")
        await self._settle()
        peer = await self._connect()
        await self._push(peer, cache=self._cache())
        (self.src / "c" / "g0").unlink()
        await self._settle()
        kept = await self._push(peer, cache=self._cache())  # no --delete: c/g0 stays in the snapshot
        assert kept.deleted == 0
        summary = await self._push(peer, cache=self._cache(), delete=True)
        assert summary.deleted == 1
        dest = self.tmp / "dest"
        await self._pull(peer, dest)
        assert snapshot_of(self.src) == snapshot_of(dest)
        (self.src / "c" / "g1").unlink()  # from now on --delete pushes list only their changes again
        await self._settle()
        cache = self._cache()
        again = await self._push(peer, cache=cache, delete=True)
        assert again.deleted == 1 and again.files_changed == 0
        dest2 = self.tmp / "dest2"
        await self._pull(peer, dest2)
        assert snapshot_of(self.src) == snapshot_of(dest2)

    async def test_a_files_cache_that_fails_to_write_makes_the_push_list_everything(self) -> None:
        """A --delete push that lists only its changes learns what is gone from its files cache; when the cache
        cannot be written (a full disk), it cannot, and lists everything instead: the snapshot loses nothing."""
        import sqlite3

        from neotwist.client import filescache

        (self.src / "c").mkdir()
        (self.src / "d").mkdir()
        for i in range(5):
            (self.src / "c" / f"g{i}").write_text(f"text {i}\n")
            (self.src / "d" / f"h{i}").write_text(f"more {i}\n")
        await self._settle()
        peer = await self._connect()
        await self._push(peer, cache=self._cache(), delete=True)
        await self._push(peer, cache=self._cache(), delete=True)  # its cache remembers c and d whole
        (self.src / "d" / "h0").unlink()
        await self._settle()

        def full(rows: object) -> bytes:
            raise sqlite3.OperationalError("database or disk is full")

        real = filescache._encode
        filescache._encode = full
        try:
            summary = await self._push(peer, cache=self._cache(), delete=True)
        finally:
            filescache._encode = real
        assert summary.deleted == 1  # d/h0, and nothing of c
        assert any("files cache" in w.reason for w in summary.warnings)
        dest = self.tmp / "dest"
        await self._pull(peer, dest)
        assert snapshot_of(self.src) == snapshot_of(dest)
