"""The benchmark harness end to end on tiny data: real twistd, real neo-push/neo-pull, real measurements.

It runs the restore scenario (which first pushes the tree, then restores it into an empty directory and into
a stale copy, comparing both byte for byte with the source) for Neophytos over SSH, and for rsync only when
rsync and sshd are already installed: it never installs anything. With rsync, the run's self-check (rsync as
the harness times it against plain ``rsync -a -e ssh``) runs too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

if shutil.which("ssh-keygen") is None:
    pytest.skip("ssh-keygen not installed (the harness makes its client key with it)", allow_module_level=True)


def _rsync_usable() -> bool:
    return shutil.which("rsync") is not None and shutil.which("ssh") is not None and Path("/usr/sbin/sshd").exists() \
        and os.geteuid() == 0  # fmt: skip


def _small_tree(root: Path) -> Path:
    """A stand-in for the real tree: small text and binary files in nested directories, one symlink."""
    for d in range(4):
        sub = root / f"pkg{d}" / "sub"
        sub.mkdir(parents=True)
        for i in range(15):
            (sub / f"m{i}.py").write_text(f"# module {d}.{i}\n" + "x = 1\n" * (50 * (i + 1)))
            (root / f"pkg{d}" / f"data{i}.bin").write_bytes(os.urandom(1000 * i + 7))
    os.symlink("pkg0/sub/m0.py", root / "link.py")
    return root


def test_restore_scenario_end_to_end(tmp_path: Path) -> None:
    tools = "neo-ssh,rsync" if _rsync_usable() else "neo-ssh"
    out = tmp_path / "rows.json"
    tree = _small_tree(tmp_path / "tree")
    files = sum(1 for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    r = subprocess.run(
        [sys.executable, "-m", "bench.run", "--preset", "tiny", "--scenario", "restore", "--tools", tools,
         "--no-install", "--tree", str(tree), "--workdir", str(tmp_path / "work"),
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    doc = json.loads(out.read_text())
    check = doc["meta"]["self_check"]
    # on tiny data the verdict itself is noise; what must hold is that it was made and decides the exit status
    assert r.returncode == (3 if check["verdict"] == "INVALID" else 0), r.stdout + r.stderr
    assert "| restore |" in r.stdout  # the table
    assert f"self-check: {check['verdict']}" in r.stdout
    if "rsync" in tools:
        assert check["verdict"] in ("valid", "INVALID")
        assert len(check["harness_s"]) == len(check["plain_s"]) >= 5
        assert all(t > 0 for t in check["harness_s"] + check["plain_s"])
    else:
        assert check["verdict"] == "not checked"
    assert doc["meta"]["machine"]["nproc"] >= 1
    rows = doc["rows"]
    by_tool: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_tool.setdefault(str(row["tool"]), []).append(row)
    assert set(by_tool) == set(tools.split(","))
    for tool, tool_rows in by_tool.items():
        assert [str(row["case"]).split(",")[0] for row in tool_rows] == ["full", "delta"], tool
        full, delta = tool_rows
        for row in tool_rows:
            assert row["errors"] == 0 and row["verified"] is True, row
            assert isinstance(row["wall_s"], float) and row["wall_s"] > 0
            assert isinstance(row["client_peak_rss"], int) and row["client_peak_rss"] > 1_000_000
            assert isinstance(row["server_peak_rss"], int) and row["server_peak_rss"] > 1_000_000
            assert isinstance(row["sent"], int) and row["sent"] > 0
        assert isinstance(full["received"], int) and isinstance(delta["received"], int)
        assert full["received"] > 200_000  # the whole tree came over the wire...
        assert delta["received"] < full["received"] / 3  # ...but not again for one changed file
    neo = by_tool["neo-ssh"][0]
    assert neo["tool_received"] and neo["runs"][0]["summary"]["files_changed"] == files  # type: ignore[index]
    assert not (tmp_path / "work" / "run").exists()  # data and repositories are removed after the run


def test_growth_and_concurrent_scenarios_end_to_end(tmp_path: Path) -> None:
    """The growth scenario pushes generated trees of each ``--growth`` size twice (first, unchanged), keeping
    them in WORKDIR/cache for the next run; the concurrent scenario records the server's RSS before and after."""
    out = tmp_path / "rows.json"
    work = tmp_path / "work"
    argv = [sys.executable, "-m", "bench.run", "--preset", "tiny", "--scenario", "growth", "--scenario",
            "concurrent", "--tools", "neo-ssh", "--no-install", "--growth", "150,1200", "--workdir", str(work),
            "--json", str(out)]  # fmt: skip
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(out.read_text())["rows"]
    growth = [row for row in rows if row["scenario"] == "growth"]
    assert [row["case"] for row in growth] == [
        "first push, 150 files", "re-push, unchanged, 150 files",
        "first push, 1,200 files", "re-push, unchanged, 1,200 files",
    ]  # fmt: skip
    for row in growth:
        assert row["errors"] == 0 and row["wall_s"] > 0 and "µs/file" in row["note"], row
        assert row["client_peak_rss"] > 1_000_000 and row["server_peak_rss"] > 1_000_000
    assert growth[1]["runs"][0]["summary"]["files_changed"] == 0  # the re-push read nothing again
    assert growth[2]["runs"][0]["summary"]["files"] == 1200
    concurrent = next(row for row in rows if row["scenario"] == "concurrent")
    before, after = concurrent["server_before_rss"], concurrent["server_after_rss"]
    assert isinstance(before, int) and isinstance(after, int) and before > 1_000_000 and after > 1_000_000
    assert "server RSS" in concurrent["note"]
    kept = sorted(p.name for p in (work / "cache").iterdir())
    assert kept == ["growth-1200-s7", "growth-1200-s7.complete", "growth-150-s7", "growth-150-s7.complete"]
