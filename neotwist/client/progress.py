"""Progress of a push, pull or check: bars on a terminal, restic-style JSON status lines on request.

The pipelines call :meth:`Progress.files` and :meth:`Progress.bytes` from the reactor thread, and the totals
once known (a pull knows them from the listing; a push from a counting walk that runs beside it, see
:func:`neotwist.client.push.push`). On a terminal the bars are tqdm's, with sizes in the units of the
summary (KiB, MiB, GiB: :func:`neotwist.sizes.human_size`) and an ETA once the total is known. With
``--json-progress`` the command writes one JSON object per line on stdout: ``{"message_type": "status", ...}``
about once a second (:meth:`Progress.status`), then its summary with ``"message_type": "summary"``.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from neotwist.display import raw_stderr
from neotwist.sizes import human_size

STATUS_INTERVAL = 1.0
"""Seconds between JSON status lines (restic prints them about as often)."""

_WITH_TOTAL = "{desc}: {percentage:3.0f}%|{bar}| {done}/{all} [{elapsed}<{remaining}, {speed}]"
_WITHOUT_TOTAL = "{desc}: {done} [{elapsed}, {speed}]"


def _bar_class() -> Any:
    from tqdm import tqdm

    class SizeBar(tqdm):
        """A tqdm bar whose sizes and speed read like the summary's (human_size: 1.5 MiB)."""

        @property
        def format_dict(self) -> dict[str, Any]:
            d: dict[str, Any] = super().format_dict
            total = d.get("total")
            d["done"] = human_size(int(d["n"]))
            d["all"] = human_size(int(total)) if total else "?"
            rate = d.get("rate")
            d["speed"] = f"{human_size(int(rate))}/s" if rate else "-/s"
            return d

    return SizeBar


class Progress:
    """Counters of items and bytes, their totals once known, and what shows them: tqdm bars when ``enabled``
    and stderr is a terminal; JSON status lines on ``json_stream`` when given."""

    def __init__(
        self,
        enabled: bool,
        verb: str,
        *,
        count_files: bool = True,
        json_stream: IO[str] | None = None,
        action: str = "",
        clock: Any = time.monotonic,
    ) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.json_stream = json_stream
        self.action = action or verb
        self.clock = clock
        self.started = clock()
        self.files_done = 0
        self.bytes_done = 0
        self.files_total: int | None = None
        self.bytes_total: int | None = None
        self._files: Any = None
        self._bytes: Any = None
        if self.enabled:
            from tqdm import tqdm

            stream = raw_stderr()  # the bars' own CRs and escapes must get through
            if count_files:
                self._files = tqdm(desc=f"{verb} files", unit=" files", file=stream, position=0, mininterval=0.2)
            self._bytes = _bar_class()(
                desc=f"{verb} bytes", file=stream, position=1 if count_files else 0, mininterval=0.2,
                bar_format=_WITHOUT_TOTAL,
            )  # fmt: skip

    @property
    def wants_totals(self) -> bool:
        """Whether anyone shows the totals (a push counts them only then)."""
        return self.enabled or self.json_stream is not None

    def files(self, n: int = 1) -> None:
        self.files_done += n
        if self._files is not None:
            self._files.update(n)

    def bytes(self, n: int) -> None:
        self.bytes_done += n
        if self._bytes is not None:
            self._bytes.update(n)

    def total_files(self, n: int) -> None:
        """Set the expected number of items once known."""
        self.files_total = n
        if self._files is not None:
            self._files.total = n
            self._files.refresh()

    def total_bytes(self, n: int) -> None:
        """Set the expected number of bytes once known."""
        self.bytes_total = n
        if self._bytes is not None and self._bytes.total != n:
            self._bytes.total = n
            self._bytes.bar_format = _WITH_TOTAL
            self._bytes.refresh()

    def status(self) -> dict[str, Any]:
        """A restic-style status record: what is done, the totals when known, and the time left at the
        average speed so far."""
        elapsed = max(0.0, self.clock() - self.started)
        out: dict[str, Any] = {
            "message_type": "status",
            "action": self.action,
            "seconds_elapsed": round(elapsed, 3),
            "files_done": self.files_done,
            "bytes_done": self.bytes_done,
        }
        if self.files_total is not None:
            out["total_files"] = self.files_total
        if self.bytes_total is not None:
            out["total_bytes"] = self.bytes_total
            done = min(1.0, self.bytes_done / self.bytes_total) if self.bytes_total else 1.0
            out["percent_done"] = round(done, 4)
            if 0 < done < 1 and elapsed > 0:
                out["seconds_remaining"] = round(elapsed * (1 - done) / done, 1)
        return out

    def emit(self) -> None:
        """Write one JSON status line (with ``--json-progress``)."""
        if self.json_stream is not None:
            import msgspec

            try:
                self.json_stream.write(msgspec.json.encode(self.status()).decode() + "\n")
                self.json_stream.flush()
            except OSError:  # the reader went away (| head): the work goes on, its summary says the rest
                self.json_stream = None

    def close(self) -> None:
        for bar in (self._files, self._bytes):
            if bar is not None:
                bar.close()
        self._files = self._bytes = None
