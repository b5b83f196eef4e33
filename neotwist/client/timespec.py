"""Times and durations typed on the command line: ``--at TIME`` and ``--keep-within DURATION``.

A TIME is an ISO 8601 date or date-time (``2026-11-23``, ``2026-11-23T14:30``, ``2026-11-23 14:30:05+01:00``;
without an offset it is local time), ``@EPOCH`` (seconds since 1970, UTC), or ``DURATION ago`` (``3d ago``).
A DURATION is one or more number-unit pairs, as restic spells them: ``y`` years (365 days), ``m`` months
(30 days), ``w`` weeks, ``d`` days, ``h`` hours, ``min`` minutes, ``s`` seconds: ``1y6m``, ``36h``, ``2w3d``.
The standard library parses the dates; only the unit suffixes are ours.
"""

from __future__ import annotations

import datetime
import re

UNITS = {"y": 365 * 86400, "m": 30 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "min": 60, "s": 1}
"""Seconds per duration unit."""

_PART = re.compile(r"(\d+(?:\.\d+)?)(min|y|m|w|d|h|s)")


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


def parse_time(text: str, now: float) -> float:
    """Seconds since the epoch for a TIME (``now`` anchors ``DURATION ago``)."""
    spec = text.strip()
    if spec.startswith("@"):
        try:
            return float(spec[1:])
        except ValueError:
            raise TimeSpecError(f"bad time {text!r}: after '@' give seconds since 1970, e.g. @1700000000") from None
    if spec.lower().endswith(" ago"):
        return now - parse_duration(spec[:-4])
    try:
        moment = datetime.datetime.fromisoformat(spec)
    except ValueError:
        raise TimeSpecError(
            f"bad time {text!r}: use an ISO date or date-time (2026-11-23, 2026-11-23T14:30, with an optional "
            "+01:00 or Z), @EPOCH, or a duration followed by 'ago' (3d ago)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time, as the user reads their clock
    return moment.timestamp()


def format_time(seconds: float) -> str:
    """A server time as local ISO 8601 to the second, the form ``--at`` accepts back."""
    return datetime.datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")
