"""neo-push / neo-pull command lines: argument forms, usage errors, exit codes (run as real processes)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from neotwist.client.cli import _split_args, build_parser
from neotwist.client.filters import SAMPLE


def _run(tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    code = f"import sys; from neotwist.client.cli import main; sys.exit(main({tool!r}, sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_positional_and_original_forms() -> None:
    p = build_parser("push")
    assert _split_args(p.parse_args(["/data", "alice@h/t"]), "push") == ("/data", "alice@h/t")
    args = p.parse_args(["--lpath=/x", "--rpath=peach/sub", "--host=h", "--port=99", "--password=p"])
    assert _split_args(args, "push") == ("/x", "h:99/peach/sub")
    assert args.password == "p"
    q = build_parser("pull")
    assert _split_args(q.parse_args(["alice@h/t", "/out"]), "pull") == ("/out", "alice@h/t")
    assert q.parse_args(["--push", "a@h/t", "/x"]).direction == "push"
    assert q.parse_args(["--authcode=s", "a@h/t", "/x"]).password == "s"


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    r = _run("push", str(tmp_path))
    assert r.returncode == 2 and "expected LOCAL_DIR REMOTE" in r.stderr
    r = _run("push", "--rpath=peach", str(tmp_path))
    assert r.returncode == 2 and "--rpath and --host go together" in r.stderr
    r = _run("pull", "not-a-remote", str(tmp_path))
    assert r.returncode == 2 and "expected [ssh://|tls://]" in r.stderr
    r = _run("push", "--bogus")
    assert r.returncode == 2


def test_ls_history_listings_refuse_recursive(tmp_path: Path) -> None:
    """-R with --deleted, --versions or --snapshots was silently ignored: now a usage error before any connection
    (port 1 is never reached: that would exit 1)."""
    for which in (["--deleted"], ["--versions", "a.txt"], ["--snapshots"]):
        r = subprocess.run(
            [str(Path(sys.executable).with_name("neo-ls")), "-R", *which, "alice@127.0.0.1:1/t"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=tmp_path,
        )  # fmt: skip
        assert r.returncode == 2, (which, r.stderr)
        errors = [line for line in r.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and f"{which[0]} takes no -R" in errors[0], r.stderr


def test_unreachable_server_exits_1_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = _run(
        "push",
        "--lpath",
        str(tmp_path),
        "--rpath=peach",
        "--host=127.0.0.1",
        f"--port={port}",
        "--password=x",
    )
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0
    assert f"127.0.0.1:{port}" in r.stderr


def test_missing_local_dir_exits_1(tmp_path: Path) -> None:
    r = _run("push", str(tmp_path / "missing"), "a@127.0.0.1:1/t")
    assert r.returncode == 1 and "is not a directory" in r.stderr


def test_make_sample_filter_file(tmp_path: Path) -> None:
    r = _run("push", "--make-sample-filter-file", cwd=tmp_path)
    assert r.returncode == 0
    assert (tmp_path / "filter.example").read_text() == SAMPLE


def test_help_teaches_with_examples() -> None:
    for tool in ("push", "pull"):
        r = _run(tool, "--help")
        assert r.returncode == 0
        assert "examples:" in r.stdout and "--lpath" in r.stdout and "--password-stdin" in r.stdout


def test_pull_help_lists_no_push_only_flags() -> None:
    pull = _run("pull", "--help")
    assert pull.returncode == 0
    for flag in ("--make-sample-filter-file", "--push", "--exclude", "--filter-file"):
        assert flag not in pull.stdout, flag
    push = _run("push", "--help")
    assert "--make-sample-filter-file" in push.stdout and "--pull" not in push.stdout


def test_every_command_has_version() -> None:
    from neotwist import __version__

    for program in ("neo-push", "neo-pull", "neo-ls", "neo-prune", "neo-check", "neo-share", "neo-target",
                    "neo-key", "neo-admin", "neo-diff", "neo-find", "neo-cat", "neo-mount"):  # fmt: skip
        r = subprocess.run([str(Path(sys.executable).parent / program), "--version"], capture_output=True,
                           text=True, timeout=60)  # fmt: skip
        assert r.returncode == 0, (program, r.stderr)
        assert r.stdout.strip() == f"{program} (Neophytos) {__version__}", r.stdout
    r = subprocess.run([str(Path(sys.executable).parent / "twistd"), "neophytos", "--version"], capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0 and __version__ in r.stdout, r.stdout
