"""Retention policy arithmetic with fixed timestamps: ``now`` is passed in (a fake clock), buckets are UTC."""

from __future__ import annotations

import datetime
import random

import pytest

from neotwist.server.repository.retention import REASONS, RetentionPolicy, decide

UTC = datetime.UTC


def ts(*args: int) -> float:
    """POSIX time of a UTC wall-clock time: ts(2024, 1, 31, 23, 59, 59)."""
    return datetime.datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


def numbered(*times: float) -> list[tuple[int, float]]:
    """Snapshots 1..n at the given times (ids follow time, as on the server)."""
    return [(n, t) for n, t in enumerate(times, start=1)]


NOW = ts(2024, 6, 1, 12, 0, 0)


def test_empty_and_invalid_policies_are_refused() -> None:
    assert RetentionPolicy().is_empty()
    assert not RetentionPolicy(keep_within=1.0).is_empty()
    assert not RetentionPolicy(keep_monthly=1).is_empty()
    with pytest.raises(ValueError, match="keeps nothing"):
        decide(numbered(1.0, 2.0), RetentionPolicy(), NOW)
    with pytest.raises(ValueError, match="keep_daily"):
        RetentionPolicy(keep_daily=-1)
    with pytest.raises(ValueError, match="keep_within"):
        RetentionPolicy(keep_within=float("nan"))
    with pytest.raises(ValueError, match="unique"):
        decide([(1, 1.0), (1, 2.0)], RetentionPolicy(keep_last=1), NOW)


def test_no_snapshots() -> None:
    d = decide([], RetentionPolicy(keep_last=3), NOW)
    assert (d.keep, d.remove, d.reasons) == ([], [], {})


def test_latest_is_always_kept() -> None:
    snaps = numbered(ts(2020, 1, 1), ts(2020, 1, 2), ts(2020, 1, 3))
    # keep-within one hour of now: none of them qualifies, yet the newest stays.
    d = decide(snaps, RetentionPolicy(keep_within=3600), NOW)
    assert d.keep == [3] and d.remove == [1, 2] and d.reasons == {3: ["latest"]}


def test_keep_last() -> None:
    snaps = numbered(*(ts(2024, 5, 1, h) for h in range(5)))
    d = decide(snaps, RetentionPolicy(keep_last=3), NOW)
    assert d.keep == [3, 4, 5] and d.remove == [1, 2]
    assert d.reasons == {5: ["latest", "last"], 4: ["last"], 3: ["last"]}
    everything = decide(snaps, RetentionPolicy(keep_last=50), NOW)  # N larger than available
    assert everything.keep == [1, 2, 3, 4, 5] and everything.remove == []


def test_input_order_does_not_matter() -> None:
    snaps = numbered(*(ts(2024, 5, d) for d in range(1, 11)))
    shuffled = snaps[:]
    random.Random(4).shuffle(shuffled)
    policy = RetentionPolicy(keep_last=2, keep_daily=4)
    assert decide(shuffled, policy, NOW) == decide(snaps, policy, NOW)


def test_hourly_bucket_edges() -> None:
    snaps = numbered(
        ts(2024, 5, 1, 10, 0, 0),  # 1
        ts(2024, 5, 1, 10, 30, 0),  # 2
        ts(2024, 5, 1, 10, 59, 59),  # 3: newest of hour 10
        ts(2024, 5, 1, 11, 0, 0),  # 4: first second of hour 11, its only snapshot
        ts(2024, 5, 1, 13, 15, 0),  # 5: hour 12 has none
        ts(2024, 5, 1, 14, 0, 0),  # 6
    )
    d = decide(snaps, RetentionPolicy(keep_hourly=3), NOW)
    assert d.keep == [4, 5, 6] and d.remove == [1, 2, 3]
    d = decide(snaps, RetentionPolicy(keep_hourly=4), NOW)
    assert d.keep == [3, 4, 5, 6]  # the empty hour 12 did not use up the count
    assert d.reasons[3] == ["hourly"] and d.reasons[6] == ["latest", "hourly"]
    d = decide(snaps, RetentionPolicy(keep_hourly=100), NOW)
    assert d.keep == [3, 4, 5, 6] and d.remove == [1, 2]  # N larger than the hours there are


def test_daily_edge_at_utc_midnight_and_gaps() -> None:
    snaps = numbered(
        ts(2024, 5, 1, 8),  # 1
        ts(2024, 5, 2, 23, 59, 59),  # 2: newest of May 2
        ts(2024, 5, 3, 0, 0, 0),  # 3
        ts(2024, 5, 3, 18),  # 4: newest of May 3
        ts(2024, 5, 20, 9),  # 5: weeks later
    )
    d = decide(snaps, RetentionPolicy(keep_daily=3), NOW)
    assert d.keep == [2, 4, 5] and d.remove == [1, 3]
    assert all(d.reasons[s] in (["daily"], ["latest", "daily"]) for s in d.keep)


def test_weekly_uses_iso_weeks_across_a_year_boundary() -> None:
    snaps = numbered(
        ts(2024, 12, 22, 12),  # 1: Sunday, ISO 2024-W51
        ts(2024, 12, 29, 23, 59, 59),  # 2: Sunday, ISO 2024-W52, its last second
        ts(2024, 12, 30, 0, 0, 0),  # 3: Monday, ISO 2025-W01
        ts(2025, 1, 1, 10),  # 4: Wednesday, still ISO 2025-W01
        ts(2025, 1, 5, 23),  # 5: Sunday, ISO 2025-W01: the newest of that week
        ts(2025, 1, 6, 1),  # 6: Monday, ISO 2025-W02
    )
    d = decide(snaps, RetentionPolicy(keep_weekly=3), NOW)
    assert d.keep == [2, 5, 6] and d.remove == [1, 3, 4]
    d = decide(snaps, RetentionPolicy(keep_weekly=4), NOW)
    assert d.keep == [1, 2, 5, 6]


def test_monthly_edges() -> None:
    snaps = numbered(
        ts(2023, 12, 31, 23, 59, 59),  # 1
        ts(2024, 1, 1, 0, 0, 0),  # 2
        ts(2024, 1, 31, 23, 59, 59),  # 3: newest of January
        ts(2024, 2, 1, 0, 0, 0),  # 4
        ts(2024, 2, 29, 12),  # 5: newest of February (leap day)
        ts(2024, 4, 2),  # 6: March has none
    )
    d = decide(snaps, RetentionPolicy(keep_monthly=3), NOW)
    assert d.keep == [3, 5, 6] and d.remove == [1, 2, 4]
    d = decide(snaps, RetentionPolicy(keep_monthly=12), NOW)
    assert d.keep == [1, 3, 5, 6]


def test_yearly_buckets_are_utc_calendar_years() -> None:
    snaps = numbered(
        ts(2021, 6, 1),  # 1: the only one of 2021
        ts(2022, 1, 1, 0, 0, 0),  # 2
        ts(2022, 12, 31, 23, 59, 59),  # 3: newest of 2022 in UTC (already 2023 east of Greenwich)
        ts(2023, 1, 1, 0, 0, 0),  # 4: first second of 2023
        ts(2023, 7, 1),  # 5
        ts(2024, 3, 1),  # 6: newest of 2024
    )
    d = decide(snaps, RetentionPolicy(keep_yearly=3), NOW)
    assert d.keep == [3, 5, 6] and d.remove == [1, 2, 4]
    assert d.reasons == {3: ["yearly"], 5: ["yearly"], 6: ["latest", "yearly"]}
    d = decide(snaps, RetentionPolicy(keep_yearly=10), NOW)  # years without snapshots use up nothing
    assert d.keep == [1, 3, 5, 6]
    d = decide(snaps, RetentionPolicy(keep_monthly=1, keep_yearly=2), NOW)  # rules count on their own
    assert d.reasons[6] == ["latest", "monthly", "yearly"] and d.keep == [5, 6]
    assert not RetentionPolicy(keep_yearly=1).is_empty()


def test_keep_tagged_keeps_named_ids_and_everything_listed_after() -> None:
    snaps = numbered(*(ts(2024, 5, 1, h) for h in range(6)))
    # the client read the tags of snapshots 1..4 and found 2 tagged; 5 and 6 were committed after its listing
    policy = RetentionPolicy(keep_tagged=frozenset({2}), tagged_through=4)
    assert not policy.is_empty()  # --keep-tag alone is a policy (restic's forget --keep-tag x)
    d = decide(snaps, policy, NOW)
    assert d.keep == [2, 5, 6] and d.remove == [1, 3, 4]
    assert d.reasons == {2: ["tag"], 5: ["tag"], 6: ["latest", "tag"]}
    d = decide(snaps, RetentionPolicy(keep_last=1, keep_tagged=frozenset({1, 3}), tagged_through=6), NOW)
    assert d.keep == [1, 3, 6] and d.reasons[6] == ["latest", "last"]
    # nothing tagged: only the newest stays
    d = decide(snaps, RetentionPolicy(tagged_through=6), NOW)
    assert d.keep == [6] and d.reasons == {6: ["latest"]}
    with pytest.raises(ValueError, match="tagged_through"):
        RetentionPolicy(keep_tagged=frozenset({1}))


def test_keep_within_is_measured_from_now_inclusive() -> None:
    day = 86400.0
    snaps = numbered(NOW - 3 * day - 1, NOW - 3 * day, NOW - 2 * day, NOW - 10)
    d = decide(snaps, RetentionPolicy(keep_within=3 * day), NOW)
    assert d.keep == [2, 3, 4] and d.remove == [1]  # exactly now - D is inside
    assert d.reasons == {2: ["within"], 3: ["within"], 4: ["latest", "within"]}
    # Same snapshots, a later "now": fewer qualify; the newest is kept anyway.
    d = decide(snaps, RetentionPolicy(keep_within=3 * day), NOW + 30 * day)
    assert d.keep == [4] and d.reasons == {4: ["latest"]}


def test_overlapping_rules_each_count_on_their_own() -> None:
    # Two snapshots a day for 40 days, at 06:00 and 18:00 UTC.
    times = [ts(2024, 4, 1) + day * 86400 + h * 3600 for day in range(40) for h in (6, 18)]
    snaps = numbered(*times)
    n = len(snaps)
    policy = RetentionPolicy(keep_last=3, keep_daily=5, keep_weekly=2, keep_monthly=2)
    d = decide(snaps, policy, now=times[-1] + 60)
    assert d.reasons[n] == ["latest", "last", "daily", "weekly", "monthly"]
    assert d.reasons[n - 1] == ["last"]  # 06:00 of the last day: not the newest of its day
    assert d.reasons[n - 2] == ["last", "daily"]
    daily = [s for s in d.keep if "daily" in d.reasons[s]]
    assert daily == [n - 8, n - 6, n - 4, n - 2, n]  # the 18:00 snapshot of each of the last five days
    # The newest of April (30 Apr 18:00) is a monthly keep; its ISO week (29 Apr..5 May) continues into May,
    # so the weekly rule picks May 5th's newest instead, and the previous week's Sunday.
    april_last = times.index(ts(2024, 4, 30, 18)) + 1
    assert d.reasons[april_last] == ["monthly"]
    weekly = [s for s in d.keep if "weekly" in d.reasons[s]]
    assert weekly == [times.index(ts(2024, 5, 5, 18)) + 1, n]  # 10 May (last day) is in the week of 6..12 May
    assert len(d.keep) == len(set(d.keep)) and sorted(d.keep + d.remove) == list(range(1, n + 1))


def _reference(snaps: list[tuple[int, float]], policy: RetentionPolicy, now: float) -> set[int]:
    """The same rules, written the other way round: group every snapshot into its bucket, take the newest of
    each bucket, then the N most recent buckets."""
    keep = {max(snaps, key=lambda s: (s[1], s[0]))[0]} if snaps else set()
    by_time = sorted(snaps, key=lambda s: (s[1], s[0]))
    keep.update(sid for sid, _ in by_time[len(by_time) - policy.keep_last :] if policy.keep_last)
    formats = {"keep_hourly": "%Y%m%d%H", "keep_daily": "%Y%m%d", "keep_monthly": "%Y%m", "keep_yearly": "%Y"}
    for name in ("keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly"):
        count = getattr(policy, name)
        if not count:
            continue
        groups: dict[object, tuple[int, float]] = {}
        for sid, t in by_time:
            when = datetime.datetime.fromtimestamp(t, tz=UTC)
            key = when.strftime("%G%V") if name == "keep_weekly" else when.strftime(formats[name])
            groups[key] = (sid, t)  # ascending: the last one seen is the newest
        for key in sorted(groups)[-count:]:
            keep.add(groups[key][0])
    if policy.keep_within:
        keep.update(sid for sid, t in snaps if t >= now - policy.keep_within)
    if policy.tagged_through:
        keep.update(sid for sid, _ in snaps if sid in policy.keep_tagged or sid > policy.tagged_through)
    return keep


def test_random_histories_match_a_reference_computation() -> None:
    rng = random.Random(20240601)
    for _ in range(300):
        t = ts(2023, 1, 1) + rng.uniform(0, 86400 * 30)
        snaps = []
        for sid in range(1, rng.randint(0, 60) + 1):
            t += rng.choice([1, 60, 1800, 3600, 3599, 86400, 86400 * 6, 86400 * 31]) * rng.random() * 2
            snaps.append((sid, t))
        policy = RetentionPolicy(
            keep_last=rng.randint(0, 4),
            keep_hourly=rng.randint(0, 5),
            keep_daily=rng.randint(0, 5),
            keep_weekly=rng.randint(0, 3),
            keep_monthly=rng.randint(0, 3),
            keep_within=rng.choice([0.0, 3600.0, 86400.0 * 3]),
            keep_yearly=rng.randint(0, 2),
            tagged_through=(through := rng.choice([0, 0, 1, 30, 60])),
            keep_tagged=frozenset(rng.sample(range(1, 61), rng.randint(0, 5)) if through else ()),
        )
        if policy.is_empty():
            continue
        now = t + rng.uniform(0, 86400 * 2)
        d = decide(snaps, policy, now)
        assert set(d.keep) == _reference(snaps, policy, now)
        assert sorted(d.keep + d.remove) == [s for s, _ in snaps]
        assert all(set(why) <= set(REASONS) and why for why in d.reasons.values())
