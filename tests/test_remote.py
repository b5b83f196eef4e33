"""parse_remote: every accepted form, and refusals whose messages show the expected form."""

from __future__ import annotations

import getpass

import pytest

from neotwist.client.remote import EXPECTED, Remote, UsageError, parse_remote


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alice@host/t", Remote("ssh", "alice", "host", 4322, "t", "")),
        ("ssh://alice@host/t", Remote("ssh", "alice", "host", 4322, "t", "")),
        ("tls://alice@host/t", Remote("tls", "alice", "host", 4323, "t", "")),
        ("alice@host:2200/t/a/b", Remote("ssh", "alice", "host", 2200, "t", "a/b")),
        ("tls://bob@10.0.0.1:9/photos/2024", Remote("tls", "bob", "10.0.0.1", 9, "photos", "2024")),
        ("alice@[::1]:4400/t", Remote("ssh", "alice", "::1", 4400, "t", "")),
        ("alice@[::1]/t/x", Remote("ssh", "alice", "::1", 4322, "t", "x")),
        ("alice@[fe80::1%eth0]:5/t", Remote("ssh", "alice", "fe80::1%eth0", 5, "t", "")),
        ("alice@host/t/", Remote("ssh", "alice", "host", 4322, "t", "")),
        ("alice@host/t/sub/", Remote("ssh", "alice", "host", 4322, "t", "sub")),
        ("a.b-c_d@my-host.example.org/t.1", Remote("ssh", "a.b-c_d", "my-host.example.org", 4322, "t.1", "")),
    ],
)
def test_good_forms(text: str, expected: Remote) -> None:
    assert parse_remote(text) == expected


def test_default_user() -> None:
    assert parse_remote("host/t", default_user="carol").user == "carol"
    assert parse_remote("tls://host:7/t", default_user="carol") == Remote("tls", "carol", "host", 7, "t", "")


def test_default_user_is_login_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(getpass, "getuser", lambda: "dave")
    assert parse_remote("host/t").user == "dave"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("alice@host", "missing /TARGET"),
        ("alice@host/", "missing TARGET"),
        ("ftp://alice@host/t", "unknown scheme"),
        ("@host/t", "empty USER"),
        ("alice@/t", "missing HOST"),
        ("alice@host:0/t", "port must be a number"),
        ("alice@host:65536/t", "port must be a number"),
        ("alice@host:ab/t", "port must be a number"),
        ("alice@host:/t", "port must be a number"),
        ("alice@::1/t", "IPv6 addresses must be written in brackets"),
        ("alice@[::1/t", "unclosed '['"),
        ("alice@[nothex]/t", "not an IPv6 address"),
        ("alice@[::1]x/t", "unexpected"),
        ("alice@-oProxyCommand=x/t", "not a host name"),
        ("alice@ho st/t", "not a host name"),
        ("al ice@host/t", "user must be"),
        ("alice@host/../x", "target must be"),
        ("alice@host/.hidden", "target must be"),
        ("alice@host/t/a/../b", "relative"),
        ("alice@host/t/a//b", "relative"),
    ],
)
def test_bad_forms(text: str, reason: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_remote(text)
    message = str(info.value)
    assert reason in message
    assert EXPECTED in message
    assert "\n" not in message
    assert repr(text) in message


def test_display_and_address() -> None:
    r = parse_remote("alice@[::1]/t/a/b")
    assert r.address == "[::1]:4322"
    assert r.display() == "ssh://alice@[::1]:4322/t/a/b"
    assert parse_remote(r.display()) == r
    r2 = parse_remote("tls://bob@host/t")
    assert r2.display() == "tls://bob@host:4323/t"
