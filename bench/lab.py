"""The bench's world for one run: the work directory, the client key, the servers (twistd and sshd), the
byte-counting relays in front of them, and the measured operations (push, pull, many pushes at once).

It is a context manager: whatever happens, every process it started is stopped on the way out.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.measure import Child, ProcResult, disk_usage
from bench.neoserver import NeoServer
from bench.relay import Relay
from bench.sshd import Sshd, make_key
from bench.tools import TOOLS_BY_NAME, Invocation, Target, Tool
from bench.trash import Trash


@dataclass
class OpResult:
    """One measured operation of one tool (with many clients: their aggregate)."""

    tool: str
    op: str  # "push" or "pull"
    ok: bool
    wall_s: float
    cpu_s: float  # client user + system
    client_rss: int  # bytes; the largest client when there are many
    server_rss: int | None  # bytes; None without a server process
    sent: int | None  # wire bytes client -> server (relay); None without a wire
    received: int | None
    tool_sent: int | None = None  # as the tool reports it (Neophytos --json frames, rsync --stats)
    tool_received: int | None = None
    storage_added: int | None = None  # bytes on disk the server side grew by
    storage_added_apparent: int | None = None
    clients: int = 1
    server_before: int | None = None  # server RSS before the operation (the concurrent scenario)
    server_after: int | None = None  # server RSS some seconds after it ended (the concurrent scenario)
    failures: int = 0
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


class Lab:
    def __init__(self, workdir: Path, tool_names: list[str], timeout: float, log: Any = print) -> None:
        self.workdir = workdir
        self.root = workdir / "run"
        self.timeout = timeout
        self.log = log
        self.client_dir = self.root / "client"
        self.server_dir = self.root / "server"
        self.logs = self.root / "logs"
        self.key = self.root / "keys" / "id_ed25519"
        self.tools: list[Tool] = [TOOLS_BY_NAME[n](self) for n in tool_names]
        self.neo: NeoServer = NeoServer(self.root / "neo", self.key)
        self.sshd: Sshd = Sshd(self.root / "sshd", self.key)
        self.relays: dict[str, Relay] = {}
        self.trash = Trash(self.root / "trash", log)
        self.profiler: Any = None  # bench.profile.Profiler when --profile
        self.scenario = ""  # the scenario running now (names profile files)
        self._children: set[Child] = set()

    # --- life cycle -----------------------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        for d in (self.client_dir, self.server_dir, self.logs, self.key.parent):
            d.mkdir(parents=True, exist_ok=True)
        make_key(self.key)
        if any(t.needs_neo for t in self.tools):
            self.neo.start()
            self.relays["neo-ssh"] = Relay(self.neo.ssh_port, "neo-ssh")
            self.relays["neo-tls"] = Relay(self.neo.tls_port, "neo-tls")
            self.log(f"twistd neophytos pid {self.neo.pid}: ssh {self.neo.ssh_port}, tls {self.neo.tls_port}")
        if any(t.needs_sshd for t in self.tools):
            self.sshd.start()
            self.relays["sshd"] = Relay(self.sshd.port, "sshd")
            self.log(f"sshd pid {self.sshd.pid} on 127.0.0.1:{self.sshd.port}")

    def close(self) -> None:
        for child in list(self._children):
            child.kill()
        if self.profiler is not None:
            self.profiler.close()
        for relay in self.relays.values():
            relay.close()
        self.neo.stop()
        self.sshd.stop()

    # --- measured operations --------------------------------------------------------------------------------

    def push(self, tool: Tool, target: Target, src: Path, version: int | None = None) -> OpResult:
        """Push ``src`` into ``target``; on success the target records the pushed dataset ``version``."""
        result = self._measure(tool, "push", [(target, tool.push(target, src))], f"{target.key}")
        if result.ok:
            target.version = version
        return result

    def push_many(self, tool: Tool, jobs: list[tuple[Target, Path]]) -> OpResult:
        """All pushes at once; wall time from the first start to the last exit."""
        return self._measure(tool, "push", [(t, tool.push(t, src)) for t, src in jobs], "concurrent")

    def pull(self, tool: Tool, target: Target, dest: Path) -> OpResult:
        return self._measure(tool, "pull", [(target, tool.pull(target, dest))], f"{target.key}")

    def _measure(self, tool: Tool, op: str, jobs: list[tuple[Target, Invocation]], label: str) -> OpResult:
        pushing = op == "push"
        # Write back what earlier steps left dirty (data generation, copies, the last tool's files), so an
        # operation is not charged for someone else's writeback; not part of the measured time.
        os.sync()
        dirs = sorted({tool.storage_dir(t) for t, _ in jobs}) if pushing else []
        before = {d: disk_usage(d) for d in dirs}
        relay = tool.relay
        counters0 = relay.counters() if relay else None
        memory = tool.server_memory()
        memory.begin()
        profiler = self.profiler if self.profiler is not None and tool.needs_neo else None
        if profiler is not None:
            profiler.begin(f"{self.scenario}-{label}-{tool.name}-{op}", self.neo.pid)
        children: list[Child] = []
        results: list[ProcResult] = []
        try:
            for _, inv in jobs:
                argv = profiler.wrap(inv.argv, len(children)) if profiler is not None else inv.argv
                child = Child(argv, env=inv.env, cwd=inv.cwd, stdin=inv.stdin, logdir=self.logs)
                self._children.add(child)
                children.append(child)
            deadline = time.monotonic() + self.timeout
            for child in children:
                results.append(child.wait(max(1.0, deadline - time.monotonic())))
        finally:
            for child in children:
                child.kill()
                self._children.discard(child)
            if profiler is not None:
                profiler.end()
        if relay:
            relay.wait_idle(10)
        server_rss = memory.end()
        wire = relay.counters() - counters0 if relay and counters0 else None
        added = added_apparent = None
        if pushing:
            after = {d: disk_usage(d) for d in dirs}
            added = sum(after[d].disk - before[d].disk for d in dirs)
            added_apparent = sum(after[d].apparent - before[d].apparent for d in dirs)
            per_target = added // len(jobs)
            for t, _ in jobs:
                if len(jobs) == 1:
                    t.storage += added
                    t.storage_apparent += added_apparent
                else:
                    t.storage += per_target
            for (t, _), r in zip(jobs, results, strict=True):
                if r.returncode in tool.ok_codes:
                    t.pushes += 1
        failed = [r for r in results if r.returncode not in tool.ok_codes]
        parsed = [tool.parse(r) for r in results]
        tool_sent = _total(p[0] for p in parsed)
        tool_received = _total(p[1] for p in parsed)
        error = None
        if failed:
            r = failed[0]
            why = "timed out" if r.timed_out else f"exit {r.returncode}"
            error = f"{len(failed)}/{len(results)} failed; first: {why}: {r.tail(600)}"
            if tool.needs_neo:
                error += f"\n--- twistd log tail ---\n{self.neo.log_tail(1500)}"
            self.log(f"  ! {tool.name} {op} {label}: {error}")
        start = min(c.start for c in children)
        end = max(c.end or c.start + r.wall_s for c, r in zip(children, results, strict=True))
        return OpResult(
            tool=tool.name, op=op, ok=not failed, wall_s=end - start if len(children) > 1 else results[0].wall_s,
            cpu_s=sum(r.cpu_s for r in results), client_rss=max(r.maxrss for r in results), server_rss=server_rss,
            sent=wire.up if wire else None, received=wire.down if wire else None,
            tool_sent=tool_sent, tool_received=tool_received, storage_added=added,
            storage_added_apparent=added_apparent, clients=len(results), failures=len(failed), error=error,
            summary=parsed[0][2] if len(parsed) == 1 else {},
        )  # fmt: skip


def _total(values: Any) -> int | None:
    values = list(values)
    if not values or any(v is None for v in values):
        return None
    return int(sum(values))
