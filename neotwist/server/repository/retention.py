"""Which snapshots a retention policy keeps: pure arithmetic on (id, server time) pairs, no I/O.

The rules follow restic's ``forget`` so that people who know it are not surprised:

- ``keep_last N``: the N newest snapshots;
- ``keep_hourly N``: the newest snapshot of each of the N most recent hours *that have a snapshot*; likewise
  ``keep_daily`` (calendar day), ``keep_weekly`` (ISO 8601 week: Monday to Sunday, the ISO week-numbering
  year), ``keep_monthly`` (calendar month) and ``keep_yearly`` (calendar year). Hours without snapshots do not
  use up the count, so "keep 7 daily" keeps a week of dailies even if the machine was off for a month;
- ``keep_tagged`` (``--keep-tag``): every snapshot whose id is in the set, and every snapshot newer than
  ``tagged_through`` (the rule is on when that is above 0). The client decides which snapshots carry the tags
  (it can read them; in an encrypted target the server cannot) and names the newest snapshot it listed: one
  committed after it was listed has tags nobody checked, so it is kept (reason ``tag``);
- ``keep_within D``: every snapshot whose time is at or after ``now - D`` (seconds). Unlike restic, which
  measures from the newest snapshot, this measures from the server's ``now``: "the last 30 days" means what
  it says even when backups stopped;
- a snapshot is kept if any rule keeps it; the rules do not consume each other's counts (a snapshot that is
  both the newest of its day and of its week counts for both);
- the newest snapshot is always kept (reason ``latest``) whatever the policy, so a retention run can never
  leave a target empty, and a push that committed while the decision was being made is never in danger (it is
  not in the list, so it is not removed).

Buckets are computed in UTC from the server's clock (snapshot times are server time), so the answer does not
depend on where the client is or on daylight-saving changes. Snapshots are ordered by (time, id), newest first;
times are monotonic per target, so this is also id order.

An empty policy (every rule 0) is refused with ValueError: "keep nothing" is never what a person meant, and the
caller reports it as a usage error rather than removing everything but the newest snapshot.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, fields

_Bucket = Callable[[datetime.datetime], Hashable]

_BUCKETS: tuple[tuple[str, str, _Bucket], ...] = (
    ("keep_hourly", "hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("keep_daily", "daily", lambda t: (t.year, t.month, t.day)),
    ("keep_weekly", "weekly", lambda t: t.isocalendar()[:2]),
    ("keep_monthly", "monthly", lambda t: (t.year, t.month)),
    ("keep_yearly", "yearly", lambda t: t.year),
)
"""(policy field, reason, the bucket a UTC time falls in)."""

REASONS = ("latest", "last", "hourly", "daily", "weekly", "monthly", "yearly", "within", "tag")
"""Every reason :func:`decide` may give, in the order it lists them."""


@dataclass(frozen=True)
class RetentionPolicy:
    """What to keep. Counts are snapshots (``keep_last``) or buckets; ``keep_within`` is seconds before ``now``.

    Negative values are refused (ValueError); 0 switches a rule off. ``keep_tagged``/``tagged_through``: see
    the module's docstring (``tagged_through`` 0: no tag rule).
    """

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_within: float = 0.0
    keep_yearly: int = 0
    keep_tagged: frozenset[int] = frozenset()
    tagged_through: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "keep_tagged":
                continue
            value = getattr(self, f.name)
            if value < 0 or value != value:  # value != value: NaN
                raise ValueError(f"{f.name} must be 0 or more, not {value}")
        if self.keep_tagged and not self.tagged_through:
            raise ValueError("keep_tagged needs tagged_through (the newest snapshot the tags were read from)")

    def is_empty(self) -> bool:
        """True when no rule is switched on: such a policy would keep nothing and is refused."""
        return not any(getattr(self, f.name) for f in fields(self) if f.name != "keep_tagged")


@dataclass(frozen=True)
class RetentionDecision:
    """``keep`` and ``remove`` are snapshot ids in ascending order and together are every id given;
    ``reasons[id]`` lists why each kept snapshot is kept (see :data:`REASONS`), in that order."""

    keep: list[int]
    remove: list[int]
    reasons: dict[int, list[str]]


def decide(snapshots: Sequence[tuple[int, float]], policy: RetentionPolicy, now: float) -> RetentionDecision:
    """Apply ``policy`` at server time ``now`` to ``snapshots`` ((id, time) pairs, any order).

    Raises ValueError for an empty policy or a repeated id.
    """
    if policy.is_empty():
        raise ValueError("the retention policy keeps nothing: give at least one --keep-* rule")
    ids = [sid for sid, _ in snapshots]
    if len(set(ids)) != len(ids):
        raise ValueError("snapshot ids must be unique")
    newest_first = sorted(snapshots, key=lambda s: (s[1], s[0]), reverse=True)
    reasons: dict[int, list[str]] = {}

    def keep(sid: int, why: str) -> None:
        reasons.setdefault(sid, []).append(why)

    if newest_first:
        keep(newest_first[0][0], "latest")
    for sid, _ in newest_first[: policy.keep_last]:
        keep(sid, "last")
    for name, why, bucket_of in _BUCKETS:
        left = getattr(policy, name)
        last_bucket: Hashable = None
        for sid, t in newest_first:
            if left <= 0:
                break
            bucket = bucket_of(datetime.datetime.fromtimestamp(t, tz=datetime.UTC))
            if bucket != last_bucket:  # the newest snapshot of a bucket not seen yet
                keep(sid, why)
                last_bucket = bucket
                left -= 1
    if policy.tagged_through:
        for sid, _ in newest_first:
            if sid in policy.keep_tagged or sid > policy.tagged_through:
                keep(sid, "tag")
    if policy.keep_within > 0:
        oldest = now - policy.keep_within
        for sid, t in newest_first:
            if t >= oldest:
                keep(sid, "within")
    order = {why: n for n, why in enumerate(REASONS)}
    for why_list in reasons.values():
        why_list.sort(key=order.__getitem__)
    return RetentionDecision(
        keep=sorted(reasons), remove=sorted(sid for sid in ids if sid not in reasons), reasons=reasons
    )
