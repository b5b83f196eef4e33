"""A pull into a copy that is slightly out of date, in process against the real server session over loopback (as
in test_push_pull): the small files whose local version differs are examined together and fetched in batches
(``get_files``), reusing what their local versions hold, instead of one ``get`` and two thread hops each."""

from __future__ import annotations

import os
import shutil

import test_push_pull
from support import snapshot_of

from neotwist.client import pull as pull_module


class StaleCopyPullTests(test_push_pull.LoopbackCase):

    def _tree(self, files: int) -> None:
        for i in range(files):
            d = self.src / f"d{i % 7}"
            d.mkdir(exist_ok=True)
            (d / f"f{i}.txt").write_bytes(f"file {i}\n".encode() * 50)
        (self.src / "d0" / "several-chunks.bin").write_bytes(os.urandom(700_000))

    async def test_changed_small_files_come_in_batches_reusing_their_local_chunks(self) -> None:
        self._tree(150)
        peer = await self._connect()
        await self._push(peer)
        dest = self.tmp / "dest"
        await self._pull(peer, dest)
        # 100 small files edited, one touched (same bytes, new mtime), 64 bytes of a multi-chunk file rewritten
        for i in range(0, 100):
            p = self.src / f"d{i % 7}" / f"f{i}.txt"
            p.write_bytes(p.read_bytes() + b"edited\n")
        touched = self.src / f"d{120 % 7}" / "f120.txt"
        os.utime(touched, ns=(1_000_000_000, 1_000_000_000))
        big = self.src / "d0" / "several-chunks.bin"
        with open(big, "r+b") as f:
            f.seek(350_000)
            f.write(os.urandom(64))
        await self._push(peer)
        peer.events.clear()
        summary = await self._pull(peer, dest)
        assert snapshot_of(dest) == snapshot_of(self.src)
        assert summary.files_changed == 102 and summary.files_unchanged == 150 + 1 - 102
        gets = peer.events.count("send Get")
        batches = peer.events.count("send GetFiles")
        assert gets == 0, peer.events
        assert batches <= -(-102 // pull_module.EXAMINE_FILES), batches
        # the touched file came entirely from its local version, the big one all but a chunk or two
        assert summary.bytes_reused >= len(touched.read_bytes()) + 500_000, summary.bytes_reused
        assert not [n for _, _, names in os.walk(dest) for n in names if ".neotmp." in n]

    async def test_a_stale_copy_pulled_again_is_left_alone(self) -> None:
        """The second pull finds every file current by size and mtime: nothing is examined or fetched."""
        self._tree(40)
        peer = await self._connect()
        await self._push(peer)
        dest = self.tmp / "dest"
        shutil.copytree(self.src, dest)  # a copy (new mtimes on the directories, same on the files)
        for p in list((dest / "d1").iterdir())[:5]:
            p.write_bytes(b"a local change\n")
        await self._pull(peer, dest)
        assert snapshot_of(dest) == snapshot_of(self.src)
        peer.events.clear()
        again = await self._pull(peer, dest)
        assert again.files_changed == 0 and again.files_unchanged == 41
        assert not [e for e in peer.events if e in ("send Get", "send GetFiles")], peer.events
