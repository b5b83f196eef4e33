"""A pull into an empty destination, in process against the real server session over loopback (as in
test_push_pull): nothing there can be spoiled, so files are created in place (no rename) with their final mode
(no chmod), and the directories are made while the files are fetched and written, not all before. What a pull
does to the file system is read from the interpreter's audit events (``os.rename``, ``os.chmod``, ``os.mkdir``,
``open``), raised by the real calls."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import test_push_pull
from support import snapshot_of

_recording: list[list[tuple[str, tuple[Any, ...]]]] = []  # the events of the running test, if it records
_on_event: list[Any] = []  # a callback of the running test, if any


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if _recording and event in ("os.rename", "os.chmod", "os.mkdir", "open"):
        _recording[-1].append((event, args))
    if _on_event:
        _on_event[-1](event, args)


sys.addaudithook(_hook)  # for the whole process (hooks cannot be removed): it acts only while a test records


class FreshPullTests(test_push_pull.LoopbackCase):

    def _record(self) -> list[tuple[str, tuple[Any, ...]]]:
        events: list[tuple[str, tuple[Any, ...]]] = []
        _recording.append(events)
        self.addCleanup(_recording.remove, events)
        return events

    async def test_files_pulled_into_an_empty_directory_are_neither_renamed_nor_chmodded(self) -> None:
        self._fill()  # docs/a.txt is 0o600, the others 0o644: both kept by the usual umask
        peer = await self._connect()
        await self._push(peer)
        dest = self.tmp / "dest"
        dest.mkdir()
        events = self._record()
        await self._pull(peer, dest)
        assert snapshot_of(dest) == snapshot_of(self.src)
        renamed = [a[1] for e, a in events if e == "os.rename"]
        assert sorted(renamed) == ["abs-link", "link"]  # symlinks only (made under a temporary name)
        assert not [a for e, a in events if e == "os.chmod" and isinstance(a[0], int)]  # no fchmod of a file
        assert not [n for n in os.listdir(dest) if ".neotmp." in n]

    async def test_a_pull_into_a_populated_directory_renames_into_place_there(self) -> None:
        """Where a file may already be, the new version is still written under a temporary name and renamed;
        in a directory the pull makes, a file is created in place."""
        self._fill()
        peer = await self._connect()
        await self._push(peer)
        dest = self.tmp / "dest"
        dest.mkdir()
        (dest / "big.bin").write_bytes(b"an older version")
        events = self._record()
        await self._pull(peer, dest)
        assert snapshot_of(dest) == snapshot_of(self.src)
        renamed = {a[1] for e, a in events if e == "os.rename"}
        assert {"big.bin", "empty", "dup1", "dup2", "link"} <= renamed  # in the destination root, which had a file
        assert not renamed & {"a.txt", "b.bin"}  # in docs/ and docs/deep/, made by this pull

    async def test_directories_are_made_while_files_are_written(self) -> None:
        """The last directory (an empty one: only the pass that makes every directory makes it) is held until a
        file has been created; a pull that made every directory before writing any file never gets there."""
        for i in range(20):
            (self.src / f"d{i:02}").mkdir()
            (self.src / f"d{i:02}" / "f.txt").write_text(f"file {i}\n")
        (self.src / "zz-empty").mkdir()
        peer = await self._connect()
        await self._push(peer)
        dest = self.tmp / "dest"
        file_made = threading.Event()
        waited: list[bool] = []

        def on_event(event: str, args: tuple[Any, ...]) -> None:
            if event == "open" and isinstance(args[0], str) and "f.txt" in args[0] and args[2] & os.O_CREAT:
                file_made.set()
            elif event == "os.mkdir" and args[0] == "zz-empty":
                waited.append(file_made.wait(10))

        _on_event.append(on_event)
        self.addCleanup(_on_event.remove, on_event)
        await self._pull(peer, dest)
        assert waited == [True]
        assert snapshot_of(dest) == snapshot_of(self.src)


def test_umask_and_set_id_bits_keep_the_chmod(tmp_path: Path) -> None:
    """A file is created with its final mode only when nothing changes that mode afterwards."""
    from neotwist.client.localfs import SafeDest

    dest = SafeDest(str(tmp_path / "d"), special_bits=True)
    try:
        dest.umask = 0o022
        assert dest.exact_mode(0o644, None) == 0o644
        assert dest.exact_mode(0o666, None) is None  # the umask would clear group and other write
        assert dest.exact_mode(0o4755, None) is None  # set-id bits: always by fchmod
        dest.inherits_acl = True
        assert dest.exact_mode(0o644, None) is None  # a default ACL decides the mode of what is created in it
    finally:
        dest.close()


def test_something_planted_at_the_name_is_replaced_never_written_through(tmp_path: Path) -> None:
    """In an empty destination a file is created in place, unless something appeared there meanwhile: then it
    is written under a temporary name and renamed over it, as always (a symlink is replaced, not followed)."""
    from neotwist.client.localfs import SafeDest

    outside = tmp_path / "outside"
    outside.write_bytes(b"not yours")
    dest = SafeDest(str(tmp_path / "d"))
    try:
        assert dest.was_empty
        os.symlink(outside, tmp_path / "d" / "a")
        t = dest.new_file("a", 0o644)
        assert not t.in_place
        os.write(t.fd, b"new")
        t.commit(0o644, 10**9, fsync=False)
        assert (tmp_path / "d" / "a").read_bytes() == b"new" and not (tmp_path / "d" / "a").is_symlink()
        assert outside.read_bytes() == b"not yours"
        t = dest.new_file("b", 0o640)
        assert t.in_place
        os.write(t.fd, b"bee")
        t.commit(0o640, 10**9, fsync=False)
        st = os.stat(tmp_path / "d" / "b")
        assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o640, 10**9)
    finally:
        dest.close()


def test_an_aborted_in_place_file_is_removed_but_not_what_replaced_it(tmp_path: Path) -> None:
    from neotwist.client.localfs import SafeDest

    dest = SafeDest(str(tmp_path / "d"))
    try:
        t = dest.new_file("half", 0o644)
        os.write(t.fd, b"half of it")
        t.abort()
        assert os.listdir(tmp_path / "d") == []
        t = dest.new_file("half", 0o644)
        (tmp_path / "other").write_bytes(b"someone else's")
        os.rename(tmp_path / "other", tmp_path / "d" / "half")  # renamed over it while it was written
        t.abort()
        assert (tmp_path / "d" / "half").read_bytes() == b"someone else's"
    finally:
        dest.close()
