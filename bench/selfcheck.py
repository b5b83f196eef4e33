"""The run's own proof that its anchor runs at the speed its users see: rsync's first push of the tree, timed
by the harness, against a plain ``rsync -a -e 'ssh -p PORT'`` of the same tree to the same sshd, in pairs.

Every ratio in a run is a ratio to rsync, so a harness that slows rsync down flatters everything else (an earlier
version of this harness did, 3-5x, and nothing in its output said so). The plain command goes straight to sshd's
port, without the byte-counting relay, the server-memory sampler or the tool's environment; both are timed by
the same launcher, after the same ``sync``, into new directories, alternating which goes first. The verdict
compares the median of the per-pair ratios (pairing cancels the machine's drift, which is large when others
share the cores) with a tolerance: outside it, the run is INVALID and says so.
"""

from __future__ import annotations

import os
import shlex
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.measure import ProcResult, run

if TYPE_CHECKING:
    from bench.scenarios import Context

TOLERANCE = 0.15
"""How far the harness's rsync time may be from the plain one (either way) for the run to count."""

MIN_PAIRS = 5
"""Pairs run even when the preset times each row once: on a shared machine single pairs range 0.5-1.8 (measured
here with three other developers on the 2 cores), so fewer pairs would make the verdict a coin toss."""


@dataclass(frozen=True)
class Verdict:
    """The self-check's outcome: ``valid`` is None when it was not made (rsync not in the run)."""

    harness_s: tuple[float, ...]
    plain_s: tuple[float, ...]
    ratio: float | None  # median of harness/plain over the pairs
    valid: bool | None
    reason: str
    tolerance: float = TOLERANCE

    @property
    def word(self) -> str:
        return {True: "valid", False: "INVALID", None: "not checked"}[self.valid]

    def line(self) -> str:
        """One line for the report."""
        if self.ratio is None:
            return f"self-check: {self.word}: {self.reason}"
        return (f"self-check: {self.word}: harness rsync first push {statistics.median(self.harness_s):.2f} s, "
                f"plain rsync -a -e ssh {statistics.median(self.plain_s):.2f} s (medians of {len(self.harness_s)}), "
                f"paired ratio {self.ratio:.3f}, tolerance ±{self.tolerance:.0%}; {self.reason}")  # fmt: skip

    def as_json(self) -> dict[str, Any]:
        return {
            "verdict": self.word, "valid": self.valid, "ratio": self.ratio, "tolerance": self.tolerance,
            "harness_s": list(self.harness_s), "plain_s": list(self.plain_s), "reason": self.reason,
        }  # fmt: skip


def judge(harness_s: list[float], plain_s: list[float], tolerance: float = TOLERANCE) -> Verdict:
    """The verdict for paired wall times (pair i: ``harness_s[i]`` and ``plain_s[i]``, taken back to back)."""
    if len(harness_s) != len(plain_s):
        raise ValueError(f"{len(harness_s)} harness times but {len(plain_s)} plain ones: they come in pairs")
    if not harness_s:
        return Verdict((), (), None, None, "no pairs were timed")
    if min(harness_s + plain_s) <= 0:
        raise ValueError("wall times must be positive")
    ratio = statistics.median(h / p for h, p in zip(harness_s, plain_s, strict=True))
    valid = abs(ratio - 1) <= tolerance
    if valid:
        reason = "the anchors ran at the speed their users see"
    elif ratio > 1:
        reason = "the harness slows rsync down: every ratio to rsync in this run flatters the others"
    else:
        reason = "the harness's rsync beat the plain one: the plain runs were disturbed, or the harness skips work"
    return Verdict(tuple(harness_s), tuple(plain_s), ratio, valid, reason, tolerance)


def plain_rsync(ctx: Context, dest_name: str) -> ProcResult:
    """``rsync -a -e 'ssh -p PORT'`` of the tree into a new directory, as a user types it (plus the options a
    throwaway key and host need to run unattended), timed by the same launcher as every measured client."""
    lab = ctx.lab
    dest = lab.server_dir / "plain-rsync" / dest_name
    dest.parent.mkdir(parents=True, exist_ok=True)
    ssh = ["ssh", "-p", str(lab.sshd.port), "-i", str(lab.key), "-o", "BatchMode=yes",
           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]  # fmt: skip
    os.sync()  # the same as before every measured operation (Lab._measure)
    result = run(["rsync", "-a", "-e", shlex.join(ssh), f"{ctx.tree().path}/", f"root@127.0.0.1:{dest}/"],
                 timeout=lab.timeout, logdir=lab.logs)  # fmt: skip
    lab.trash.put(dest)
    return result


def self_check(ctx: Context) -> Verdict:
    """Run the pairs (at least MIN_PAIRS, else the run's repeats) and judge them."""
    rsync = next((t for t in ctx.tools if t.name == "rsync"), None)
    if rsync is None:
        return Verdict((), (), None, None, "rsync is not among the tools of this run")
    ds = ctx.tree()
    harness: list[float] = []
    plain: list[float] = []
    for i in range(max(MIN_PAIRS, ctx.repeats)):
        ctx._settle(ds)
        for side in ("harness", "plain") if i % 2 == 0 else ("plain", "harness"):
            if side == "harness":
                r = ctx.push(rsync, ctx.fresh(rsync, "self-check"), ds)
                if not r.ok:
                    return Verdict((), (), None, False, f"the harness's rsync failed: {r.error}")
                harness.append(r.wall_s)
            else:
                p = plain_rsync(ctx, f"p{i}")
                if p.returncode != 0:
                    return Verdict((), (), None, False, f"plain rsync failed ({p.returncode}): {p.tail(300)}")
                plain.append(p.wall_s)
        ctx.log(f"  self-check pair {i + 1}: harness {harness[-1]:.2f} s, plain {plain[-1]:.2f} s")
    old = ctx.targets.pop((rsync.name, "self-check"), None)
    if old is not None:
        rsync.discard(old)
    return judge(harness, plain)
