"""Deferred deletion: trees the benchmark no longer needs are moved aside now and deleted after the run.

Why not delete them at once: on a file system mounted with online discard (ext4 ``-o discard``, as on the
virtual disks this benchmark runs on), ``unlink`` issues the discard of the freed blocks synchronously, and the
writes that follow are slowed for a while after the deletion has returned, ``sync`` or not. Measured in pairs
on the CPython stdlib sample (100 MB, 6,408 files): a plain ``rsync -a`` push took a median 15.0 s right after
deleting the previous copy against 9.5 s with the previous copy kept (1.3-2.0x in each of 6 pairs). The old
harness deleted each target just before the next timed push into a new one, which is how rsync's first push
came out 3-5x slower than by hand. A rename costs nothing of the sort, so a timed operation never follows a
deletion: the trash goes with the run's directory once the report is written (and is emptied early, with a
note in the log and ``meta.trash_emptied_early``, only when the disk runs short). Deleting is slow too (about
600 MB of small files took 178 s here), another reason to do it once, untimed.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

SETTLE_S = 3.0
"""Seconds to wait after emptying the trash early and syncing, before anything is timed again."""

MIN_FREE = 8 * 1024**3
"""Below this many free bytes the trash is emptied at once rather than at the end of the scenario."""


class Trash:
    """A directory on the same file system as everything it receives (so ``put`` is one rename)."""

    def __init__(self, root: Path, log: Callable[[str], None] = print) -> None:
        self.root = root
        self.log = log
        self._count = itertools.count(1)
        self.early = 0  # times the trash had to be emptied between timed operations (low disk)

    def put(self, path: Path) -> None:
        """Move ``path`` (file or directory; missing is fine) out of the way, to be deleted by ``empty``."""
        if not os.path.lexists(path):
            return
        self.root.mkdir(parents=True, exist_ok=True)
        os.rename(path, self.root / f"{next(self._count)}-{path.name}")
        if shutil.disk_usage(self.root).free < MIN_FREE:
            self.early += 1
            self.log("low disk space: emptying the trash now (the next timed operation may be slowed by it)")
            self.empty()

    def empty(self) -> None:
        """Delete everything in the trash, write it back, and give the disk a moment before timing resumes."""
        if not self.root.exists() or not any(self.root.iterdir()):
            return
        t = time.monotonic()
        shutil.rmtree(self.root, ignore_errors=True)
        os.sync()
        time.sleep(SETTLE_S)
        self.log(f"emptied the trash in {time.monotonic() - t:.0f} s")
