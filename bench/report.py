"""Rows of results, the table printed at the end, and the JSON written for scripts.

A row is one case of one scenario for one tool: the median wall time over its runs, the ratio to rsync's
median on the same case, median bytes on the wire each way, the target's server storage after the case, and
the largest client and server peak memory over the runs.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from bench.lab import OpResult


@dataclass
class Row:
    scenario: str
    case: str
    tool: str
    op: str
    runs: list[OpResult]
    storage: int | None = None  # bytes on disk of the target after the case
    storage_apparent: int | None = None
    data_bytes: int | None = None  # size of the data pushed or restored (for throughput)
    verified: bool | None = None  # restore compared equal to the source
    problems: list[str] = field(default_factory=list)
    note: str = ""
    ratio: float | None = None  # wall time / rsync's on the same case

    @property
    def ok_runs(self) -> list[OpResult]:
        return [r for r in self.runs if r.ok]

    @property
    def wall_s(self) -> float | None:
        runs = self.ok_runs
        return statistics.median(r.wall_s for r in runs) if runs else None

    def _median(self, attr: str) -> int | None:
        values = [getattr(r, attr) for r in self.ok_runs if getattr(r, attr) is not None]
        return int(statistics.median(values)) if values else None

    @property
    def sent(self) -> int | None:
        return self._median("sent")

    @property
    def received(self) -> int | None:
        return self._median("received")

    @property
    def client_rss(self) -> int | None:
        values = [r.client_rss for r in self.runs if r.client_rss]
        return max(values) if values else None

    @property
    def server_rss(self) -> int | None:
        values = [r.server_rss for r in self.runs if r.server_rss is not None]
        return max(values) if values else None

    @property
    def failures(self) -> int:
        return sum(r.failures for r in self.runs)

    @property
    def throughput(self) -> float | None:
        """Bytes of data per second of wall time (the concurrent scenario's aggregate)."""
        wall = self.wall_s
        return self.data_bytes / wall if self.data_bytes and wall else None

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "case": self.case, "tool": self.tool, "op": self.op,
            "wall_s": self.wall_s, "ratio_to_rsync": self.ratio,
            "sent": self.sent, "received": self.received,
            "tool_sent": self._median("tool_sent"), "tool_received": self._median("tool_received"),
            "storage": self.storage, "storage_apparent": self.storage_apparent,
            "client_peak_rss": self.client_rss, "server_peak_rss": self.server_rss,
            "server_before_rss": self.runs[-1].server_before if self.runs else None,
            "server_after_rss": self.runs[-1].server_after if self.runs else None,
            "cpu_s": statistics.median(r.cpu_s for r in self.ok_runs) if self.ok_runs else None,
            "data_bytes": self.data_bytes, "throughput_bps": self.throughput,
            "errors": self.failures, "verified": self.verified, "problems": self.problems, "note": self.note,
            "runs": [
                {"ok": r.ok, "wall_s": round(r.wall_s, 4), "cpu_s": round(r.cpu_s, 3), "sent": r.sent,
                 "received": r.received, "tool_sent": r.tool_sent, "tool_received": r.tool_received,
                 "client_rss": r.client_rss, "server_rss": r.server_rss, "storage_added": r.storage_added,
                 "clients": r.clients, "server_before": r.server_before, "server_after": r.server_after,
                 "failures": r.failures, "error": r.error, "summary": r.summary}
                for r in self.runs
            ],
        }  # fmt: skip


def fill_ratios(rows: list[Row]) -> None:
    """Each row's wall time over rsync's on the same scenario and case (None when rsync has no time)."""
    rsync = {(r.scenario, r.case): r.wall_s for r in rows if r.tool == "rsync"}
    for r in rows:
        base = rsync.get((r.scenario, r.case))
        r.ratio = r.wall_s / base if base and r.wall_s is not None else None


def size(n: int | float | None) -> str:
    if n is None:
        return "n/a"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def table(rows: list[dict[str, Any]], rss_floor: int = 0) -> str:
    """A Markdown table (readable as plain text too) of rows as ``Row.as_json`` gives them; client peaks
    within 3 % of the launcher's own size ``rss_floor`` are shown as "<= floor"."""

    def client(n: int | None) -> str:
        return f"<= {size(rss_floor)}" if n is not None and rss_floor and n <= rss_floor * 1.03 else size(n)

    header = ["scenario", "case", "tool", "time s", "x rsync", "sent", "received", "storage", "client peak",
              "server peak", "notes"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        notes = []
        if len(r["runs"]) > 1:
            notes.append(f"median of {len(r['runs'])}")
        if r["scenario"] == "concurrent" and r.get("throughput_bps"):
            notes.append(f"{size(r['throughput_bps'])}/s aggregate")
        if r["errors"]:
            notes.append(f"**{r['errors']} errors**")
        if r["verified"] is True:
            notes.append("verified")
        elif r["verified"] is False:
            notes.append(f"**restore differs**: {'; '.join(r['problems'][:3])}")
        if r.get("note"):
            notes.append(r["note"])
        wall = r["wall_s"]
        cells = [
            r["scenario"], r["case"], r["tool"], "failed" if wall is None else f"{wall:.2f}",
            "n/a" if r["ratio_to_rsync"] is None else f"{r['ratio_to_rsync']:.2f}",
            size(r["sent"]), size(r["received"]), "-" if r["storage"] is None else size(r["storage"]),
            client(r["client_peak_rss"]), size(r["server_peak_rss"]), ", ".join(notes),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
