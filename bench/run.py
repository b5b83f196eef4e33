"""``python -m bench.run``: Neophytos against rsync, borg and restic on loopback, on the same data.

``make bench`` runs the full benchmark, ``make bench-quick`` the quick one (smaller data, one run per row).
The table goes to stdout; progress goes to stderr; the same rows go to JSON with ``--json FILE`` (``-`` for
stdout, and then the table goes to stderr). The last run's JSON is also kept in WORKDIR/last-run.json.

Every run that includes rsync first checks itself: rsync's first push of the tree as the harness times it,
against a plain ``rsync -a -e 'ssh -p PORT'`` to the same sshd, in pairs. If they differ by more than 15 %, the
run is INVALID (the report says so, ``meta.self_check`` in the JSON, exit status 3): its ratios are not to be
trusted.

Exit status: 0 all went well; 1 an operation failed, a restore differed or a scenario broke; 3 the self-check
found the run INVALID; 130 interrupted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import deps
from bench.data import default_tree
from bench.lab import Lab
from bench.measure import launcher_floor
from bench.report import fill_ratios, table
from bench.scenarios import PRESETS, SCENARIOS, Context
from bench.selfcheck import Verdict, self_check
from bench.tools import ALL_TOOLS, TOOLS_BY_NAME

DEFAULT_WORKDIR = Path(__file__).resolve().parent / "work"

METHOD = {
    "time": "wall time of the client process (median over the runs), warm page cache (it cannot be dropped here); "
            "sync(2) before each operation so no operation pays for earlier writeback; nothing is deleted between "
            "timed operations (trees no longer needed are renamed aside and deleted after the run, see "
            "bench/trash.py)",
    "bytes": "TCP payload through a byte-counting loopback relay in front of each server port (SSH/TLS overhead "
             "and handshakes included), the same for every tool; restic with a local repository has no wire",
    "storage": "bytes on disk (st_blocks*512, hard links once) that the server side grew by for this target; "
               "for Neophytos the growth of DATA/repo during the target's pushes",
    "client_peak": "ru_maxrss of the client from wait4 in a small launcher process (largest process of the "
                   "client's tree; never below the launcher's own size, client_rss_floor)",
    "server_peak": "twistd: VmHWM after resetting it via /proc/PID/clear_refs; sshd anchors: largest sum of "
                   "VmHWM over sshd's session processes, sampled every 50 ms; restic local: none",
}  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scenarios: " + ", ".join(SCENARIOS) + "\ntools: " + ", ".join(t.name for t in ALL_TOOLS),
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small data, 1 run per row: a few minutes")
    size.add_argument("--preset", choices=sorted(PRESETS), help="full (default), quick, or tiny (for tests)")
    p.add_argument("--scenario", action="append", choices=list(SCENARIOS), metavar="NAME",
                   help="run only this scenario (repeatable); default: all, in order")  # fmt: skip
    p.add_argument("--growth", metavar="N,N", help="file counts of the growth scenario's trees "
                   "(default: 10000,100000 full, 10000 quick); kept in WORKDIR/cache")  # fmt: skip
    p.add_argument("--tools", metavar="A,B", help="comma-separated tools (default: all that can run)")
    p.add_argument("--repeat", type=int, metavar="N", help="runs per timed row (default: 3 full, 1 quick)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="where data, repositories and logs go "
                   "(default: bench/work/, git-ignored; its run/ subdirectory is emptied at start)")  # fmt: skip
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE ('-' for stdout)")
    p.add_argument("--tree", type=Path, default=None, help="the real tree to copy (default: this Python's stdlib)")
    p.add_argument("--no-install", action="store_true",
                   help="never apt-get install the anchors; tools that are missing are skipped")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep WORKDIR/run (data, repositories) after the run")
    p.add_argument("--profile", action="store_true",
                   help="run Neophytos clients and twistd under py-spy (inflates their times)")  # fmt: skip
    return p


def log(text: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    sys.stderr.write(f"[{stamp}] {text}\n")
    sys.stderr.flush()


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    preset = PRESETS["quick" if args.quick else args.preset or "full"]
    repeats = args.repeat or preset.repeats
    scenarios = args.scenario or list(SCENARIOS)
    names = args.tools.split(",") if args.tools else [t.name for t in ALL_TOOLS]
    unknown = [n for n in names if n not in TOOLS_BY_NAME]
    if unknown:
        _parser().error(f"unknown tool(s) {', '.join(unknown)}; choose from {', '.join(TOOLS_BY_NAME)}")
    growth = None
    if args.growth:
        try:
            growth = tuple(int(n.replace("_", "")) for n in args.growth.split(","))
        except ValueError:
            _parser().error(f"--growth: comma-separated file counts, not {args.growth!r}")
        if not growth or min(growth) < 1:
            _parser().error("--growth: file counts of at least 1")
    tree = args.tree or default_tree()
    if not tree.is_dir():
        _parser().error(f"--tree {tree} is not a directory")
    signal.signal(signal.SIGTERM, _terminate)

    if not args.no_install:
        still = deps.install_missing(log)
        if still:
            log(f"could not install {' '.join(still)}: the tools that need them are skipped")
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    meta: dict[str, Any] = {
        "command": "python -m bench.run " + shlex.join(sys.argv[1:] if argv is None else argv),
        "started": datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "preset": preset.__dict__, "repeats": repeats, "scenarios": scenarios, "tree": str(tree),
        "growth": list(growth or preset.growth), "machine": deps.machine(), "method": METHOD, "skipped": {},
        "errors": [], "loadavg_start": os.getloadavg(),
    }  # fmt: skip
    lab = Lab(workdir, [], preset.timeout, log)
    runnable = []
    for name in names:
        tool = TOOLS_BY_NAME[name](lab)
        why = tool.missing()
        if why:
            meta["skipped"][name] = why
            log(f"skipping {name}: {why}")
        else:
            runnable.append(tool)
    if not runnable:
        log("no tool can run")
        return 1
    lab.tools = runnable
    meta["tools"] = {t.name: {"label": t.label, "version": t.version()} for t in runnable}
    log(f"preset {preset.name}, {repeats} run(s) per row, tools: {', '.join(t.name for t in runnable)}")

    ctx: Context | None = None
    verdict = Verdict((), (), None, None, "not run")
    interrupted = False
    try:
        with lab:
            if args.profile:
                from bench.profile import Profiler

                lab.profiler = Profiler(workdir / "profiles")
            meta["client_rss_floor"] = launcher_floor(lab.logs)
            ctx = Context(lab, preset, runnable, tree, repeats, log, growth)
            log("self-check: rsync as the harness runs it against plain rsync -a -e ssh")
            try:
                verdict = self_check(ctx)
            except Exception as e:
                verdict = Verdict((), (), None, False, f"the self-check broke: {e!r}")
                log(f"self-check failed:\n{traceback.format_exc()}")
            log(verdict.line())
            for name in scenarios:
                log(f"scenario {name}")
                lab.scenario = name
                t = time.monotonic()
                try:
                    SCENARIOS[name](ctx)
                except Exception as e:
                    meta["errors"].append(f"{name}: {e!r}")
                    log(f"scenario {name} failed:\n{traceback.format_exc()}")
                log(f"scenario {name} done in {time.monotonic() - t:.0f} s")
    except KeyboardInterrupt:
        interrupted = True
        meta["errors"].append("interrupted")
        log("interrupted: stopping servers and clients")
    rows = ctx.rows if ctx else []
    fill_ratios(rows)
    meta["elapsed_s"] = round(time.time() - started, 1)
    meta["loadavg_end"] = os.getloadavg()
    meta["self_check"] = verdict.as_json()
    meta["trash_emptied_early"] = lab.trash.early
    doc: dict[str, Any] = {"meta": meta, "rows": [r.as_json() for r in rows]}
    text = json.dumps(doc, indent=1, default=str)
    (workdir / "last-run.json").write_text(text)
    out = sys.stdout
    if args.json == "-":
        sys.stdout.write(text + "\n")
        out = sys.stderr
    elif args.json:
        Path(args.json).write_text(text)
    out.write(table(doc["rows"], meta.get("client_rss_floor", 0)) + "\n")
    if lab.profiler is not None:
        from bench.profile import summarize

        for f in lab.profiler.files:
            if f.exists():
                out.write("\n" + summarize(f) + "\n")
    for name, why in meta["skipped"].items():
        out.write(f"skipped {name}: {why}\n")
    bad = [r for r in rows if r.failures or r.verified is False]
    for r in bad:
        out.write(f"FAILED {r.scenario} / {r.case} / {r.tool}: "
                  f"{next((x.error for x in r.runs if x.error), '; '.join(r.problems[:3]))}\n")  # fmt: skip
    for err in meta["errors"]:
        out.write(f"ERROR {err}\n")
    out.write(verdict.line() + "\n")
    log(f"done in {meta['elapsed_s']:.0f} s; rows also in {workdir / 'last-run.json'}")
    if not args.keep:  # after the report: deleting a run's trees takes minutes on a disk with online discard
        log(f"deleting {lab.root}")
        shutil.rmtree(lab.root, ignore_errors=True)
    if interrupted:
        return 130
    if bad or meta["errors"]:
        return 1
    return 3 if verdict.valid is False else 0


if __name__ == "__main__":
    sys.exit(main())
