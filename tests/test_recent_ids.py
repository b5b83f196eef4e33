"""The push's memory of chunk ids it already dealt with: bounded, whatever the number of chunks."""

from __future__ import annotations

import os

from neotwist.client.push import RecentIds


def test_recent_ids_are_kept_and_old_ones_dropped_within_the_bound() -> None:
    seen = RecentIds(most=100)
    ids = [os.urandom(32) for _ in range(1000)]
    for cid in ids:
        seen.add(cid)
        assert len(seen) < 200
    assert all(cid in seen for cid in ids[-100:])  # the latest generation is always there
    assert ids[0] not in seen  # long gone: asked about again, which is safe
    seen.discard(ids[-1])
    assert ids[-1] not in seen
