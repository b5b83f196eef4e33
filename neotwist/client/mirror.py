"""``neo-pull --delete``: remove what the destination has and the snapshot does not (rsync's ``--delete``).

The destination is walked from its directory descriptor, one directory at a time, never following a symlink
(a symlink is removed as itself; a directory is removed with ``shutil.rmtree(dir_fd=...)``, which does not
follow symlinks either). Only directories that the snapshot also has as directories are entered. Leftover
temporary files of an interrupted pull are extraneous too. Nothing is deleted when the pull was incomplete
(as rsync does on I/O errors): a file that failed to restore must not lose its old copy too.
"""

from __future__ import annotations

import os
import shutil
import stat

from neotwist.client.localfs import SafeDest
from neotwist.wire.messages import Entry

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class DeleteRefused(Exception):
    """--delete on a directory too precious to mirror without --force."""


def check_target(local_root: str, force: bool) -> None:
    """Refuse to mirror into ``/`` or the home directory without ``force``: one wrong REMOTE would empty them."""
    if force:
        return
    real = os.path.realpath(local_root)
    home = os.path.realpath(os.path.expanduser("~"))
    for precious, what in (("/", "/"), (home, "your home directory")):
        if real == precious:
            raise DeleteRefused(
                f"refusing to --delete in {what} ({real}): everything the snapshot lacks would go; add --force if "
                "that is what you want"
            )


def delete_extraneous(dest: SafeDest, entries: list[Entry]) -> tuple[list[str], list[str]]:
    """Remove every item under the destination that ``entries`` (the pulled snapshot) does not have. Returns
    (paths removed, problems)."""
    kinds = {e.path: e.kind for e in entries}
    removed: list[str] = []
    problems: list[str] = []
    stack: list[tuple[int, str]] = [(os.dup(dest.root_fd), "")]
    while stack:
        fd, prefix = stack.pop()
        try:
            with os.scandir(fd) as it:
                names = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
            for name, is_dir in names:
                rel = prefix + name
                kind = kinds.get(rel)
                if kind is None:
                    try:
                        if is_dir:
                            shutil.rmtree(name, dir_fd=fd)
                        else:
                            os.unlink(name, dir_fd=fd)
                        removed.append(rel)
                    except OSError as e:
                        problems.append(f"{rel}: not deleted: {e.strerror}")
                elif kind == "d" and is_dir:
                    try:
                        child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    except OSError as e:
                        problems.append(f"{rel}: not examined for --delete: {e.strerror}")
                        continue
                    if not stat.S_ISDIR(os.fstat(child).st_mode):
                        os.close(child)
                        continue
                    stack.append((child, rel + "/"))
        except OSError as e:
            problems.append(f"{prefix or '.'}: not examined for --delete: {e.strerror}")
        finally:
            os.close(fd)
    return removed, problems
