"""Progress: restic-style status records (totals, percent, time left) and bars in the summary's units."""

from __future__ import annotations

import io
import json

from neotwist.client.progress import _WITH_TOTAL, Progress, _bar_class


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_status_lines_carry_totals_percent_and_time_left() -> None:
    out = io.StringIO()
    clock = Clock()
    p = Progress(False, "pushed", json_stream=out, action="push", clock=clock)
    p.files(3)
    p.bytes(1024)
    clock.now += 2
    first = p.status()
    assert first == {"message_type": "status", "action": "push", "seconds_elapsed": 2.0, "files_done": 3,
                     "bytes_done": 1024}  # fmt: skip
    p.total_files(12)
    p.total_bytes(4096)
    p.emit()
    line = json.loads(out.getvalue().splitlines()[-1])
    assert line["total_files"] == 12 and line["total_bytes"] == 4096
    assert line["percent_done"] == 0.25
    assert line["seconds_remaining"] == 6.0  # a quarter in 2 s: 6 s to go at that speed
    p.files(9)
    p.bytes(3072)
    done = p.status()
    assert done["percent_done"] == 1.0 and "seconds_remaining" not in done


def test_bars_use_the_summary_units() -> None:
    stream = io.StringIO()
    bar = _bar_class()(file=stream, desc="pushed bytes", bar_format=_WITH_TOTAL, total=3 * 1024 * 1024, ascii=True)
    bar.update(1536 * 1024)
    bar.refresh()
    bar.close()
    text = stream.getvalue()
    assert "1.5 MiB/3.0 MiB" in text, text
    assert "MB" not in text.replace("MiB", ""), text
