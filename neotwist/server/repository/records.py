"""The plain records the repository hands to its callers.

They are frozen dataclasses rather than wire structs so the storage layer does not depend on how a session
chooses to encode them; the session copies the fields it sends.
"""

from __future__ import annotations

from dataclasses import dataclass

from neotwist.wire.messages import ChunkerParams


@dataclass(frozen=True)
class TargetMeta:
    """A target's catalog row: fixed at creation, except ``keep_history``."""

    id: int
    account_id: int
    name: str
    encrypted: bool
    chunker: ChunkerParams
    created: float
    keep_history: bool
    key_check: bytes = b""  # encrypted targets: the creator's key-check record, opaque (issue 6)


@dataclass(frozen=True)
class SnapshotInfo:
    """One committed snapshot.

    ``files`` counts the non-directory entries (files and symlinks) in the snapshot's view; ``changed``
    the new versions it added (new or modified paths); ``deleted`` the paths it removed;
    ``new_chunks``/``new_bytes`` the chunks (and their stored bytes) it references that were stored since
    the previous snapshot.
    """

    id: int
    time: float
    files: int
    changed: int
    deleted: int
    new_chunks: int
    new_bytes: int


@dataclass(frozen=True)
class CommitResult:
    """What a push commit produced; ``stored_bytes`` is the target's total stored chunk bytes afterwards."""

    snapshot: SnapshotInfo
    stored_bytes: int


@dataclass(frozen=True)
class Usage:
    """A target's stored chunk bytes and chunks, and the latest snapshot's files and dirs."""

    stored_bytes: int
    chunks: int
    files: int
    dirs: int
