"""--at TIME and --keep-within DURATION parsing."""

from __future__ import annotations

import datetime
import math

import pytest

from neotwist.client.stash import StashError, resolve_snapshot
from neotwist.client.timespec import TimeSpecError, format_time, parse_at, parse_duration, parse_time
from neotwist.wire.messages import SnapshotRecord

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


def test_a_time_names_the_whole_span_its_precision_gives() -> None:
    """--at counts a snapshot up to the end of the span TIME names: to the second, minute, hour or day written."""
    second = parse_at("2026-11-23T10:00:05Z", NOW)
    five = datetime.datetime(2026, 11, 23, 10, 0, 5, tzinfo=datetime.UTC).timestamp()
    assert (second.start, second.end) == (five, five + 1)
    assert second.covers(five + 0.999) and not second.covers(five + 1)
    minute = parse_at("2026-11-23 11:00+01:00", NOW)
    ten = datetime.datetime(2026, 11, 23, 10, tzinfo=datetime.UTC).timestamp()
    assert (minute.start, minute.end) == (ten, ten + 60)
    assert parse_at("2026-11-23T10Z", NOW).end == ten + 3600
    assert parse_at("20261123T100005Z", NOW).end == five + 1  # the basic format too
    day = parse_at("2026-11-23", NOW)
    midnight = datetime.datetime(2026, 11, 23).astimezone().timestamp()
    assert (day.start, day.end) == (midnight, datetime.datetime(2026, 11, 24).astimezone().timestamp())
    assert parse_at("@1700000000", NOW).end == 1_700_000_001  # whole seconds since 1970: that second


@pytest.mark.parametrize("text", ["@1700000000.25", "2026-11-23T10:00:05.25Z", "2026-11-23T10:00:05,25Z", "3d ago"])
def test_a_time_with_a_fraction_or_ago_is_one_instant(text: str) -> None:
    at = parse_at(text, NOW)
    assert at.covers(at.start) and not at.covers(math.nextafter(at.start, math.inf))
    assert at.start == parse_time(text, NOW)


def test_a_displayed_time_picks_the_snapshot_shown_with_it() -> None:
    """Snapshots are stamped with fractions and shown to the second: the shown time must pick that snapshot, not
    the one before it (the bug: '--at' with the first snapshot's time said none was taken before it)."""
    records = [SnapshotRecord(n, 1_700_000_000 + n + 0.75, 1, 0, 1, 0, 0, 0, "", False) for n in (1, 2, 3)]
    for r in records:
        shown = parse_at(format_time(r.time), NOW)
        assert resolve_snapshot(records, shown, None) == r.id
    before = parse_at(format_time(records[0].time - 1), NOW)
    with pytest.raises(StashError, match=r"no snapshot was taken at or before .*; the oldest is 1 at "):
        resolve_snapshot(records, before, None)
