"""The benchmark's self-check verdict: real wall times in, a verdict out.

The figures are ones this machine produced: the old harness timed rsync's first push of the stdlib tree at
22.4 s and 67.6 s while plain ``rsync -a -e ssh`` to the same kind of sshd took 14.3-36.1 s; paired runs of the
fixed harness and the plain command come out within a few per cent of each other.
"""

from __future__ import annotations

import pytest

from bench.selfcheck import TOLERANCE, judge


def test_a_harness_that_slows_rsync_is_invalid() -> None:
    v = judge([22.37, 67.56, 44.96], [14.26, 26.01, 14.90])
    assert v.valid is False
    assert v.ratio is not None and v.ratio > 1.5
    assert "INVALID" in v.line() and "slows rsync down" in v.line()
    assert v.as_json()["verdict"] == "INVALID"


def test_pairs_within_the_tolerance_are_valid() -> None:
    v = judge([6.84, 7.06, 9.52], [7.41, 7.63, 8.90])
    assert v.valid is True
    assert v.ratio is not None and abs(v.ratio - 1) <= TOLERANCE
    assert v.line().startswith("self-check: valid:")
    assert v.as_json()["harness_s"] == [6.84, 7.06, 9.52]


def test_the_ratio_is_the_median_of_the_pairs_not_of_the_totals() -> None:
    # one pair disturbed by a neighbour's burst (plain run 3x slower) does not decide the verdict
    v = judge([10.0, 10.2, 9.9], [9.8, 30.0, 10.1])
    assert v.ratio == pytest.approx(9.9 / 10.1)  # the middle of 1.020, 0.340 and 0.980
    assert v.valid is True


def test_a_harness_faster_than_plain_beyond_the_tolerance_is_invalid_too() -> None:
    v = judge([5.0, 5.1, 4.9], [7.0, 7.2, 6.9])
    assert v.valid is False
    assert "beat the plain one" in v.reason


def test_the_tolerance_bound_is_inclusive_and_configurable() -> None:
    assert judge([11.5], [10.0]).valid is True
    assert judge([11.6], [10.0]).valid is False
    assert judge([11.6], [10.0], tolerance=0.2).valid is True


def test_no_pairs_is_no_verdict_and_mismatched_pairs_are_refused() -> None:
    v = judge([], [])
    assert v.valid is None and v.word == "not checked"
    with pytest.raises(ValueError, match="pairs"):
        judge([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        judge([0.0], [1.0])
