"""Progress display for push and pull: tqdm bars on stderr, only when stderr is a terminal.

The pipelines call :meth:`Progress.files` and :meth:`Progress.bytes` from the reactor thread; tqdm throttles
its own redraws (``mininterval``), so updates stay cheap even per file.
"""

from __future__ import annotations

import sys
from typing import Any

from neotwist.display import raw_stderr


class Progress:
    """Two counters (items, bytes); a no-op unless enabled and stderr is a terminal."""

    def __init__(self, enabled: bool, verb: str, *, count_files: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        stream = raw_stderr()  # the bars' own CRs and escapes must get through
        self._files: Any = None
        self._bytes: Any = None
        if self.enabled:
            from tqdm import tqdm

            if count_files:
                self._files = tqdm(
                    desc=f"{verb} files", unit=" files", file=stream, position=0, mininterval=0.2
                )
            self._bytes = tqdm(
                desc=f"{verb} bytes",
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=stream,
                position=1 if count_files else 0,
                mininterval=0.2,
            )

    def files(self, n: int = 1) -> None:
        if self._files is not None:
            self._files.update(n)

    def bytes(self, n: int) -> None:
        if self._bytes is not None:
            self._bytes.update(n)

    def total_files(self, n: int) -> None:
        """Set the expected number of items once known (pull knows it from the listing)."""
        if self._files is not None:
            self._files.total = n
            self._files.refresh()

    def total_bytes(self, n: int) -> None:
        """Set the expected number of bytes once known."""
        if self._bytes is not None and self._bytes.total != n:
            self._bytes.total = n
            self._bytes.refresh()

    def close(self) -> None:
        for bar in (self._files, self._bytes):
            if bar is not None:
                bar.close()
        self._files = self._bytes = None
