"""Run one command and write its wall time, CPU time and peak RSS as JSON: the clean way to measure a client.

Why a separate small process: Linux carries the parent's RSS high-water mark into the child's ``ru_maxrss``
across fork/vfork + exec, so a client spawned straight from the benchmark (which holds big files in memory
at times) would report the benchmark's own peak. This launcher is started with ``python -I -S`` (about 10 MB),
spawns the command, reaps it with ``wait4`` and writes ``{"code", "wall_s", "cpu_s", "maxrss"}`` to the file
named first on its command line. ``maxrss`` cannot be below the launcher's own size (~10 MB), far less than
any client measured here. It imports nothing from the benchmark, to stay small.

usage: python -I -S launch.py RESULT.json COMMAND [ARG...]
"""

import json
import os
import sys
import time


def main() -> int:
    result, argv = sys.argv[1], sys.argv[2:]
    start = time.monotonic()
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ)
    except OSError as e:
        sys.stderr.write(f"launch: cannot run {argv[0]}: {e}\n")
        return 127
    _, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    doc = {"code": code, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "maxrss": usage.ru_maxrss * 1024}
    with open(result + ".tmp", "w") as f:
        json.dump(doc, f)
    os.rename(result + ".tmp", result)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
