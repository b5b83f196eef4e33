"""Quotas: the one place an account's usage is computed and its quota enforced (the original's SpaceQuota,
SpacePerFile and SpacePerDir).

Usage = the stored bytes of every target the account owns (after deduplication and compression, including
chunks uploaded by pushes not yet committed, and chunks no kept snapshot references until garbage collection
reclaims them) + SpacePerFile x the file (and symlink) versions kept + SpacePerDir x the directory versions kept,
over all kept history. A sub-account owns no targets: what it pushes through a grant is charged to the grant's
owner.

Stored bytes come from each target's counters (a row read). Version counts are one scan of each target's
``versions`` table, done only when a charge is set (measured: 4 ms for 50,000 versions, 80 ms for 1,000,000
on this machine's class of hardware, warm cache); counters kept by triggers were measured at 2.7x the commit
time of a 1,000,000-file first push and were not worth it.

A push is checked twice (:class:`Quota`): early, as each batch of its chunks is stored (:meth:`Quota.store`:
stored bytes only, the versions as counted at ``push_begin``), so a push that cannot fit is refused before the
client has sent everything; and exactly at its commit (:meth:`Quota.commit_check`: the new versions' charges
too), under a lock per owner so two pushes cannot each fit alone and pass the quota together. A push confined to
a granted sub-path is charged every byte it uploaded, whether the store had it already or not
(:class:`PushCharge`), so its refusals never tell what the rest of the target holds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from twisted.internet.defer import DeferredLock

from neotwist.server.accounts import Account, AccountStore
from neotwist.server.repository import Repository, Target
from neotwist.server.repository.errors import OverBudget
from neotwist.server.repository.push import CommitCharge
from neotwist.server.reservations import Reservations
from neotwist.server.rights import Access
from neotwist.wire.errors import ErrorCode, NeoError


@dataclass(frozen=True)
class TargetUsage:
    """One target's part of an account's usage."""

    name: str
    stored_bytes: int
    chunks: int
    file_versions: int
    dir_versions: int


@dataclass(frozen=True)
class AccountUsage:
    """An account's usage and its quota settings (``quota`` None = unlimited)."""

    account: str
    quota: int | None
    per_file: int
    per_dir: int
    stored_bytes: int
    file_versions: int
    dir_versions: int
    targets: list[TargetUsage] = field(default_factory=list)

    @property
    def charges(self) -> int:
        return self.per_file * self.file_versions + self.per_dir * self.dir_versions

    @property
    def used(self) -> int:
        return self.stored_bytes + self.charges

    @property
    def available(self) -> int | None:
        """Bytes left under the quota (never negative); None when unlimited."""
        return None if self.quota is None else max(0, self.quota - self.used)

    def charge(self, files: int, dirs: int) -> int:
        """What ``files`` new file versions and ``dirs`` new directory versions cost on top of their data."""
        return self.per_file * files + self.per_dir * dirs

    def as_json(self) -> dict[str, object]:
        return {
            "account": self.account,
            "used": self.used,
            "quota": self.quota,
            "available": self.available,
            "stored_bytes": self.stored_bytes,
            "file_versions": self.file_versions,
            "dir_versions": self.dir_versions,
            "per_file": self.per_file,
            "per_dir": self.per_dir,
            "charges": self.charges,
            "targets": [
                {
                    "name": t.name,
                    "stored_bytes": t.stored_bytes,
                    "chunks": t.chunks,
                    "file_versions": t.file_versions,
                    "dir_versions": t.dir_versions,
                }
                for t in self.targets
            ],
        }


def target_usage(target: Target, count_versions: bool = True) -> TargetUsage:
    usage = target.usage()
    files, dirs = target.version_counts() if count_versions else (0, 0)
    return TargetUsage(target.meta.name, usage.stored_bytes, usage.chunks, files, dirs)


def account_usage(repository: Repository, account: Account, *, count_versions: bool | None = None) -> AccountUsage:
    """The account's usage now (blocking). Versions are counted when a charge is set, or when asked to."""
    if count_versions is None:
        count_versions = bool(account.space_per_file or account.space_per_dir)
    targets = [target_usage(t, count_versions) for t in repository.each_target(account.id)]
    return AccountUsage(
        account=account.name,
        quota=account.quota_bytes,
        per_file=account.space_per_file,
        per_dir=account.space_per_dir,
        stored_bytes=sum(t.stored_bytes for t in targets),
        file_versions=sum(t.file_versions for t in targets),
        dir_versions=sum(t.dir_versions for t in targets),
        targets=targets,
    )


def human(n: int) -> str:
    """Bytes for people: 1,234,567 B (1.2 MiB)."""
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        value /= 1024
        if value < 1024 or unit == "EiB":
            return f"{n:,} B ({value:.1f} {unit})" if n >= 1024 else f"{n:,} B"
    return f"{n:,} B"


def over_quota(usage: AccountUsage, needed: int, what: str) -> NeoError:
    """The refusal: states usage, quota and what the operation needed, and what to do."""
    quota = usage.quota if usage.quota is not None else 0
    return NeoError(
        ErrorCode.QUOTA_EXCEEDED,
        f"{what} needs {human(needed)} but account {usage.account} uses {human(usage.used)} of its quota "
        f"{human(quota)} ({human(max(0, quota - usage.used))} left): nothing was committed; prune old snapshots "
        "(neo-prune) or ask the server's operator for a bigger quota",
    )


def grantee_over_quota(owner: str, needed: int, what: str) -> NeoError:
    """The refusal for a push through a grant: it says what the push needed (for a confined push, what it
    uploaded, see the session) and whose quota is full, but not the owner's usage, quota or what is left: those
    sum up every target of the owner, which a grantee must not learn."""
    return NeoError(
        ErrorCode.QUOTA_EXCEEDED,
        f"account {owner}'s quota is full: {what} needs {human(needed)}, more than the account has left: nothing "
        f"was committed; ask {owner} to prune old snapshots or the server's operator for a bigger quota",
    )


Chunk = tuple[bytes, int, int, bytes]
"""(id, codec, size, data) of an uploaded chunk."""


@dataclass
class PushCharge:
    """What one push is charged against its owner's quota (made at ``push_begin``, see :meth:`Quota.charge`).

    ``owner`` is the target's owner when it has a quota (None: unlimited, as read at ``push_begin``), with its
    per-file/per-dir ``charges`` then. A push confined to a granted sub-path also counts, since it began, the
    bytes of every chunk it uploaded and what those added to the store (less when the store had some already):
    its checks use the first instead of the second (see :meth:`Quota.store`)."""

    confined: bool
    granted: bool
    owner: Account | None = None
    charges: int = 0
    uploaded_bytes: int = 0
    stored_new: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)  # one confined check+store at a time

    def over(self, usage: AccountUsage, needed: int, what: str) -> NeoError:
        """The refusal of ``what``, needing ``needed`` bytes, worded for who pushes: a grantee learns nothing of
        the owner's usage."""
        if self.granted:
            assert self.owner is not None
            return grantee_over_quota(self.owner.name, needed, what)
        return over_quota(usage, needed, what)


class Quota:
    """The quota checks of every push of one server (thread-safe; the commit lock is the reactor's)."""

    def __init__(self, repository: Repository, accounts: AccountStore) -> None:
        self.repository = repository
        self.accounts = accounts
        self.reservations = Reservations()  # per owner: upload bytes storing right now
        self._commit_locks: dict[int, DeferredLock] = {}

    def commit_lock(self, owner_id: int) -> DeferredLock:
        """The lock that serializes the quota check and commit of every push charged to ``owner_id``, so two
        concurrent pushes cannot both fit under the quota on their own and pass it together."""
        lock = self._commit_locks.get(owner_id)
        if lock is None:
            lock = self._commit_locks[owner_id] = DeferredLock()
        return lock

    def charge(self, access: Access) -> PushCharge:
        """A new push's charge through ``access`` (blocking: the owner's versions are counted when it has a
        quota; the commit counts them exactly again)."""
        charge = PushCharge(confined=access.confined, granted=access.granted)
        owner = self.accounts.get_by_id(access.owner_id)
        if owner is not None and owner.quota_bytes is not None:
            charge.owner = owner
            charge.charges = account_usage(self.repository, owner).charges
        return charge

    def store(self, target: Target, chunks: Sequence[Chunk], charge: PushCharge) -> None:
        """Store an upload batch of the push ``charge`` belongs to (blocking), refusing it (QUOTA_EXCEEDED, storing
        nothing) once the owner's stored bytes would pass the quota. Batches storing at the same time (this
        push's, other connections') count by their reservations (:mod:`.reservations`)."""
        if charge.confined:
            self._store_confined(target, chunks, charge)
            return
        owner = charge.owner
        if owner is None or owner.quota_bytes is None:
            target.store_chunks(chunks)
            return
        measured: list[AccountUsage] = []

        def measure() -> int:
            measured.append(account_usage(self.repository, owner, count_versions=False))
            return measured[0].stored_bytes

        size = sum(len(c[3]) for c in chunks)
        with self.reservations.hold(owner.id, size, measure) as stored:
            used = stored + charge.charges
            try:
                target.store_chunks(chunks, budget=max(0, owner.quota_bytes - used))
            except OverBudget as e:
                usage = replace(measured[0], per_file=0, per_dir=0, stored_bytes=used)
                raise charge.over(usage, e.needed, "this push's upload") from None

    def _store_confined(self, target: Target, chunks: Sequence[Chunk], charge: PushCharge) -> None:
        """Store a batch for a push confined to a granted sub-path (blocking), without telling it what the rest of
        the target holds: with a quota, the early check charges every byte uploaded on this push, whether or not
        the store already had it (the owner's usage minus what this push's puts really added, plus all they
        uploaded), so being refused, and the bytes the refusal names, do not depend on deduplication against
        data outside the grant. Checks and stores of one push run one at a time, so the counts stay exact."""
        owner = charge.owner
        with charge.lock:
            uploading = sum(len(c[3]) for c in chunks)
            if owner is None or owner.quota_bytes is None:
                _new, added = target.store_chunks_sized(chunks)
            else:

                def measure() -> int:
                    return account_usage(self.repository, owner, count_versions=False).stored_bytes

                with self.reservations.hold(owner.id, uploading, measure) as stored:
                    used = stored - charge.stored_new + charge.uploaded_bytes + charge.charges
                    if used + uploading > owner.quota_bytes:
                        raise grantee_over_quota(owner.name, charge.uploaded_bytes + uploading, "this push's upload")
                    _new, added = target.store_chunks_sized(chunks)
            charge.stored_new += added
            charge.uploaded_bytes += uploading

    def commit_check(self, access: Access, charge: PushCharge) -> Callable[[CommitCharge], None] | None:
        """The exact check a commit through ``access`` runs before it makes the snapshot (blocking; call it with
        :meth:`commit_lock` held): None when the owner has no quota now. Usage is counted before the target's
        writer lock is taken (it reads every target of the owner); the owner's commits are serialized by the
        commit lock, so none slips in between."""
        owner = self.accounts.get_by_id(access.owner_id)
        if owner is None or owner.quota_bytes is None:
            return None
        usage = account_usage(self.repository, owner)
        quota = owner.quota_bytes
        # A confined push is charged everything it uploaded, deduplicated or not (see _store_confined).
        used = usage.used - charge.stored_new + charge.uploaded_bytes if access.confined else usage.used
        refusal = PushCharge(confined=access.confined, granted=access.granted, owner=owner)

        def check(new: CommitCharge) -> None:
            extra = usage.charge(new.new_files, new.new_dirs)
            if used + extra > quota:
                before = replace(usage, stored_bytes=usage.stored_bytes - new.new_bytes)
                raise refusal.over(before, new.new_bytes + extra, "this push")

        return check

