"""The push and pull pipelines end to end against the real server session over loopback TCP.

A client Peer and ``neotwist.server.session.make_server_peer`` talk over a real 127.0.0.1 socket under the
real reactor (the pipelines use worker threads, which an in-memory clock cannot drive). Real files go in, a
real repository stores them, real files come out.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from loopback import loopback_peer
from support import snapshot_of
from twisted.trial.unittest import TestCase

from neotwist.client import push as push_module
from neotwist.client.filescache import FilesCache
from neotwist.client.pull import PullIncomplete, PullOptions, pull
from neotwist.client.push import PushOptions, push
from neotwist.server import session
from neotwist.wire.peer import Peer


def _services(tmp: Path) -> Any:
    """The server's real services on a fresh data directory, with one account, ``alice``."""
    from twisted.internet import reactor

    tmp.mkdir(parents=True, exist_ok=True)
    services = session.ServerServices.open(tmp, reactor, bcrypt_rounds=4)
    services.account = services.accounts.add("alice", None)
    return services


class _RecordingPeer(Peer):
    """A client Peer that notes, in order, each request it sends and each reply it gets (by message type)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.events: list[str] = []

    def request(self, message: Any, more: Any = None) -> Any:
        kind = type(message).__name__
        self.events.append(f"send {kind}")
        d = super().request(message, more)

        def note(result: object) -> object:
            self.events.append(f"reply {kind}")
            return result

        return d.addBoth(note)


class PushPullTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="neo-pushpull-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.src = self.tmp / "src"
        self.src.mkdir()
        self.services = _services(self.tmp / "server")
        self.addCleanup(self.services.repository.close)

    async def _connect(self) -> _RecordingPeer:
        return await loopback_peer(self, self.services, _RecordingPeer)

    def _cache(self) -> FilesCache:
        return FilesCache("test", self.tmp / "cache")

    async def _push(self, peer: Peer, target: str = "t", subpath: str = "", **kw: Any) -> Any:
        from twisted.internet import reactor

        return await push(reactor, peer, str(self.src), target, subpath, PushOptions(**kw))

    async def _pull(self, peer: Peer, dest: Path, target: str = "t", subpath: str = "", **kw: Any) -> Any:
        from twisted.internet import reactor

        return await pull(reactor, peer, target, subpath, str(dest), PullOptions(**kw))

    def _fill(self) -> None:
        (self.src / "docs" / "deep").mkdir(parents=True)
        (self.src / "docs" / "a.txt").write_text("alpha\n" * 1000)
        (self.src / "docs" / "deep" / "b.bin").write_bytes(os.urandom(300_000))
        (self.src / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
        (self.src / "empty").write_bytes(b"")
        (self.src / "empty-dir").mkdir()
        (self.src / "dup1").write_bytes(b"same" * 50_000)
        (self.src / "dup2").write_bytes(b"same" * 50_000)
        os.symlink("docs/a.txt", self.src / "link")
        os.symlink("/etc/passwd", self.src / "abs-link")
        os.chmod(self.src / "docs" / "a.txt", 0o600)

    def _assert_same(self, a: Path, b: Path) -> None:
        assert snapshot_of(a) == snapshot_of(b)

    async def _settle(self) -> None:
        """Let just-written files age past the files cache's one-second racy-timestamp guard."""
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        await deferLater(reactor, 1.1, lambda: None)

    async def test_round_trip_then_nothing_changed(self) -> None:
        self._fill()
        await self._settle()
        peer = await self._connect()
        first = await self._push(peer, cache=self._cache())
        assert first.snapshot is not None
        assert first.files_changed == 6
        assert first.new_chunks > 0
        # dup1 and dup2 share their chunks: sent once.
        again = await self._push(peer, cache=self._cache())
        assert again.files_changed == 0  # the files cache skipped every file
        assert again.bytes_read == 0
        assert again.chunks_sent == 0
        assert again.bytes_sent < first.bytes_sent / 50
        dest = self.tmp / "dest"
        got = await self._pull(peer, dest)
        assert got.files_changed == 6
        self._assert_same(self.src, dest)
        assert os.readlink(dest / "abs-link") == "/etc/passwd"
        second = await self._pull(peer, dest)
        assert second.files_changed == 0
        assert second.files_unchanged == 6
        assert second.chunks_fetched == 0

    async def test_delta_push_and_pull_send_only_changed_chunks(self) -> None:
        data = bytearray(os.urandom(8 * 1024 * 1024))
        (self.src / "f").write_bytes(data)
        peer = await self._connect()
        await self._push(peer, cache=self._cache())
        dest = self.tmp / "dest"
        await self._pull(peer, dest)
        data[4_000_000:4_000_100] = b"x" * 100
        data[100:100] = b"inserted" * 512
        (self.src / "f").write_bytes(data)
        delta = await self._push(peer, cache=self._cache())
        assert delta.files_changed == 1
        assert delta.chunk_bytes_sent < 1024 * 1024
        assert delta.bytes_sent < 600 * 1024
        back = await self._pull(peer, dest)
        assert (dest / "f").read_bytes() == bytes(data)
        assert back.bytes_reused > 7 * 1024 * 1024
        assert back.bytes_received < 600 * 1024

    async def test_the_api_tunes_the_allocator_as_the_commands_do(self) -> None:
        """A script calling push or pull gets the allocator the commands set up (docs/admin.md), not glibc's
        defaults, under which every SSH packet and every big buffer was faulted in again."""
        from neotwist.client import pull as pull_module

        calls: list[str] = []

        def counted(module: Any, name: str) -> Any:
            real = module.tune_malloc

            def tune() -> bool:
                calls.append(name)
                return bool(real())

            return tune

        self.patch(push_module, "tune_malloc", counted(push_module, "push"))
        self.patch(pull_module, "tune_malloc", counted(pull_module, "pull"))
        (self.src / "f").write_text("allocator")
        peer = await self._connect()
        await self._push(peer)
        await self._pull(peer, self.tmp / "dest")
        assert calls == ["push", "pull"]

    async def test_a_file_read_again_after_changing_while_pushed_still_travels_as_deltas(self) -> None:
        """A big file that changes between its cutting and its sending is read again in a later round: that
        reading grew from the same previous version, whose chunks are still the bases of its deltas."""
        rng = random.Random(9)
        data = bytearray(rng.randbytes(4 * 1024 * 1024))
        (self.src / "f").write_bytes(data)
        await self._settle()  # so that the files cache remembers this version's chunks: the bases
        peer = await self._connect()
        await self._push(peer, cache=self._cache())
        for at in (500_000, 2_500_000):
            data[at : at + 100] = rng.randbytes(100)
        (self.src / "f").write_bytes(data)
        real = push_module._compress_job
        edits: list[int] = []

        def changing(*args: Any, **kw: Any) -> Any:
            if not edits:  # once, before the first chunks are read again to be sent
                edits.append(1)
                data[500_020:500_060] = rng.randbytes(40)  # inside a chunk about to be sent
                (self.src / "f").write_bytes(data)
            return real(*args, **kw)

        self.patch(push_module, "_compress_job", changing)
        again = await self._push(peer, cache=self._cache())
        assert edits == [1]
        assert again.files_changed == 1 and again.warnings_count == 0
        assert again.chunks_sent_as_deltas > 0
        assert again.chunk_bytes_sent < 1024 * 1024  # not the whole file
        dest = self.tmp / "dest"
        await self._pull(peer, dest)
        assert (dest / "f").read_bytes() == bytes(data)

    async def test_a_delta_push_signs_its_first_bases_with_have_not_after_it(self) -> None:
        """The bases of a batch's first compression job are signed while ``have`` is asked: the ``sign``
        request goes out before the ``have`` reply is in, so no round trip separates them."""
        rng = random.Random(5)
        data = bytearray(rng.randbytes(2 * 1024 * 1024))
        (self.src / "f").write_bytes(data)
        await self._settle()  # so that the files cache remembers the chunks of this version: the bases
        peer = await self._connect()
        await self._push(peer, cache=self._cache())
        for _ in range(20):
            at = rng.randrange(0, len(data) - 100)
            data[at : at + 100] = rng.randbytes(100)
        (self.src / "f").write_bytes(data)
        peer.events.clear()
        delta = await self._push(peer, cache=self._cache())
        assert delta.chunks_sent_as_deltas > 0
        events = peer.events
        assert events.index("send Sign") < events.index("reply Have"), events
        assert events.count("send Sign") == 1  # one job: its bases asked once, not again after have

    async def test_subpath_push_and_pull(self) -> None:
        (self.src / "x").write_text("in a sub-path")
        peer = await self._connect()
        summary = await self._push(peer, subpath="2024/jan")
        assert summary.files_changed == 1
        dest = self.tmp / "dest"
        await self._pull(peer, dest, subpath="2024/jan")
        assert (dest / "x").read_text() == "in a sub-path"
        whole = self.tmp / "whole"
        await self._pull(peer, whole)
        assert (whole / "2024" / "jan" / "x").read_text() == "in a sub-path"

    async def test_stale_cache_is_retried_without_it(self) -> None:
        (self.src / "f").write_bytes(os.urandom(100_000))
        await self._settle()
        peer = await self._connect()
        await self._push(peer, target="one", cache=self._cache())
        # Same cache (same key) used for a different, empty target: its ids name chunks that target lacks.
        summary = await self._push(peer, target="two", cache=self._cache())
        assert summary.retried_without_cache
        assert summary.files_changed == 1 and summary.files_reread == 1  # read again: "two" lacks its chunks
        dest = self.tmp / "dest"
        await self._pull(peer, dest, target="two")
        assert (dest / "f").read_bytes() == (self.src / "f").read_bytes()

    async def test_pull_refuses_to_write_through_a_planted_symlink(self) -> None:
        (self.src / "sub").mkdir()
        (self.src / "sub" / "file").write_text("payload")
        (self.src / "top").write_text("fine")
        peer = await self._connect()
        await self._push(peer)
        outside = self.tmp / "outside"
        outside.mkdir()
        dest = self.tmp / "dest"
        dest.mkdir()
        os.symlink(outside, dest / "sub")
        with pytest.raises(PullIncomplete) as caught:
            await self._pull(peer, dest)
        assert "sub" in str(caught.value)
        assert list(outside.iterdir()) == []
        assert (dest / "top").read_text() == "fine"  # everything else was written
        assert caught.value.summary.files_changed == 1

    async def test_filters_and_empty_files(self) -> None:
        from neotwist.client.filters import Filter

        (self.src / "keep.txt").write_text("k")
        (self.src / "skip.tmp").write_text("s")
        (self.src / "cache").mkdir()
        (self.src / "cache" / "x").write_text("x")
        (self.src / "zero").write_bytes(b"")
        peer = await self._connect()
        summary = await self._push(peer, filter=Filter.from_lines(["*.tmp", "cache/"]))
        assert summary.files_filtered == 2
        dest = self.tmp / "dest"
        await self._pull(peer, dest)
        assert sorted(os.listdir(dest)) == ["keep.txt", "zero"]
        assert (dest / "zero").read_bytes() == b""

    async def test_a_server_without_byte_names_gets_the_rest_and_the_odd_names_are_named(self) -> None:
        """``byte_names`` False (a server whose welcome does not list it): names that are not UTF-8 or hold a
        backslash are skipped, each named with its reason, and everything else is stored."""
        (self.src / "keep.txt").write_text("k")
        os.mkdir(bytes(self.src) + b"/caf\xe9")
        (Path(os.fsdecode(bytes(self.src) + b"/caf\xe9/x"))).write_text("x")
        (self.src / "a\\b").write_text("b")
        peer = await self._connect()
        summary = await self._push(peer, byte_names=False)
        assert sorted(p.path for p in summary.warnings) == ["a\\b", "caf\\xe9", "caf\\xe9/x"], summary.warnings
        assert all("upgrade it" in p.reason for p in summary.warnings)
        dest = self.tmp / "dest"
        await self._pull(peer, dest)
        assert sorted(os.listdir(dest)) == ["keep.txt"]

    async def test_file_repeating_chunks_across_fetch_segments(self) -> None:
        """A chunk fetched early in a big file and needed again after a later segment is re-read from the file
        being written (the temp file must be readable, not only writable)."""
        rng = random.Random(5)
        block = rng.randbytes(512 * 1024)
        data = block + rng.randbytes(16 * 1024 * 1024) + block + rng.randbytes(1024) + block
        (self.src / "repeats").write_bytes(data)
        peer = await self._connect()
        await self._push(peer)
        dest = self.tmp / "dest"
        got = await self._pull(peer, dest)
        assert got.files_changed == 1
        assert (dest / "repeats").read_bytes() == data
        assert got.bytes_received < len(data) - len(block)  # the repeated block came over the wire once

    async def test_delete_records_local_deletions_and_default_keeps_them(self) -> None:
        (self.src / "keep").write_text("keep")
        (self.src / "gone").write_text("gone")
        (self.src / "dir").mkdir()
        (self.src / "dir" / "inner").write_text("inner")
        peer = await self._connect()
        await self._push(peer)
        (self.src / "gone").unlink()
        (self.src / "dir" / "inner").unlink()
        (self.src / "dir").rmdir()
        kept = await self._push(peer)
        assert kept.deleted == 0
        dest = self.tmp / "kept"
        await self._pull(peer, dest)
        assert sorted(os.listdir(dest)) == ["dir", "gone", "keep"]  # without --delete the remote view keeps them
        synced = await self._push(peer, delete=True)
        assert synced.deleted == 3
        dest2 = self.tmp / "synced"
        await self._pull(peer, dest2)
        assert sorted(os.listdir(dest2)) == ["keep"]
        old = self.tmp / "old"
        await self._pull(peer, old, snapshot=kept.snapshot)  # still recoverable from the earlier snapshot
        assert (old / "gone").read_text() == "gone" and (old / "dir" / "inner").read_text() == "inner"

    async def test_a_pull_into_an_up_to_date_tree_leaves_its_directories_alone(self) -> None:
        """Directories whose mode and mtime are already right are not chmod'ed or utime'd again: each such call
        dirties the inode (its ctime moves) even when it changes nothing, thousands per tree. One whose mtime or
        mode differs is still set."""
        self._fill()
        peer = await self._connect()
        await self._push(peer)
        dest = self.tmp / "dest"
        await self._pull(peer, dest)
        self._assert_same(self.src, dest)

        def ctimes() -> dict[str, int]:
            out = {"": os.stat(dest).st_ctime_ns}
            for dirpath, dirnames, _ in os.walk(dest):
                for name in dirnames:
                    p = os.path.join(dirpath, name)
                    out[os.path.relpath(p, dest)] = os.lstat(p).st_ctime_ns
            return out

        before = ctimes()
        os.utime(dest / "docs" / "deep", ns=(1, 1))  # one directory out of date: it alone is set again
        changed = os.stat(dest / "docs" / "deep").st_ctime_ns
        await self._settle()  # past the clock's granularity: a ctime set now would differ
        await self._pull(peer, dest)
        self._assert_same(self.src, dest)
        after = ctimes()
        assert after["docs/deep"] != changed
        del before["docs/deep"], after["docs/deep"]
        assert after == before


class LoopbackCase(TestCase):
    """The real server session and the real push and pull pipelines of :class:`PushPullTests`, for the test cases
    of other modules (no tests of its own)."""

    timeout = 120
    setUp = PushPullTests.setUp
    _connect = PushPullTests._connect
    _push = PushPullTests._push
    _pull = PushPullTests._pull
    _fill = PushPullTests._fill
    _settle = PushPullTests._settle
