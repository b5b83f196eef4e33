"""``python -m bench.results RUN.json``: the Markdown of one run for bench/RESULTS.md.

It prints the machine (nproc, memory, kernel, CPU, tool versions), the exact command, the run's self-check
verdict, how each column was measured, and the table, so RESULTS.md is always made from measured numbers and
never retyped by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.report import table


def render(doc: dict[str, Any]) -> str:
    meta = doc["meta"]
    m = meta["machine"]
    tools = "\n".join(f"- {name}: {t['label']}; `{t['version']}`" for name, t in meta["tools"].items())
    skipped = "".join(f"\n- skipped {k}: {v}" for k, v in meta.get("skipped", {}).items())
    method = "\n".join(f"- {k}: {v}" for k, v in meta["method"].items())
    load = ""
    if "loadavg_start" in meta:
        load = (f"; load average {meta['loadavg_start'][0]:.2f} at start, "
                f"{meta.get('loadavg_end', ['?'])[0]:.2f} at end")  # fmt: skip
    check = meta.get("self_check") or {}
    if check.get("ratio") is not None:
        pairs = ", ".join(f"{h:.2f}/{p:.2f}" for h, p in zip(check["harness_s"], check["plain_s"], strict=True))
        verdict = (f"Self-check: **{check['verdict']}**, harness/plain rsync first push of the tree paired ratio "
                   f"{check['ratio']:.3f} (tolerance ±{check['tolerance']:.0%}; pairs, s: {pairs}).")  # fmt: skip
    else:
        verdict = f"Self-check: **{check.get('verdict', 'not run')}** ({check.get('reason', 'an older run')})."
    return f"""\
Command: `{meta['command']}` (started {meta['started']}, {meta['elapsed_s'] / 60:.0f} min{load}).
{verdict}
Preset `{meta['preset']['name']}`, {meta['repeats']} run(s) per timed row; the real tree is `{meta['tree']}`.

Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_bytes'] / 2**30:.1f} GiB, kernel {m['kernel']}, {m['os']},
Python {m['python']}, {m['openssh']}; disk `{m['disk']}`.

{tools}{skipped}

How each column was measured:
{method}

{table(doc['rows'], meta.get('client_rss_floor', 0))}
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.results", description=__doc__)
    p.add_argument("run", type=Path, help="a JSON file written by python -m bench.run --json FILE")
    args = p.parse_args(argv)
    sys.stdout.write(render(json.loads(args.run.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
