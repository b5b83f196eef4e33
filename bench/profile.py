"""Where Neophytos spends its time: py-spy on the client and on the server, and a summary of what it recorded.

With ``python -m bench.run --profile``, every Neophytos operation runs its (first) client under
``py-spy record`` and attaches another ``py-spy record --pid`` to twistd for the operation's duration; the
speedscope files land in WORKDIR/profiles/ and their summaries are printed at the end. Timings of a profiled
run are inflated by the sampling: profile in a separate run from the one whose numbers you report.

``python -m bench.profile FILE...`` summarizes speedscope files: the share of active samples (py-spy leaves
out idle threads: waiting in epoll or on a lock is not counted) per function, self and inclusive, and per
thread.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

RATE = 100


def py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else None


def ensure_py_spy() -> str:
    """py-spy from PyPI into this virtualenv when missing (it is a benchmark tool, not a dependency)."""
    found = py_spy()
    if found:
        return found
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=True, timeout=600)
    found = py_spy()
    if not found:
        raise RuntimeError("py-spy installed but not found")
    return found


class Profiler:
    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir
        outdir.mkdir(parents=True, exist_ok=True)
        self.exe = ensure_py_spy()
        self.files: list[Path] = []
        self._server: subprocess.Popen[bytes] | None = None
        self._name = ""
        self._seq = 0

    def begin(self, name: str, server_pid: int) -> None:
        self._seq += 1
        self._name = f"{self._seq:03}-" + name.replace("/", "_").replace(" ", "_")
        out = self.outdir / f"{self._name}-server.speedscope.json"
        self._server = subprocess.Popen(
            [self.exe, "record", "--pid", str(server_pid), "--rate", str(RATE), "--nonblocking",
             "--format", "speedscope", "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.files.append(out)
        time.sleep(0.5)  # let it attach before the client starts

    def wrap(self, argv: list[str], index: int) -> list[str]:
        """The client's command under py-spy (only the first client of a concurrent batch)."""
        if index:
            return argv
        out = self.outdir / f"{self._name}-client.speedscope.json"
        self.files.append(out)
        return [self.exe, "record", "--rate", str(RATE), "--nonblocking", "--format", "speedscope", "-o", str(out),
                "--", *argv]  # fmt: skip

    def end(self) -> None:
        if self._server is None:
            return
        self._server.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            self._server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._server.kill()
            self._server.wait(timeout=10)
        self._server = None

    def close(self) -> None:
        self.end()


def summarize(path: Path, top: int = 12) -> str:
    """Text: samples per thread, then the top functions by self and by inclusive share of active samples."""
    doc = json.loads(path.read_text())
    frames = doc["shared"]["frames"]
    self_count: dict[int, float] = defaultdict(float)
    incl_count: dict[int, float] = defaultdict(float)
    threads: dict[str, float] = defaultdict(float)
    total = 0.0
    for profile in doc["profiles"]:
        weights = profile.get("weights") or [1] * len(profile["samples"])
        for stack, w in zip(profile["samples"], weights, strict=False):
            if not stack:
                continue
            total += w
            threads[profile.get("name", "?")] += w
            self_count[stack[-1]] += w
            for f in set(stack):
                incl_count[f] += w
    if not total:
        return f"{path.name}: no samples"

    def label(i: int) -> str:
        f = frames[i]
        file = re.sub(r"^.*/lib/python3\.\d+/(site-packages/)?", "", str(f.get("file", "")))
        file = re.sub(r"^.*/(neotwist|bench|twisted)/", r"\1/", file)
        return f"{f.get('name', '?')} ({file}:{f.get('line', '?')})"

    unit = doc["profiles"][0].get("unit", "none") if doc["profiles"] else "none"
    busy = total if unit == "seconds" else total / RATE  # py-spy weighs each sample by its interval
    lines = [f"{path.name}: {busy:.1f} s of active thread time sampled at {RATE} Hz"]
    def most(d: dict[Any, float], n: int) -> list[tuple[Any, float]]:
        return sorted(d.items(), key=lambda kv: -kv[1])[:n]

    lines.append("  threads: " + ", ".join(f"{n} {c * 100 / total:.0f}%" for n, c in most(threads, 6)))
    lines.append("  self:")
    lines += [f"    {c * 100 / total:5.1f}%  {label(i)}" for i, c in most(self_count, top)]
    lines.append("  inclusive:")
    lines += [f"    {c * 100 / total:5.1f}%  {label(i)}" for i, c in most(incl_count, top * 2)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("files", nargs="+", type=Path, metavar="FILE.speedscope.json")
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args(argv)
    for f in args.files:
        print(summarize(f, args.top))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
