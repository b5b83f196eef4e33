"""Times and durations typed on the command line: ``--at TIME`` and ``--keep-within DURATION``.

A TIME is an ISO 8601 date or date-time (``2026-11-23``, ``2026-11-23T14:30``, ``2026-11-23 14:30:05+01:00``;
without an offset it is local time), ``@EPOCH`` (seconds since 1970, UTC), or ``DURATION ago`` (``3d ago``).
A DURATION is one or more number-unit pairs, as restic spells them: ``y`` years (365 days), ``m`` months
(30 days), ``w`` weeks, ``d`` days, ``h`` hours, ``min`` minutes, ``s`` seconds: ``1y6m``, ``36h``, ``2w3d``.
The standard library parses the dates; only the unit suffixes are ours.

``--at TIME`` picks the newest snapshot taken at or before TIME, and a TIME names the whole span its precision
gives (:func:`parse_at`): ``14:30:05`` is that whole second, ``14:30`` that minute, ``2026-11-23`` that day,
``@1700000000`` that second. This is what makes a time copied from ``neo-ls --snapshots`` (shown to the second,
while the server stamps snapshots with fractions) pick that snapshot and not the one before it. Forms with a
fraction (``14:30:05.25``, ``@1700000000.25``) and ``DURATION ago`` name one exact instant.
"""

from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass

UNITS = {"y": 365 * 86400, "m": 30 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "min": 60, "s": 1}
"""Seconds per duration unit."""

_PART = re.compile(r"(\d+(?:\.\d+)?)(min|y|m|w|d|h|s)")


_TIME_OF_DAY = re.compile(
    r"[^0-9wW-](?P<h>\d\d)(?::?(?P<m>\d\d)(?::?(?P<s>\d\d)(?P<f>[.,]\d+)?)?)?(?:[zZ]|[+-]\d.*)?$"
)
"""The time of day in an ISO date-time: after the separator (the first character no date form uses), hours,
then optional minutes, seconds and fraction, then an optional offset. No match: a date alone."""

_WHOLE_SECONDS = re.compile(r"-?\d+")


class TimeSpecError(ValueError):
    """The text is not a TIME or DURATION; the message says what is accepted."""


def parse_duration(text: str) -> float:
    """Seconds in a DURATION such as ``1y6m``, ``36h`` or ``90min``."""
    compact = text.replace(" ", "").lower()
    pos = 0
    total = 0.0
    for match in _PART.finditer(compact):
        if match.start() != pos:
            break
        total += float(match.group(1)) * UNITS[match.group(2)]
        pos = match.end()
    if not compact or pos != len(compact):
        raise TimeSpecError(
            f"bad duration {text!r}: use number-unit pairs with units y, m (30 days), w, d, h, min, s, e.g. 1y6m or 36h"
        )
    return total


@dataclass(frozen=True)
class AtTime:
    """A TIME as the span of time it names: from ``start`` up to, not including, ``end``."""

    text: str  # as typed, for messages
    start: float
    end: float

    def covers(self, moment: float) -> bool:
        """True when ``moment`` is at or before this TIME (before its span ends)."""
        return moment < self.end


def _exact(instant: float) -> float:
    """The end of a span that holds the one instant ``instant``."""
    return math.nextafter(instant, math.inf)


def parse_at(text: str, now: float) -> AtTime:
    """A TIME as the span it names (see the module docstring); ``now`` anchors ``DURATION ago``."""
    spec = text.strip()
    if spec.startswith("@"):
        start = parse_time(spec, now)
        whole = _WHOLE_SECONDS.fullmatch(spec[1:]) is not None
        return AtTime(text, start, start + 1 if whole else _exact(start))
    if spec.lower().endswith(" ago"):
        start = parse_time(spec, now)
        return AtTime(text, start, _exact(start))
    moment = _iso(spec, text)
    clock = _TIME_OF_DAY.search(spec)
    if clock is None:
        span = datetime.timedelta(days=1)  # a calendar day: 23 or 25 hours across a DST change
    elif clock.group("f"):
        start = _timestamp(moment)
        return AtTime(text, start, _exact(start))
    elif clock.group("s"):
        span = datetime.timedelta(seconds=1)
    elif clock.group("m"):
        span = datetime.timedelta(minutes=1)
    else:
        span = datetime.timedelta(hours=1)
    return AtTime(text, _timestamp(moment), _timestamp(moment + span))


def _timestamp(moment: datetime.datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time, as the user reads their clock
    return moment.timestamp()


def parse_time(text: str, now: float) -> float:
    """Seconds since the epoch where a TIME starts (``now`` anchors ``DURATION ago``)."""
    spec = text.strip()
    if spec.startswith("@"):
        try:
            return float(spec[1:])
        except ValueError:
            raise TimeSpecError(f"bad time {text!r}: after '@' give seconds since 1970, e.g. @1700000000") from None
    if spec.lower().endswith(" ago"):
        return now - parse_duration(spec[:-4])
    return _timestamp(_iso(spec, text))


def _iso(spec: str, text: str) -> datetime.datetime:
    try:
        moment = datetime.datetime.fromisoformat(spec)
    except ValueError:
        raise TimeSpecError(
            f"bad time {text!r}: use an ISO date or date-time (2026-11-23, 2026-11-23T14:30, with an optional "
            "+01:00 or Z), @EPOCH, or a duration followed by 'ago' (3d ago)"
        ) from None
    return moment


def format_time(seconds: float) -> str:
    """A server time as local ISO 8601 to the second, the form ``--at`` accepts back: as a TIME it names that
    whole second, so it picks the snapshot shown with it (:func:`parse_at`)."""
    return datetime.datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")
