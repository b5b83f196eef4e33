"""The plain records the repository hands to its callers.

They are frozen dataclasses rather than wire structs so the storage layer does not depend on how a session
chooses to encode them; the session copies the fields it sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol

EntryKind = Literal["f", "d", "l"]
"""A file, a directory or a symlink."""


class ChunkerSettings(Protocol):
    """What a target is created with to say how its files are cut (the wire's ``ChunkerParams`` is one)."""

    @property
    def algorithm(self) -> str: ...
    @property
    def min_size(self) -> int: ...
    @property
    def avg_size(self) -> int: ...
    @property
    def max_size(self) -> int: ...
    @property
    def seed(self) -> int: ...


class StagedEntry(Protocol):
    """One entry of a push as :meth:`Push.add <.push.Push.add>` stages it (the wire's ``Entry`` is one): a path
    relative to the push root, its kind (``f``, ``d``, ``l``), metadata, the concatenated chunk ids of a file,
    and ``more`` when the next entry continues this file's chunk ids."""

    @property
    def path(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def mode(self) -> int: ...
    @property
    def mtime_ns(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def chunks(self) -> bytes: ...
    @property
    def link(self) -> str: ...
    @property
    def meta(self) -> bytes: ...
    @property
    def more(self) -> bool: ...


class StoredEntry(NamedTuple):
    """One path of a snapshot's view as stored: a file's ``chunks`` are all its chunk ids, concatenated (a
    listing on the wire carries a large file in several records: the session splits it)."""

    path: str
    kind: EntryKind
    mode: int
    mtime_ns: int
    size: int
    chunks: bytes
    link: str
    meta: bytes


@dataclass(frozen=True)
class Chunker:
    """How a target's files are cut, as stored with it: fixed at creation, kept for the clients (the repository
    never cuts anything itself)."""

    algorithm: str
    min_size: int
    avg_size: int
    max_size: int
    seed: int = 0

    @classmethod
    def of(cls, settings: ChunkerSettings) -> Chunker:
        return cls(settings.algorithm, settings.min_size, settings.avg_size, settings.max_size, settings.seed)


@dataclass(frozen=True)
class TargetMeta:
    """A target's catalog row: fixed at creation, except ``keep_history``."""

    id: int
    account_id: int
    name: str
    encrypted: bool
    chunker: Chunker
    created: float
    keep_history: bool
    key_check: bytes = b""  # encrypted targets: the creator's key-check record, opaque


@dataclass(frozen=True)
class TargetSummary:
    """What listing an account's targets shows of one: its latest snapshot, its files then and its size."""

    name: str
    encrypted: bool
    snapshots: int
    latest: int | None
    latest_time: float | None
    files: int
    stored_bytes: int


@dataclass(frozen=True)
class SnapshotInfo:
    """One committed snapshot.

    ``files`` counts the non-directory entries (files and symlinks) in the snapshot's view and ``dirs`` the
    directories; ``changed`` the new versions it added (new or modified paths); ``deleted`` the paths it
    removed; ``new_chunks``/``new_bytes`` the chunks (and their stored bytes) it references that were stored
    since the previous snapshot; ``root`` and ``delete_mode`` describe the push that made it (its sub-path,
    '' = everything, and whether it removed unlisted paths under it); ``label`` what the push said about
    itself (host, source, tags, warnings; b"" for snapshots made before labels). The trailing fields have
    defaults so older positional construction keeps working.
    """

    id: int
    time: float
    files: int
    changed: int
    deleted: int
    new_chunks: int
    new_bytes: int
    dirs: int = 0
    root: str = ""
    delete_mode: bool = False
    label: bytes = b""  # as stored: an encoded label (plaintext target) or the client's sealed one (server/labels.py)


@dataclass(frozen=True)
class CommitResult:
    """What a push commit produced; ``stored_bytes`` is the target's total stored chunk bytes afterwards.

    ``uploaded_chunks``/``uploaded_bytes`` (confined pushes only, else 0): the distinct chunks the new snapshot's
    changed files reference that were uploaded on this push, and their uploaded bytes, whether or not the store
    already held them. That is what such a push may be told it added: ``snapshot.new_chunks``/``new_bytes`` count
    what was new to the whole target's store, which would tell it what exists elsewhere in the target."""

    snapshot: SnapshotInfo
    stored_bytes: int
    uploaded_chunks: int = 0
    uploaded_bytes: int = 0


@dataclass(frozen=True)
class Usage:
    """A target's stored chunk bytes and chunks, and the latest snapshot's files and dirs."""

    stored_bytes: int
    chunks: int
    files: int
    dirs: int


@dataclass(frozen=True)
class VersionInfo:
    """One stored version of one path, as listed by ``Target.versions``.

    ``first`` is the oldest kept snapshot whose view holds this version and ``time`` that snapshot's time (when
    the snapshot that added it has been pruned, the first kept one after it stands in); ``last`` is the
    snapshot that replaced or deleted it (which may itself have been pruned since), None while it is current.
    """

    first: int
    last: int | None
    time: float
    kind: str
    mode: int
    mtime_ns: int
    size: int


@dataclass(frozen=True)
class DeletedInfo:
    """A path the current view no longer has but a kept snapshot still holds (its newest version).

    ``last_snapshot`` is the newest kept snapshot that holds it (pull from there to get it back);
    ``deleted_in`` is the snapshot whose push removed it and ``deleted_time`` that snapshot's time.
    """

    path: str
    kind: str
    size: int
    mtime_ns: int
    last_snapshot: int
    deleted_in: int
    deleted_time: float


@dataclass(frozen=True)
class PruneResult:
    """Snapshots newly marked pruned, and versions rows dropped because no kept snapshot sees them any more."""

    snapshots_removed: int
    versions_removed: int


@dataclass(frozen=True)
class GcResult:
    """What one garbage collection did.

    ``chunks_removed``/``stored_bytes_removed``: chunk rows no version references (their stored lengths, as in
    the usage counters). ``packs_rewritten``: packs whose live records were copied (``bytes_copied``) into the
    current pack and which were then deleted; ``packs_deleted``: every pack file deleted, the rewritten ones
    included (fully dead packs are deleted without copying). ``leftovers_removed``: pack files no index row
    names (a crash between a compaction's commit and its unlinks). ``disk_bytes_*``: sum of the pack file
    sizes before and after. ``problems``: packs that were left alone because a live record in them did not
    check out (run a check).
    """

    chunks_removed: int
    stored_bytes_removed: int
    packs_rewritten: int
    packs_deleted: int
    disk_bytes_before: int
    disk_bytes_after: int
    bytes_copied: int = 0
    leftovers_removed: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DamagedFile:
    """A stored file version that cannot be restored whole: ``chunk`` (hex id) is damaged or missing, ``why``
    says how; ``snapshots`` are the kept snapshots whose view holds this version. ``marked``: the server knows
    (see :mod:`.damage`), so the next push of the intact file heals it."""

    path: str
    snapshots: list[int]
    chunk: str
    why: str
    marked: bool = False  # the chunk is marked damaged: lost until a push of the intact file stores it again


@dataclass(frozen=True)
class CheckReport:
    """The result of ``Target.check``.

    ``damaged_chunks``: (hex id, why) of every stored record that did not check out, and of every referenced
    chunk the index does not hold. ``damaged_files``: each file version that references one of them;
    ``damaged_snapshots``: the kept snapshots holding any such version, ascending. ``problems``: index and
    store disagreements not tied to one file (a pack missing or shorter than committed, counters wrong, a
    snapshot's counts wrong). ``notes``: things worth knowing that are not damage (what could not be verified
    in an encrypted target, unreferenced chunks that garbage collection will reclaim). ``ok`` is True when
    nothing is damaged and there are no problems.

    ``repaired``: the check was asked to repair, and marked ``marked_chunks`` damaged chunks now (see
    :mod:`.damage`). ``lost_chunks``: the damaged chunks that are marked (now or before) and that kept snapshots
    still refer to: lost until a push of the intact file stores them again (they are among ``damaged_chunks``).
    """

    chunks_checked: int
    bytes_checked: int
    damaged_chunks: list[tuple[str, str]]
    damaged_files: list[DamagedFile]
    damaged_snapshots: list[int]
    problems: list[str]
    ok: bool
    verified_data: bool = False
    unreferenced_chunks: int = 0
    notes: list[str] = field(default_factory=list)
    repaired: bool = False
    marked_chunks: int = 0
    lost_chunks: int = 0
