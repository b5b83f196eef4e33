"""The pull's byte budget: fetched bytes held at once are bounded, and waiters are served in order."""

from __future__ import annotations

from typing import Any

from neotwist.client.pull import _ByteBudget


def test_budget_bounds_and_orders_waiters() -> None:
    budget = _ByteBudget(100)
    assert budget.cap(500) == 100
    first = budget.acquire(60)
    assert first.called and budget.free == 40
    order: list[str] = []
    big = budget.acquire(80)
    small = budget.acquire(10)  # fits now, but waits behind the earlier request
    big.addCallback(lambda _: order.append("big"))
    small.addCallback(lambda _: order.append("small"))
    assert order == []
    budget.release(60)
    assert order == ["big", "small"] and budget.free == 10
    budget.release(80)
    budget.release(10)
    assert budget.free == 100


def test_reused_local_version_changing_mid_pull_is_refused(tmp_path: Any) -> None:
    """Chunks of the old local version are copied in the kernel without re-hashing: if that file changes
    between being cut and the rename, the new file is refused rather than built from changed bytes."""
    import os
    import random

    import pytest

    from neotwist.chunking import DEFAULT_PARAMS, Chunker
    from neotwist.client.localfs import SafeDest
    from neotwist.client.pull import PullError, _examine, _File, _finish, _write_segment

    data = random.Random(1).randbytes(2 * 1024 * 1024)
    (tmp_path / "f").write_bytes(data)
    ids = b"".join(p.id for p, _ in Chunker(DEFAULT_PARAMS).cut_bytes(data))
    dest = SafeDest(str(tmp_path))
    f = _File("f", 0o644, 1, len(data), ids)
    assert _examine(dest, f, DEFAULT_PARAMS, checksum=True) is True  # identical: nothing to do
    os.close(f.old_fd)

    g = _File("f", 0o644, 2, len(data), ids)
    assert _examine(dest, g, DEFAULT_PARAMS, checksum=False) is False  # mtime differs: rebuild from local
    steps = [(ids[i : i + 32], "old", g.local[ids[i : i + 32]]) for i in range(0, len(ids), 32)]
    _write_segment(dest, g, steps)
    with open(tmp_path / "f", "r+b") as fh:  # the old version changes before the rename
        fh.write(b"changed")
    with pytest.raises(PullError, match="changed locally"):
        _finish(dest, g, fsync=False)
    assert (tmp_path / "f").read_bytes()[:7] == b"changed"  # nothing was renamed over it
    assert [n for n in os.listdir(tmp_path) if ".neotmp." in n] == []
    dest.close()
