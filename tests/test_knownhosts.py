"""Known-hosts pinning: pin, match, mismatch refused, [host]:port and IPv6 lines, prompts, file modes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from neotwist.client.knownhosts import (
    TLS_KEY_TYPE,
    TLS_PUBLIC_KEY,
    HostKeyError,
    KnownHostsFile,
    check_identity,
    fingerprint,
    host_pattern,
)

BLOB_A = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + b"A" * 32
BLOB_B = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + b"B" * 32


def _check(known: KnownHostsFile, host: str, port: int, blob: bytes, **kw: Any) -> bool:
    kw.setdefault("accept_new", False)
    kw.setdefault("confirm", None)
    return check_identity(known, host, port, "ssh-ed25519", blob, display_fingerprint=fingerprint(blob), **kw)


def test_host_pattern() -> None:
    assert host_pattern("Example.ORG", 22) == "example.org"
    assert host_pattern("example.org", 4322) == "[example.org]:4322"
    assert host_pattern("::1", 4322) == "[::1]:4322"
    assert host_pattern("::1", 22) == "::1"


def test_fingerprint_matches_openssh_form() -> None:
    expected = base64.b64encode(hashlib.sha256(BLOB_A).digest()).decode().rstrip("=")
    assert fingerprint(BLOB_A) == "SHA256:" + expected


def test_accept_new_pins_then_matches(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "neophytos" / "known_hosts"
    known = KnownHostsFile(path)
    assert _check(known, "host", 4322, BLOB_A, accept_new=True) is False  # newly pinned
    line = path.read_text()
    assert line == f"[host]:4322 ssh-ed25519 {base64.b64encode(BLOB_A).decode()}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # Known and equal: ok, nothing appended, even without accept_new.
    assert _check(known, "host", 4322, BLOB_A) is True
    assert path.read_text() == line


def test_changed_key_refused_naming_line_and_file(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(
        "# comment\n\n"
        f"other ssh-ed25519 {base64.b64encode(BLOB_B).decode()}\n"
        f"[host]:4322 ssh-ed25519 {base64.b64encode(BLOB_A).decode()}\n"
    )
    known = KnownHostsFile(path)
    for accept_new in (False, True):
        with pytest.raises(HostKeyError) as info:
            _check(known, "host", 4322, BLOB_B, accept_new=accept_new, confirm=lambda _: True)
        message = str(info.value)
        assert "HAS CHANGED" in message
        assert "remove line 4 of " + str(path) in message
        assert fingerprint(BLOB_B) in message
        assert "\n" not in message
    assert path.read_text().count("\n") == 4  # nothing was pinned


def test_port_matters_and_port_22_uses_bare_host(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"host ssh-ed25519 {base64.b64encode(BLOB_A).decode()}\n")
    known = KnownHostsFile(path)
    assert _check(known, "host", 22, BLOB_A) is True
    with pytest.raises(HostKeyError, match="not known"):
        _check(known, "host", 4322, BLOB_A)


def test_ipv6_and_multiple_names_and_hashed(tmp_path: Path) -> None:
    salt = os.urandom(20)
    mac = hmac.new(salt, b"[hashed.example]:4322", hashlib.sha1).digest()
    hashed = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(mac).decode()}"
    path = tmp_path / "known_hosts"
    path.write_text(
        f"[::1]:4322 ssh-ed25519 {base64.b64encode(BLOB_A).decode()}\n"
        f"alias,[Multi.Example]:4000 ssh-ed25519 {base64.b64encode(BLOB_A).decode()} a comment\n"
        f"{hashed} ssh-ed25519 {base64.b64encode(BLOB_A).decode()}\n"
        "garbage line\n"
        "[bad]:1 ssh-ed25519 !!!notbase64!!!\n"
    )
    known = KnownHostsFile(path)
    assert _check(known, "::1", 4322, BLOB_A) is True
    assert _check(known, "multi.example", 4000, BLOB_A) is True
    assert _check(known, "hashed.example", 4322, BLOB_A) is True
    with pytest.raises(HostKeyError, match="HAS CHANGED"):
        _check(known, "::1", 4322, BLOB_B)
    assert known.lookup("bad", 1) == []


def test_ipv6_pin_written_in_brackets(tmp_path: Path) -> None:
    known = KnownHostsFile(tmp_path / "kh")
    _check(known, "::1", 4322, BLOB_A, accept_new=True)
    assert (tmp_path / "kh").read_text().startswith("[::1]:4322 ssh-ed25519 ")
    assert _check(known, "::1", 4322, BLOB_A) is True


def test_unknown_non_interactive_refused(tmp_path: Path) -> None:
    known = KnownHostsFile(tmp_path / "kh")
    with pytest.raises(HostKeyError) as info:
        _check(known, "host", 4322, BLOB_A)
    message = str(info.value)
    assert "--accept-new-host-key" in message and "--known-hosts" in message
    assert "\n" not in message
    assert not (tmp_path / "kh").exists()


def test_prompt_yes_pins_and_no_refuses(tmp_path: Path) -> None:
    known = KnownHostsFile(tmp_path / "kh")
    prompts: list[str] = []

    def no(prompt: str) -> bool:
        prompts.append(prompt)
        return False

    with pytest.raises(HostKeyError, match="not accepted"):
        _check(known, "host", 4322, BLOB_A, confirm=no)
    assert not (tmp_path / "kh").exists()
    assert "The authenticity of host '[host]:4322'" in prompts[0]
    assert fingerprint(BLOB_A) in prompts[0]
    assert prompts[0].rstrip().endswith("Continue connecting and pin this key (yes/no)?")

    answers = iter([True])
    assert _check(known, "host", 4322, BLOB_A, confirm=lambda _p: next(answers)) is False
    assert _check(known, "host", 4322, BLOB_A) is True


def test_append_adds_missing_newline_and_keeps_existing_mode(tmp_path: Path) -> None:
    path = tmp_path / "kh"
    path.write_text(f"other ssh-ed25519 {base64.b64encode(BLOB_B).decode()}")  # no trailing newline
    path.chmod(0o600)
    known = KnownHostsFile(path)
    _check(known, "host", 4322, BLOB_A, accept_new=True)
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith("[host]:4322 ")
    assert _check(known, "other", 22, BLOB_B) is True


def test_revoked_key_refused(tmp_path: Path) -> None:
    path = tmp_path / "kh"
    path.write_text(f"@revoked [host]:4322 ssh-ed25519 {base64.b64encode(BLOB_A).decode()}\n")
    with pytest.raises(HostKeyError, match="@revoked"):
        _check(KnownHostsFile(path), "host", 4322, BLOB_A, accept_new=True)


def test_tls_pins_use_sha256_spki_lines(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"spki").digest()
    other = hashlib.sha256(b"other").digest()
    known = KnownHostsFile(tmp_path / "tls_known_hosts")
    kw: dict[str, Any] = {"display_fingerprint": "fp", "confirm": None, "kind": TLS_PUBLIC_KEY}
    assert check_identity(known, "h", 4323, TLS_KEY_TYPE, digest, accept_new=True, **kw) is False
    assert (tmp_path / "tls_known_hosts").read_text() == (
        f"[h]:4323 sha256-spki {base64.b64encode(digest).decode()}\n"
    )
    assert check_identity(known, "h", 4323, TLS_KEY_TYPE, digest, accept_new=False, **kw) is True
    with pytest.raises(HostKeyError, match="TLS PUBLIC KEY OF \\[h\\]:4323 HAS CHANGED"):
        check_identity(known, "h", 4323, TLS_KEY_TYPE, other, accept_new=True, **kw)
    with pytest.raises(HostKeyError, match="--tls-ca"):
        check_identity(known, "h2", 4323, TLS_KEY_TYPE, other, accept_new=False, **kw)
