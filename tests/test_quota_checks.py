"""The quota checks on their own (server/quota.py's Quota): the early check of each upload batch, a confined
push charged for every byte it uploads, and the exact check at commit, against a real repository and account
store, without a session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from neotwist.chunking import DEFAULT_PARAMS
from neotwist.server.accounts import AccountStore
from neotwist.server.quota import Chunk, Quota
from neotwist.server.repository import Repository, Target
from neotwist.server.repository.push import CommitCharge
from neotwist.server.rights import Access, Right
from neotwist.wire.errors import ErrorCode, NeoError


class World:
    def __init__(self, root: Path) -> None:
        self.accounts = AccountStore(root / "accounts.sqlite", bcrypt_rounds=4)
        self.repository = Repository(root / "repo")
        self.alice = self.accounts.add("alice", "pw")
        self.quota = Quota(self.repository, self.accounts)
        self.target: Target = self.repository.create_target(
            self.alice.id, "t", encrypted=False, chunker=DEFAULT_PARAMS
        )

    def own(self) -> Access:
        return Access(owner_id=self.alice.id, target="t", root="", right=Right.FULL, name="t")

    def confined(self) -> Access:
        return Access(self.alice.id, "t", "sub", Right.APPEND, name="g", grant_root="sub", granted=True)

    def close(self) -> None:
        self.repository.release(self.target)
        self.repository.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.close()


def chunks(*sizes: int) -> list[Chunk]:
    out = []
    for n in sizes:
        data = os.urandom(n)
        out.append((blake3.blake3(data).digest(), 0, n, data))
    return out


def test_without_a_quota_a_batch_is_stored_and_nothing_is_checked(world: World) -> None:
    charge = world.quota.charge(world.own())
    assert charge.owner is None and not charge.confined
    world.quota.store(world.target, chunks(5000), charge)
    assert world.target.usage().stored_bytes == 5000
    assert world.quota.commit_check(world.own(), charge) is None


def test_an_upload_over_the_quota_stores_nothing_and_says_the_numbers(world: World) -> None:
    world.quota.store(world.target, chunks(1000), world.quota.charge(world.own()))
    world.accounts.set_quota("alice", quota=3000)
    charge = world.quota.charge(world.own())
    assert charge.owner is not None and charge.charges == 0
    with pytest.raises(NeoError) as refused:
        world.quota.store(world.target, chunks(2500), charge)
    assert refused.value.code == ErrorCode.QUOTA_EXCEEDED
    assert "this push's upload needs 2,500 B" in refused.value.message and "uses 1,000 B" in refused.value.message
    assert world.target.usage().stored_bytes == 1000  # the refused batch stored nothing
    world.quota.store(world.target, chunks(1500), charge)  # what fits is stored
    assert world.target.usage().stored_bytes == 2500
    assert world.quota.reservations.held(world.alice.id) == 0  # every reservation was given back


def test_a_confined_push_is_charged_what_it_uploads_even_when_the_store_has_it(world: World) -> None:
    known = chunks(2000)
    world.quota.store(world.target, known, world.quota.charge(world.own()))  # the owner's data, outside the grant
    world.accounts.set_quota("alice", quota=4500)
    charge = world.quota.charge(world.confined())
    assert charge.confined and charge.granted
    world.quota.store(world.target, known, charge)  # deduplicated: adds nothing to the store...
    assert (charge.uploaded_bytes, charge.stored_new) == (2000, 0)  # ...but is charged to the push
    with pytest.raises(NeoError) as refused:
        world.quota.store(world.target, chunks(1000), charge)  # stored 2000 + uploaded 2000 + 1000 > 4500
    message = refused.value.message
    assert "account alice's quota is full: this push's upload needs 3,000 B" in message
    assert "uses" not in message  # a grantee learns nothing of the owner's usage


def test_the_commit_check_charges_new_versions_and_words_the_refusal_for_the_pusher(world: World) -> None:
    world.quota.store(world.target, chunks(1000), world.quota.charge(world.own()))
    world.accounts.set_quota("alice", quota=1500, per_file=100, per_dir=10)
    check = world.quota.commit_check(world.own(), world.quota.charge(world.own()))
    assert check is not None
    check(CommitCharge(new_files=4, new_dirs=1, new_bytes=1000))  # 1000 + 410 fits
    with pytest.raises(NeoError) as refused:
        check(CommitCharge(new_files=5, new_dirs=1, new_bytes=1000))  # 1000 + 510 does not
    assert "this push needs 1,510 B" in refused.value.message and "uses 0 B" in refused.value.message
    granted = world.quota.commit_check(world.confined(), world.quota.charge(world.confined()))
    assert granted is not None
    with pytest.raises(NeoError, match="account alice's quota is full: this push needs"):
        granted(CommitCharge(new_files=5, new_dirs=1, new_bytes=1000))


def test_commits_of_one_owner_share_one_lock(world: World) -> None:
    assert world.quota.commit_lock(world.alice.id) is world.quota.commit_lock(world.alice.id)
    assert world.quota.commit_lock(world.alice.id) is not world.quota.commit_lock(world.alice.id + 1)
