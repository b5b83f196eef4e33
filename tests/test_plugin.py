"""Packaging of the twistd plugin: the built wheel ships twisted/plugins/neophytos_plugin.py and never a
twisted/__init__.py (which would shadow Twisted itself), and twistd lists the plugin."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Isolated, as a real release build: pyproject's PEP 639 license string needs a newer setuptools than
    # the venv may have.
    r = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (built,) = out.glob("neophytos-*.whl")
    return built


def test_wheel_contains_plugin_and_no_twisted_init(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/neophytos_plugin.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert "neotwist/tap.py" in names and "neotwist/server/ssh.py" in names and "neotwist/server/admin/cli.py" in names
    assert not any(n.startswith("tests/") for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "neo-admin = neotwist.entry:admin" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_twistd_lists_neophytos() -> None:
    r = subprocess.run([str(BIN / "twistd"), "--help"], capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    assert "neophytos" in r.stdout


def test_twistd_neophytos_help() -> None:
    r = subprocess.run(
        [str(BIN / "twistd"), "neophytos", "--help"], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert r.returncode == 0, r.stderr
    assert "--data" in r.stdout and "--ssh" in r.stdout and "--tls" in r.stdout
    assert "bcrypt" not in r.stdout  # the tests-only option stays hidden


def test_bad_options_are_usage_errors() -> None:
    command = [str(BIN / "twistd"), "-n", "neophytos", "--tls", "ssl:4323"]
    r = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "TLS is added by the server" in r.stdout + r.stderr
    r = subprocess.run([*command[:3], "--ssh-log-level", "chatty"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "--ssh-log-level: one of debug, info, warn, error" in r.stdout + r.stderr


def test_open_target_options() -> None:
    from twisted.python import usage

    from neotwist.tap import Options

    options = Options()
    options.parseOptions([])
    assert (options["max_open_targets"], options["target_idle"]) == (64, 300.0)
    options = Options()
    options.parseOptions(["--max-open-targets", "8", "--target-idle", "30"])
    assert (options["max_open_targets"], options["target_idle"]) == (8, 30.0)
    for bad, why in [
        (["--max-open-targets", "0"], "at least 1"),
        (["--max-open-targets", "many"], "a whole number"),
        (["--target-idle", "-1"], "seconds from 0 to 86400"),
        (["--target-idle", "soon"], "a number of seconds"),
    ]:
        with pytest.raises(usage.UsageError, match=why):
            Options().parseOptions(bad)
