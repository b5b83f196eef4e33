"""--at TIME and --keep-within DURATION parsing."""

from __future__ import annotations

import datetime

import pytest

from neotwist.client.timespec import TimeSpecError, format_time, parse_duration, parse_time

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("36h", 36 * 3600),
        ("90min", 5400),
        ("1y6m", 365 * 86400 + 6 * 30 * 86400),
        ("2w3d", 17 * 86400),
        ("1.5h", 5400),
        ("10s", 10),
        ("1d 12h", 36 * 3600),
        ("7D", 7 * 86400),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "12", "3x", "1h-2m", "1h 2", "-3d", "1 hour"])
def test_bad_durations_say_what_is_accepted(text: str) -> None:
    with pytest.raises(TimeSpecError, match="units y, m"):
        parse_duration(text)


def test_times() -> None:
    assert parse_time("@1700000000", NOW) == 1_700_000_000
    assert parse_time("@1700000000.5", NOW) == 1_700_000_000.5
    assert parse_time("3d ago", NOW) == NOW - 3 * 86400
    ten_utc = datetime.datetime(2026, 11, 23, 10, tzinfo=datetime.UTC).timestamp()
    assert parse_time("2026-11-23T10:00:00Z", NOW) == ten_utc
    assert parse_time("2026-11-23 11:00+01:00", NOW) == ten_utc
    local = datetime.datetime(2026, 11, 23).astimezone().timestamp()
    assert parse_time("2026-11-23", NOW) == local  # a naive date is local midnight


@pytest.mark.parametrize("text", ["yesterday", "@soon", "2026-13-01", "3 days ago"])
def test_bad_times(text: str) -> None:
    with pytest.raises(TimeSpecError):
        parse_time(text, NOW)


def test_formatted_times_parse_back() -> None:
    assert parse_time(format_time(1_700_000_123), NOW) == 1_700_000_123
