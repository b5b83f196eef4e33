"""The scenarios of the benchmark, each a function that runs every tool on the same data and adds rows.

Tools take turns inside each repeat (the order rotates between repeats), so slow drifts of the machine (page
cache, disk writeback) fall on all of them alike. Caches are warm: nothing here can drop the page cache.

Scenarios share one context: the data sets, and per tool the target that holds each data set's latest pushed
version. A scenario that needs a tool's target to be current pushes it first, unmeasured (``ensure_current``),
so any one of them can run alone with ``--scenario``.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench import data
from bench.data import DataSet
from bench.lab import Lab, OpResult
from bench.report import Row, size
from bench.tools import Target, Tool

MiB = 1024 * 1024

GROWTH_SECONDS_PER_FILE = 0.01
"""The growth scenario's timeout per file (at least the preset's): 10,000 s for a million files."""


@dataclass(frozen=True)
class Preset:
    name: str
    tree_bytes: int | None  # about this much of the real tree, an even sample of its files (None: all of it)
    mix_bytes: int  # the generated tree of small and large files
    big_bytes: int  # the single big file of scenario 4
    clients: int  # concurrent clients of scenario 7
    client_bytes: int  # each client's tree
    repeats: int
    timeout: float  # seconds for one operation (all clients of one)
    versions: int = 10
    growth: tuple[int, ...] = (10_000, 100_000)  # the growth scenario's trees, in files (--growth N,N)
    settle: float = 15.0  # seconds the concurrent scenario waits before the server's RSS "after"


PRESETS = {
    "full": Preset("full", None, 256 * MiB, 512 * MiB, 16, 32 * MiB, 3, 3600),
    "quick": Preset("quick", 100 * MiB, 32 * MiB, 64 * MiB, 16, 4 * MiB, 1, 900, growth=(10_000,)),
    # for tests/test_bench.py: seconds, not minutes
    "tiny": Preset("tiny", 3 * MiB, 2 * MiB, 4 * MiB, 4, MiB // 4, 1, 120, versions=3, growth=(300,), settle=3.0),
}


class Context:
    def __init__(self, lab: Lab, preset: Preset, tools: list[Tool], tree_source: Path, repeats: int,
                 log: Callable[[str], None], growth: tuple[int, ...] | None = None) -> None:  # fmt: skip
        self.lab = lab
        self.preset = preset
        self.tools = tools
        self.tree_source = tree_source
        self.repeats = repeats
        self.log = log
        self.rows: list[Row] = []
        self.rng = random.Random(20240611)
        self.data_dir = lab.root / "data"
        self.scratch = lab.root / "scratch"
        self.cache_dir = lab.workdir / "cache"  # generated trees kept between runs (outside run/)
        self.growth = growth if growth is not None else preset.growth
        self.server_settle = preset.settle  # long enough for a server that shrinks when idle to have done so
        self.datasets: dict[str, DataSet] = {}
        self.targets: dict[tuple[str, str], Target] = {}
        self._written: dict[str, float] = {}

    # --- data ------------------------------------------------------------------------------------------

    def _dataset(self, name: str, make: Callable[[Path], None]) -> DataSet:
        if name not in self.datasets:
            path = self.data_dir / name
            t = time.monotonic()
            make(path)
            ds = DataSet(name, path)
            ds.refresh()
            self.log(f"data {name}: {ds.files:,} files, {data.tree_size(path)[1] / MiB:.1f} MiB "
                     f"({time.monotonic() - t:.1f} s to make)")  # fmt: skip
            self.datasets[name] = ds
            self.touched(ds)
        return self.datasets[name]

    def tree(self) -> DataSet:
        """A copy of the real tree (or an even sample of it), edited by some scenarios."""
        def make(p: Path) -> None:
            want = self.preset.tree_bytes
            fraction = 1.0 if want is None else min(1.0, want / max(1, data.tree_size(self.tree_source)[1]))
            data.copy_tree(self.tree_source, p, fraction)

        return self._dataset("tree", make)

    def mix(self) -> DataSet:
        return self._dataset("mix", lambda p: data.make_mix(p, self.preset.mix_bytes, seed=1))

    def big(self) -> DataSet:
        def make(p: Path) -> None:
            p.mkdir(parents=True)
            data.make_big_file(p / "big.img", self.preset.big_bytes, seed=2)

        return self._dataset("big", make)

    def client_tree(self, i: int) -> DataSet:
        return self._dataset(f"client-{i:02}", lambda p: data.make_mix(p, self.preset.client_bytes, seed=100 + i))

    def touched(self, ds: DataSet) -> None:
        """Remember when a data set was last written (see data.RACY_WAIT)."""
        self._written[ds.name] = time.monotonic()

    def _settle(self, ds: DataSet) -> None:
        wait = self._written.get(ds.name, 0) + data.RACY_WAIT - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    # --- targets and operations --------------------------------------------------------------------------

    def fresh(self, tool: Tool, key: str, versioned: bool = False) -> Target:
        """A new empty target for key; the previous one is discarded (anchors free their disk)."""
        old = self.targets.pop((tool.name, key), None)
        if old is not None:
            tool.discard(old)
        target = tool.create(key, versioned)
        self.targets[(tool.name, key)] = target
        return target

    def push(self, tool: Tool, target: Target, ds: DataSet) -> OpResult:
        self._settle(ds)
        return self.lab.push(tool, target, ds.path, ds.version)

    def ensure_current(self, tool: Tool, ds: DataSet, key: str | None = None) -> Target:
        """The tool's target for the data set, holding its current version (pushed now, unmeasured, if not)."""
        key = key or ds.name
        target = self.targets.get((tool.name, key))
        if target is None:
            target = self.fresh(tool, key)
        if target.version != ds.version:
            result = self.push(tool, target, ds)
            if not result.ok:
                raise RuntimeError(f"{tool.name}: preparing {key} failed: {result.error}")
        return target

    def order(self, repeat: int) -> list[Tool]:
        k = repeat % len(self.tools)
        return self.tools[k:] + self.tools[:k]

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        wall = f"{row.wall_s:.2f} s" if row.wall_s is not None else "FAILED"
        extra = "" if row.verified is None else (" verified" if row.verified else f" DIFFERS {row.problems[:2]}")
        self.log(f"  {row.scenario:17} {row.case:34} {row.tool:12} {wall}{extra}")
        return row

    def restore_into(self, tool: Tool, target: Target, dest: Path, expected: Path, stale: Path | None) -> tuple[
        OpResult, list[str]]:  # fmt: skip
        """Pull into dest (an empty directory, or a copy of ``stale``), compare with ``expected``, clean up."""
        self.lab.trash.put(dest)
        if stale is not None:
            data.clone_tree(stale, dest)
        else:
            dest.mkdir(parents=True)
        result = self.lab.pull(tool, target, dest)
        problems = data.compare_trees(expected, dest) if result.ok else ["restore failed"]
        self.lab.trash.put(dest)
        return result, problems


def _describe(ds: DataSet) -> str:
    return f"{ds.name} ({size(ds.bytes)}, {ds.files:,} files)"


# --- 1. first push -----------------------------------------------------------------------------------------


def first_push(ctx: Context) -> None:
    """A first push of the real tree and of the generated mix into new, empty targets."""
    for ds in (ctx.tree(), ctx.mix()):
        runs: dict[str, list[OpResult]] = {t.name: [] for t in ctx.tools}
        storage: dict[str, Target] = {}
        for rep in range(ctx.repeats):
            for tool in ctx.order(rep):
                target = ctx.fresh(tool, ds.name)
                runs[tool.name].append(ctx.push(tool, target, ds))
                storage[tool.name] = target
        for tool in ctx.tools:
            t = storage[tool.name]
            ctx.add(Row("first-push", _describe(ds), tool.name, "push", runs[tool.name], t.storage,
                        t.storage_apparent, ds.bytes))  # fmt: skip


# --- 2. re-push, nothing changed ---------------------------------------------------------------------------


def repush_unchanged(ctx: Context) -> None:
    ds = ctx.tree()
    targets = {t.name: ctx.ensure_current(t, ds) for t in ctx.tools}
    runs: dict[str, list[OpResult]] = {t.name: [] for t in ctx.tools}
    for rep in range(ctx.repeats):
        for tool in ctx.order(rep):
            runs[tool.name].append(ctx.push(tool, targets[tool.name], ds))
    for tool in ctx.tools:
        t = targets[tool.name]
        ctx.add(Row("repush-unchanged", _describe(ds), tool.name, "push", runs[tool.name], t.storage,
                    t.storage_apparent, ds.bytes))  # fmt: skip


# --- 3. re-push after changing 1 % of the files --------------------------------------------------------------


def repush_1pct(ctx: Context) -> None:
    ds = ctx.tree()
    targets = {t.name: ctx.ensure_current(t, ds) for t in ctx.tools}
    runs: dict[str, list[OpResult]] = {t.name: [] for t in ctx.tools}
    for rep in range(ctx.repeats):
        data.change_files(ds, 0.01, ctx.rng)  # a different 1 % each time
        ctx.touched(ds)
        for tool in ctx.order(rep):
            runs[tool.name].append(ctx.push(tool, targets[tool.name], ds))
    for tool in ctx.tools:
        t = targets[tool.name]
        ctx.add(Row("repush-1pct", f"{ds.name}, {len(ds.touched):,} files edited", tool.name, "push",
                    runs[tool.name], t.storage, t.storage_apparent, ds.bytes))  # fmt: skip


# --- 4. one big file, scattered small edits and an insertion --------------------------------------------------


def big_file(ctx: Context) -> None:
    ds = ctx.big()
    big = f"{ctx.preset.big_bytes // MiB} MiB file"
    runs: dict[str, list[OpResult]] = {t.name: [] for t in ctx.tools}
    targets: dict[str, Target] = {}
    for rep in range(ctx.repeats):
        for tool in ctx.order(rep):
            targets[tool.name] = ctx.fresh(tool, ds.name)
            runs[tool.name].append(ctx.push(tool, targets[tool.name], ds))
    for tool in ctx.tools:
        t = targets[tool.name]
        ctx.add(Row("big-file", f"first push, {big}", tool.name, "push", runs[tool.name], t.storage,
                    t.storage_apparent, ds.bytes))  # fmt: skip

    # the version every tool holds before the edits: the stale copy of the delta restore below
    stale = ctx.scratch / "big-stale"
    ctx.lab.trash.put(stale)
    data.clone_tree(ds.path, stale)
    runs = {t.name: [] for t in ctx.tools}
    for rep in range(ctx.repeats):
        data.edit_big_file(ds.path / "big.img", ctx.rng)
        ds.version += 1
        ctx.touched(ds)
        for tool in ctx.order(rep):
            runs[tool.name].append(ctx.push(tool, targets[tool.name], ds))
    ds.refresh()
    for tool in ctx.tools:
        t = targets[tool.name]
        ctx.add(Row("big-file", "100 edits of 100 B + 4 KiB insert", tool.name, "push", runs[tool.name], t.storage,
                    t.storage_apparent, ds.bytes))  # fmt: skip

    # pull the edited file back into a copy of the version before the edits
    case = "delta restore over the pre-edit copy"
    results: dict[str, list[OpResult]] = {t.name: [] for t in ctx.tools}
    problems: dict[str, list[str]] = {t.name: [] for t in ctx.tools}
    for rep in range(ctx.repeats):
        for tool in ctx.order(rep):
            r, p = ctx.restore_into(tool, targets[tool.name], ctx.scratch / f"big-{tool.name}", ds.path, stale)
            results[tool.name].append(r)
            problems[tool.name] += p
    for tool in ctx.tools:
        ctx.add(Row("big-file", case, tool.name, "pull", results[tool.name], data_bytes=ds.bytes,
                    verified=not problems[tool.name], problems=problems[tool.name]))  # fmt: skip
    ctx.lab.trash.put(stale)


# --- 4b. a release update: one source release replaced by the next ------------------------------------------

RELEASES = ("twisted", "26.4.0", "26.10.0")
"""The project and the two releases whose source trees the release-update scenario pushes one after the other."""
RELEASE_CACHE = Path(__file__).parent / "work" / "releases"


def release_tree(project: str, version: str) -> Path:
    """The unpacked source release (``pip download`` of its sdist, cached under bench/work)."""
    tree = RELEASE_CACHE / f"{project}-{version}"
    if tree.is_dir():
        return tree
    download = RELEASE_CACHE / "sdists"
    download.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                    "-d", str(download), f"{project}=={version}"], check=True, timeout=600)  # fmt: skip
    sdist = next(p for p in download.iterdir() if p.name.lower().startswith(f"{project}-{version}.tar"))
    unpack = RELEASE_CACHE / f".unpack-{project}-{version}"
    shutil.rmtree(unpack, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(unpack, filter="data")
    (top,) = list(unpack.iterdir())
    top.rename(tree)
    unpack.rmdir()
    return tree


def release_update(ctx: Context) -> None:
    """Push one release's source tree, replace it by the next release's in the same place, push again: the
    bytes of the second push are what a source tree's update costs (rsync: into the same destination)."""
    project, old_version, new_version = RELEASES
    old, new = release_tree(project, old_version), release_tree(project, new_version)
    ds = DataSet("release", ctx.data_dir / "release")
    runs: dict[str, list[OpResult]] = {t.name: [] for t in ctx.tools}
    targets: dict[str, Target] = {}
    for rep in range(ctx.repeats):
        for tool in ctx.order(rep):
            shutil.rmtree(ds.path, ignore_errors=True)
            data.clone_tree(old, ds.path)
            ds.version += 1
            ctx.touched(ds)
            targets[tool.name] = target = ctx.fresh(tool, ds.name)
            first = ctx.push(tool, target, ds)
            if not first.ok:
                raise RuntimeError(f"{tool.name}: pushing {project} {old_version} failed: {first.error}")
            shutil.rmtree(ds.path)
            data.clone_tree(new, ds.path)
            ds.version += 1
            ctx.touched(ds)
            runs[tool.name].append(ctx.push(tool, target, ds))
    ds.refresh()
    for tool in ctx.tools:
        t = targets[tool.name]
        ctx.add(Row("release-update", f"{project} {old_version} -> {new_version} ({ds.files:,} files)", tool.name,
                    "push", runs[tool.name], t.storage, t.storage_apparent, ds.bytes))  # fmt: skip
    shutil.rmtree(ds.path, ignore_errors=True)


# --- 5. restores --------------------------------------------------------------------------------------------


def restore(ctx: Context) -> None:
    ds = ctx.tree()
    targets = {t.name: ctx.ensure_current(t, ds) for t in ctx.tools}
    results: dict[str, list[OpResult]] = {t.name: [] for t in ctx.tools}
    problems: dict[str, list[str]] = {t.name: [] for t in ctx.tools}
    for rep in range(ctx.repeats):
        for tool in ctx.order(rep):
            r, p = ctx.restore_into(tool, targets[tool.name], ctx.scratch / f"restore-{tool.name}", ds.path, None)
            results[tool.name].append(r)
            problems[tool.name] += p
    for tool in ctx.tools:
        ctx.add(Row("restore", f"full, into an empty dir: {_describe(ds)}", tool.name, "pull", results[tool.name],
                    data_bytes=ds.bytes, verified=not problems[tool.name], problems=problems[tool.name]))  # fmt: skip

    # a stale copy: the tree as it is now; then 1 % of the files change and every tool pushes that version
    stale = ctx.scratch / "tree-stale"
    ctx.lab.trash.put(stale)
    data.clone_tree(ds.path, stale)
    data.change_files(ds, 0.01, ctx.rng)
    ctx.touched(ds)
    for tool in ctx.tools:
        ctx.ensure_current(tool, ds)
    results = {t.name: [] for t in ctx.tools}
    problems = {t.name: [] for t in ctx.tools}
    for rep in range(ctx.repeats):
        for tool in ctx.order(rep):
            r, p = ctx.restore_into(tool, targets[tool.name], ctx.scratch / f"restore-{tool.name}", ds.path, stale)
            results[tool.name].append(r)
            problems[tool.name] += p
    for tool in ctx.tools:
        ctx.add(Row("restore", f"delta, into a copy 1 % stale ({len(ds.touched):,} files)", tool.name, "pull",
                    results[tool.name], data_bytes=ds.bytes, verified=not problems[tool.name],
                    problems=problems[tool.name]))  # fmt: skip
    ctx.lab.trash.put(stale)


# --- 6. history: successive versions --------------------------------------------------------------------------


def versions(ctx: Context) -> None:
    """Ten versions of the tree, each with small changes (0.5 % of the files edited, 5 added, 2 removed):
    what the history costs on the server. rsync keeps history with --link-dest (one hard-linked tree per
    version); the others keep snapshots anyway."""
    ds = ctx.tree()
    n = ctx.preset.versions
    targets = {t.name: ctx.fresh(t, "versions", versioned=True) for t in ctx.tools}
    first: dict[str, list[OpResult]] = {t.name: [] for t in ctx.tools}
    later: dict[str, list[OpResult]] = {t.name: [] for t in ctx.tools}
    after_first: dict[str, int] = {}
    for v in range(n):
        if v:
            data.change_files(ds, 0.005, ctx.rng, added=5, removed=2)
            ctx.touched(ds)
        for tool in ctx.order(v):
            (later if v else first)[tool.name].append(ctx.push(tool, targets[tool.name], ds))
            if not v:
                after_first[tool.name] = targets[tool.name].storage
    for tool in ctx.tools:
        t = targets[tool.name]
        grow = (t.storage - after_first[tool.name]) / max(1, n - 1)
        note = f"first version {first[tool.name][0].wall_s:.2f} s, {size(after_first[tool.name])}; " \
               f"+{size(grow)} per later version"  # fmt: skip
        if tool.name == "rsync":
            note += "; --link-dest"
        ctx.add(Row("versions", f"{n} versions of {ds.name}: later pushes", tool.name, "push", later[tool.name],
                    t.storage, t.storage_apparent, ds.bytes, note=note))  # fmt: skip
        tool.discard(t)
        ctx.targets.pop((tool.name, "versions"), None)


# --- 7. many clients at once ------------------------------------------------------------------------------------


def concurrent(ctx: Context) -> None:
    k = ctx.preset.clients
    trees = [ctx.client_tree(i) for i in range(k)]
    total = sum(ds.bytes for ds in trees)
    for ds in trees:
        ctx._settle(ds)
    runs: dict[str, list[OpResult]] = {t.name: [] for t in ctx.tools}
    storage: dict[str, int] = {}
    for rep in range(ctx.repeats):
        for tool in ctx.order(rep):
            with ThreadPoolExecutor(max_workers=8) as pool:  # repository inits (restic's KDF) are slow one by one
                targets = list(pool.map(lambda ds, tool=tool: ctx.fresh(tool, ds.name), trees))
            jobs = [(t, ds.path) for t, ds in zip(targets, trees, strict=True)]
            memory = tool.server_memory()
            before = memory.now()
            result = ctx.lab.push_many(tool, jobs)
            time.sleep(ctx.server_settle)  # does the server give back what the clients made it take?
            result.server_before, result.server_after = before, memory.now()
            runs[tool.name].append(result)
            storage[tool.name] = result.storage_added or 0
    for tool in ctx.tools:
        ctx.add(Row("concurrent", f"{k} clients x {size(ctx.preset.client_bytes)} trees", tool.name,
                    "push", runs[tool.name], storage[tool.name], None, total,
                    note=f"client peak = largest client; {_server_after(runs[tool.name], ctx.server_settle)}"))
        for ds in trees:
            t = ctx.targets.pop((tool.name, ds.name), None)
            if t is not None:
                tool.discard(t)


def _server_after(runs: list[OpResult], settle: float) -> str:
    """The server's RSS before the clients and ``settle`` seconds after them (the last run's)."""
    last = runs[-1] if runs else None
    if last is None or last.server_after is None:
        return "no server process"
    return f"server RSS {size(last.server_before)} before, {size(last.server_after)} {settle:g} s after"


# --- 8. growth: the same kind of tree at 10k, 100k and 1M files ------------------------------------------------


def growth(ctx: Context) -> None:
    """A first push and an unchanged re-push of generated trees of small files (0-4 KiB, 1,000 entries per
    directory) at each size of ``ctx.growth``: time and memory per size show whether a per-file cost grows
    with the tree. The trees are kept under WORKDIR/cache (a million files take minutes to write)."""
    for files in ctx.growth:
        path, took = data.cached_growth(ctx.cache_dir, files)
        if took:
            data.wait_racy()  # files made just now: the files cache trusts none of them within its racy second
        ds = DataSet(f"growth-{files}", path)
        ds.refresh()
        ctx.log(f"data {ds.name}: {ds.files:,} files, {ds.bytes / MiB:.1f} MiB "
                + (f"({took:.0f} s to make)" if took else f"(kept in {ctx.cache_dir})"))  # fmt: skip
        timeout = ctx.lab.timeout
        ctx.lab.timeout = max(timeout, files * GROWTH_SECONDS_PER_FILE)
        try:
            targets = {t.name: ctx.fresh(t, ds.name) for t in ctx.tools}
            first = {t.name: ctx.push(t, targets[t.name], ds) for t in ctx.tools}
            again = {t.name: ctx.push(t, targets[t.name], ds) for t in ctx.tools}
        finally:
            ctx.lab.timeout = timeout
        for tool in ctx.tools:
            t = targets[tool.name]
            for case, result in (("first push", first[tool.name]), ("re-push, unchanged", again[tool.name])):
                per_file = f"{result.wall_s / max(1, ds.files) * 1e6:.0f} µs/file" if result.ok else "failed"
                ctx.add(Row("growth", f"{case}, {ds.files:,} files", tool.name, "push", [result], t.storage,
                            t.storage_apparent, ds.bytes, note=per_file))  # fmt: skip
            ctx.targets.pop((tool.name, ds.name), None)
            tool.discard(t)


SCENARIOS: dict[str, Callable[[Context], None]] = {
    "first-push": first_push,
    "repush-unchanged": repush_unchanged,
    "repush-1pct": repush_1pct,
    "big-file": big_file,
    "release-update": release_update,
    "restore": restore,
    "versions": versions,
    "concurrent": concurrent,
    "growth": growth,
}
