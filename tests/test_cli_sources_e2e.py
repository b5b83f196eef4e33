"""Where the remote, the password and the key's passphrase come from, against a real ``twistd``:
``NEO_REPOSITORY``, ``--password-file`` / ``NEO_PASSWORD_FILE``, ``--password-command`` /
``NEO_PASSWORD_COMMAND`` and the same for the passphrase."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import BIN, PASSWORD, RunningServer

if shutil.which("ssh-keygen") is None:
    pytest.skip("OpenSSH client not installed", allow_module_level=True)

PASSPHRASE = "a long passphrase for tests"


@pytest.fixture
def server(module_server: RunningServer) -> RunningServer:
    """One server for the module's tests (they use targets and files of their own), to keep the suite fast."""
    return module_server


def _tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha")
    return src


def test_neo_repository_is_the_default_remote(server: RunningServer, tmp_path: Path) -> None:
    src = _tree(tmp_path)
    env = server.env(NEO_REPOSITORY=server.remote("t"))
    pushed = server.cli("neo-push", "--accept-new-host-key", "--json", str(src), env=env)
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["snapshot"] == 1
    listed = server.cli("neo-ls", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [e["path"] for e in json.loads(listed.stdout)["entries"]] == ["", "a.txt"]
    dest = tmp_path / "dest"
    pulled = server.cli("neo-pull", str(dest), env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert (dest / "a.txt").read_text() == "alpha"
    # an explicit REMOTE wins over the environment
    other = server.cli("neo-push", str(src), server.remote("other"), env=env)
    assert other.returncode == 0, other.stderr
    # without either, the usage error says both ways
    bare = server.cli("neo-ls", env=server.env())
    assert bare.returncode == 2 and "NEO_REPOSITORY" in bare.stderr, bare.stderr


def _password_login(server: RunningServer, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """neo-ls over TLS, where the only way in is the password."""
    return subprocess.run(
        [str(BIN / "neo-ls"), "--known-hosts", str(server.known_hosts), "--accept-new-host-key", *args,
         f"tls://alice@127.0.0.1:{server.tls_port}"],
        capture_output=True, text=True, timeout=120, env=server.env(**env), stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_password_file_and_command(server: RunningServer, tmp_path: Path) -> None:
    good = tmp_path / "pw"
    good.write_text(PASSWORD + "\nignored second line\n")
    bad = tmp_path / "bad"
    bad.write_text("wrong\n")
    script = tmp_path / "pw.py"
    script.write_text("import sys; print(open(sys.argv[1]).read().splitlines()[0])\n")
    command = f"{sys.executable} {script}"
    for args, env in [
        (["--password-file", str(good)], {}),
        (["--password-command", f"{command} {good}"], {"NEO_PASSWORD_FILE": str(bad)}),  # a flag beats the env
    ]:
        r = _password_login(server, *args, **env)
        assert r.returncode == 0, (args, env, r.stderr)
    wrong = _password_login(server, NEO_PASSWORD_COMMAND=f"{command} {bad}")
    assert wrong.returncode == 3, wrong.stderr
    missing = _password_login(server, "--password-file", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "cannot read the --password-file" in missing.stderr, missing.stderr
    failing = _password_login(server, "--password-command", f"{sys.executable} -c 'raise SystemExit(4)'")
    assert failing.returncode == 3 and "failed with status 4" in failing.stderr, failing.stderr


def test_passphrase_file_and_command(server: RunningServer, tmp_path: Path) -> None:
    init = subprocess.run(
        [str(BIN / "neo-key"), "init", "--kdf-memory", "8", "--kdf-iterations", "1"],
        capture_output=True, text=True, timeout=60, env=server.env(NEO_PASSPHRASE=PASSPHRASE),
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    src = _tree(tmp_path)
    phrase = tmp_path / "phrase"
    phrase.write_text(PASSPHRASE + "\n")
    pushed = server.cli("neo-push", "--accept-new-host-key", "--encrypt", "--passphrase-file", str(phrase), str(src),
                        server.remote("e"))  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    pulled = server.cli("neo-pull", "--passphrase-command", f"cat {phrase}", server.remote("e"),
                        str(tmp_path / "d1"))  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "d1" / "a.txt").read_text() == "alpha"
    via_env = server.cli("neo-pull", server.remote("e"), str(tmp_path / "d2"),
                         env=server.env(NEO_PASSPHRASE_FILE=str(phrase)))  # fmt: skip
    assert via_env.returncode == 0, via_env.stderr
    phrase.write_text("not it\n")
    wrong = server.cli("neo-pull", server.remote("e"), str(tmp_path / "d3"),
                       env=server.env(NEO_PASSPHRASE_COMMAND=f"cat {phrase}"))  # fmt: skip
    assert wrong.returncode == 3, wrong.stderr

