"""The repository's errors: what can go wrong in storing and reading, with the facts it is made of.

The repository speaks of snapshots, chunks, packs and disks, never of the protocol: it raises these, and the
session turns each into the wire's error (its code and message) in one place, :mod:`neotwist.server.errormap`.
Callers switch on the class and read the fields (``NoSuchPath.path``, ``MissingChunks.count``...), never the
message, which is for people (the client shows it, the operator's tools print it).

Two shared modules the repository uses raise errors of their own that are not these: :mod:`neotwist.paths`
(a path or name that is not allowed: the protocol's own ``bad_path``/``bad_name``, the same check on both
sides) and :mod:`neotwist.codec` (:class:`neotwist.codec.CodecError`: chunk bytes that do not verify), which
:class:`ChunkRejected` carries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neotwist.codec import CodecError


class RepositoryError(Exception):
    """Anything the repository refuses or fails to do. ``message`` says it as a person reads it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ReadOnly(RepositoryError):
    """A write asked of a repository or target opened read-only (``neo-admin`` beside a running server)."""


class NoSuchSnapshot(RepositoryError):
    """``snapshot`` is not a kept snapshot of the target named ``target``."""

    def __init__(self, snapshot: int, target: str) -> None:
        super().__init__(f"no snapshot {snapshot} in target {target}")
        self.snapshot = snapshot
        self.target = target


class NoSuchPath(RepositoryError):
    """Nothing is stored at ``path`` (target-relative): in ``snapshot``, or (None) in any kept snapshot."""

    def __init__(self, path: str, snapshot: int | None = None) -> None:
        if snapshot is None:
            super().__init__(f"no stored version of {path!r}")
        else:
            super().__init__(f"nothing at {path!r} in snapshot {snapshot}")
        self.path = path
        self.snapshot = snapshot


class Conflict(RepositoryError):
    """The request is at odds with the target's state as it is now (another push committed first...)."""


class LatestSnapshot(Conflict):
    """A prune named ``snapshot``, the newest kept one: a target is never left without its latest snapshot."""

    def __init__(self, snapshot: int) -> None:
        super().__init__(f"snapshot {snapshot} is the latest of the target and cannot be pruned")
        self.snapshot = snapshot


class MissingChunks(RepositoryError):
    """A commit refers to ``count`` chunks the store does not hold, ``example`` one of them: the push stays
    open, and the client may upload them and commit again."""

    def __init__(self, count: int, example: bytes, message: str | None = None) -> None:
        super().__init__(message or f"{count} chunks missing, e.g. {example.hex()}")
        self.count = count
        self.example = example


class DamagedChunks(MissingChunks):
    """A commit refers to ``count`` chunks that are marked damaged: sent once, they must be sent again."""

    def __init__(self, count: int, example: bytes) -> None:
        super().__init__(
            count, example, f"{count} chunks are damaged on the server and must be sent again, e.g. {example.hex()}"
        )


class ListEverything(MissingChunks):
    """A push that listed only its changes cannot commit while chunks are marked damaged: only a full listing
    names the files whose chunks must be sent again."""

    def __init__(self) -> None:
        super().__init__(0, b"", "chunks are damaged on the server: list every file again")


class Damaged(RepositoryError):
    """Stored data failed its check or could not be read back (a pack missing or unreadable)."""


class RecordDamaged(Damaged):
    """A record that was read but does not check out (truncated, another chunk's, a bad CRC): definite damage,
    not an I/O error that may pass (those are plain :class:`Damaged`)."""


class StorageFailed(RepositoryError):
    """The disk or the index refused a write, an fsync or a transaction (an I/O error, a lock held too long,
    an index written by a newer version): nothing was committed. ``what`` is what could not be done."""

    def __init__(self, message: str, what: str = "") -> None:
        super().__init__(message)
        self.what = what


class DiskFull(StorageFailed):
    """The disk is full, or below the server's free-space reserve: nothing was stored."""


class BadPush(RepositoryError):
    """A push's entries cannot be staged as sent (a path twice, chunk ids not whole, a continuation naming
    another file...): the push is dead and can only be aborted."""


class PushTooLarge(BadPush):
    """A push lists more than ``limit`` entries, or one file has more than ``limit`` chunks."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit

    @classmethod
    def entries(cls, limit: int) -> PushTooLarge:
        return cls(f"a push may list at most {limit} entries", limit)

    @classmethod
    def chunks(cls, path: str, limit: int) -> PushTooLarge:
        return cls(f"{path!r} has over {limit} chunks", limit)


class PushOutOfOrder(RepositoryError):
    """A push was used in a way its state does not allow (after it ended; deletions without a parent)."""


class ChunkRejected(RepositoryError):
    """The ``index``-th chunk of a batch failed verification (``error`` says how); the batch stored nothing."""

    def __init__(self, index: int, error: CodecError) -> None:
        super().__init__(error.message)
        self.index = index
        self.error = error


class OverBudget(RepositoryError):
    """A batch of chunks would store ``needed`` new bytes, over the budget it was given (the session words the
    quota refusal)."""

    def __init__(self, needed: int) -> None:
        super().__init__(f"{needed} new bytes are over the budget")
        self.needed = needed
