"""Writing a small file so that a crash leaves the old file or the new one, never half of one.

The client keeps a few such files (the key file, the encryption pins, the files cache); each used to carry its own
copy of this sequence. The data goes to a temporary file in the same directory (created 0600 by ``mkstemp``, so
nobody else can read a key while it is being written), is fsynced, then renamed over the old name (or linked to a
new name, when an existing file must not be replaced), and the directory is fsynced so the rename itself survives a
crash. The temporary file is removed on any failure.

This module imports nothing from the server or the client: both sides use it (the repository its fsync_dir).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path | str) -> None:
    """Make a directory entry (a created, renamed or removed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path | str, data: bytes, *, mode: int = 0o600, replace: bool = True) -> None:
    """Write ``data`` to ``path`` atomically with ``mode``; the directory must exist (OSError otherwise).

    With ``replace`` false an existing ``path`` is left alone and FileExistsError raised: the new file is linked
    into place, which fails if the name exists, so there is no window in which another file is clobbered."""
    path = Path(path)
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=directory)  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            if mode != 0o600:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)
