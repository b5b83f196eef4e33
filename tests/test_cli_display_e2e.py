"""Names with terminal controls, pushed for real and listed with the real CLIs: human-readable output shows them
escaped (as ``ls -b`` does), ``--json`` keeps them exact."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from support import RunningServer

from neotwist.display import safe_text, shown

if shutil.which("ssh-keygen") is None:
    pytest.skip("OpenSSH client not installed", allow_module_level=True)

FAKE = "x\r\x1b[2KALL BACKUPS VERIFIED OK"
TITLE = "t\x1b]0;owned\x07"
BIDI = "cod\u202eexe.txt"


def test_shown_escapes_like_ls_b() -> None:
    assert shown("plain name.txt") == "plain name.txt"
    assert shown(FAKE) == "x\\r\\033[2KALL BACKUPS VERIFIED OK"
    assert shown(TITLE) == "t\\033]0;owned\\a"
    assert shown(BIDI) == "cod\\342\\200\\256exe.txt"
    assert shown("a\\b\tc\nd") == "a\\\\b\\tc\\nd"
    assert shown("bad\udcffbyte") == "bad\\377byte"  # a byte that was not UTF-8 (surrogateescape)
    assert shown("ünï 名前") == "ünï 名前"
    # streams keep their lines, tabs and backslashes (messages, JSON) and lose only the controls
    assert safe_text('{"a": "\\\\u001b"}\n\tnext') == '{"a": "\\\\u001b"}\n\tnext'
    assert safe_text("ok\x1b[2K\r") == "ok\\033[2K\\r"


def test_listings_escape_control_characters_and_json_keeps_them(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in (FAKE, TITLE, BIDI):
        (src / name).write_text("x")
    os.symlink(f"target{TITLE}", src / "link")
    r = server.cli("neo-push", "--accept-new-host-key", str(src), server.remote("t"))
    assert r.returncode == 0, r.stderr

    listed = server.cli("neo-ls", "-R", server.remote("t"))
    assert listed.returncode == 0, listed.stderr
    for raw in ("\x1b", "\r", "\x07", "\u202e"):
        assert raw not in listed.stdout, repr(listed.stdout)
    for escaped in (shown(FAKE), shown(TITLE), shown(BIDI), f"link -> target{shown(TITLE)}"):
        assert escaped in listed.stdout, (escaped, listed.stdout)
    assert not any(line.startswith("ALL BACKUPS") for line in listed.stdout.splitlines())

    exact = server.cli("neo-ls", "-R", "--json", server.remote("t"))
    names = {e["path"]: e for e in json.loads(exact.stdout)["entries"]}
    assert {FAKE, TITLE, BIDI, "link"} <= set(names), names
    assert names["link"]["link"] == f"target{TITLE}"

    # a name in a message from the server (here: a path that is not there) is escaped too
    missing = server.cli("neo-ls", server.remote(f"t/no{TITLE}"))
    assert missing.returncode == 1, missing.stderr
    assert "\x1b" not in missing.stderr and "\x07" not in missing.stderr and "owned" in missing.stderr, missing.stderr
