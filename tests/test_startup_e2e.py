"""What neo-push and neo-pull load to start: each transport's modules only when that transport is used.

Importing is most of a small command's CPU time. The TLS client (neotwist.client.tlsclient, which builds on
twisted.internet.endpoints) and the OpenSSH-subprocess link are imported by neotwist.client.connect only for the
remote that needs them, and the conch SSH client connects to an address with the reactor's connectTCP rather than
through twisted.internet.endpoints (whose imports, twisted.plugin, systemd, SNI and stdio, cost every command a few
milliseconds). What Twisted's reactor itself imports (pyOpenSSL, asyncio) is loaded whatever the transport, except
pyOpenSSL: a command over SSH loads the reactor without it (it uses no TLS). http.cookiejar, which Twisted imports
for an alias nothing uses, is left unloaded (neotwist.entry makes it lazy), and with it urllib.request.

Each command runs in a child interpreter that calls the CLI's main function as the console script does and then
reports which of the watched modules were loaded: a real push or pull against a real twistd.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from support import PASSWORD, RunningServer

WATCHED = (
    "OpenSSL",
    "twisted.internet.endpoints",
    "twisted.plugin",
    "neotwist.client.tlsclient",
    "neotwist.client.openssh",
    "urllib.request",
)

_CHILD = textwrap.dedent(
    """
    import json, sys
    from neotwist.entry import _load
    main, watched = sys.argv[1], json.loads(sys.argv[2])
    module, _, main = main.rpartition(":")
    names = {"push_main": "neo-push", "pull_main": "neo-pull", "ls": "neo-ls"}
    command = _load(names[main], module or "neotwist.client.cli", main)  # as the console script loads it
    sys.argv = [names[main], *sys.argv[3:]]
    try:
        command()
        code = 0
    except SystemExit as e:
        code = e.code
    print(json.dumps({"code": code, "loaded": [m for m in watched if m in sys.modules]}), file=sys.stderr)
    """
)


def _run(server: RunningServer, main: str, *args: str, password: bool = False) -> list[str]:
    """Run ``neotwist.client.cli.<main>`` (push_main or pull_main), or ``MODULE:FUNCTION`` (the ``ls`` entry
    point of neotwist.client.stashcli), with the server's key and known-hosts file;
    check that it succeeded and return which of WATCHED it loaded."""
    env = server.env(NEO_PASSWORD=PASSWORD) if password else server.env()
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, main, json.dumps(WATCHED),
         "-i", str(server.key), "--known-hosts", str(server.known_hosts), *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    report = json.loads(r.stderr.strip().splitlines()[-1])
    assert report["code"] == 0, r.stderr
    loaded: list[str] = report["loaded"]
    return loaded


def test_ssh_push_and_pull_load_no_tls_client_nor_endpoints(module_server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("over ssh")
    remote = module_server.remote("ssh-startup")
    assert "127.0.0.1" in remote  # an address: connected to as it is, no name to resolve

    loaded = _run(module_server, "push_main", "--accept-new-host-key", str(src), remote)
    assert loaded == []
    loaded = _run(module_server, "pull_main", remote, str(tmp_path / "dest"))
    assert loaded == []
    assert (tmp_path / "dest" / "f").read_text() == "over ssh"
    assert _run(module_server, "neotwist.client.stashcli:ls", remote) == []  # neo-ls (as neo-prune, neo-check)


def test_tls_push_loads_the_tls_client(module_server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("over tls")
    remote = module_server.remote("tls-startup", "tls")

    loaded = _run(module_server, "push_main", "--accept-new-host-key", str(src), remote, password=True)
    assert "neotwist.client.tlsclient" in loaded and "neotwist.client.openssh" not in loaded
    assert "OpenSSL" in loaded
    loaded = _run(module_server, "pull_main", remote, str(tmp_path / "dest"), password=True)
    assert (tmp_path / "dest" / "f").read_text() == "over tls"
