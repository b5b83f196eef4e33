"""Every message of protocol version 1, as typed and bounded msgspec structs.

A frame body is one msgpack array: ``[type, rid, field, field, ...]`` (msgspec ``array_like`` tagged structs).
Decoding validates every field's type and bound in C before any handler sees it, so a handler may trust lengths
and ranges declared here. Path *syntax* (no ``..`` and friends) is checked by :mod:`neotwist.paths`.

``rid`` is the request id chosen by the client; replies carry the rid of the request they answer. Messages that
are not requests or replies (``credit``) carry rid 0.

This module does not postpone its annotations (no ``from __future__ import annotations``): the decoder below is
built when the module is imported, by every command that talks to a server, and msgspec reads the annotations
of each of the ~70 structs. As objects they are read as they are; as strings each had to be evaluated again, half
of the module's import time (about 5 ms). So a struct may only name types defined above it.
"""

from typing import Annotated, Literal

import msgspec

from neotwist.wire import limits
from neotwist.wire.label import SealedLabel, SnapshotLabel

U32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
U64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
I64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
Handle = Annotated[int, msgspec.Meta(ge=1, le=2**31)]
SnapshotId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
ChunkId = Annotated[bytes, msgspec.Meta(min_length=limits.ID_SIZE, max_length=limits.ID_SIZE)]
ChunkIds = Annotated[list[ChunkId], msgspec.Meta(max_length=limits.MAX_IDS)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.MAX_NAME)]
PathText = Annotated[str, msgspec.Meta(max_length=limits.MAX_WIRE_PATH)]
Text = Annotated[str, msgspec.Meta(max_length=limits.MAX_TEXT)]
Password = Annotated[str, msgspec.Meta(max_length=limits.MAX_PASSWORD)]
ChunkData = Annotated[bytes, msgspec.Meta(max_length=limits.MAX_CHUNK)]
Features = Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(max_length=64)]
Window = Annotated[int, msgspec.Meta(ge=limits.MIN_WINDOW, le=limits.MAX_WINDOW)]
KeyCheck = Annotated[bytes, msgspec.Meta(max_length=limits.MAX_KEY_CHECK)]

CODEC_RAW = 0
"""Chunk data as is."""
CODEC_ZSTD = 1
"""Chunk data compressed with zstd (one frame)."""
CODEC_SEALED = 2
"""Chunk data encrypted by the client (encrypted targets); the server stores it opaque and cannot verify it."""
Codec = Literal[0, 1, 2]

EntryKind = Literal["f", "d", "l"]
"""file, directory, symlink."""


class Entry(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One file, directory or symlink as stored in a snapshot.

    Not tracked by the garbage collector (``gc=False``: its fields are strings, numbers and bytes, which can
    form no cycle): a listing holds one per item, and every collection walked them all.

    ``path`` is relative to the handle's root ('/'-separated, '' means the root itself). ``chunks`` is the
    concatenation of the file's chunk ids in order. A file with more than MAX_FILE_CHUNK_IDS chunks is sent as
    several records with the same path, all but the last with ``more`` set; its other fields come from the first.
    ``meta`` is opaque to the server (encrypted targets keep names and metadata in it).
    """

    path: PathText
    kind: EntryKind
    mode: Annotated[int, msgspec.Meta(ge=0, le=0o7777)]
    mtime_ns: I64
    size: U64
    chunks: Annotated[bytes, msgspec.Meta(max_length=limits.MAX_FILE_CHUNK_IDS * limits.ID_SIZE)] = b""
    link: Annotated[str, msgspec.Meta(max_length=limits.MAX_WIRE_LINK)] = ""
    meta: Annotated[bytes, msgspec.Meta(max_length=limits.MAX_META)] = b""
    more: bool = False


Entries = Annotated[list[Entry], msgspec.Meta(max_length=limits.MAX_ENTRIES)]


class ChunkerParams(msgspec.Struct, array_like=True, frozen=True):
    """How a target's files are cut. Fixed when the target is created, so every client cuts alike and dedups."""

    algorithm: Literal["fastcdc2020"]
    min_size: Annotated[int, msgspec.Meta(ge=64, le=limits.MAX_CHUNK)]
    avg_size: Annotated[int, msgspec.Meta(ge=256, le=limits.MAX_CHUNK)]
    max_size: Annotated[int, msgspec.Meta(ge=1024, le=limits.MAX_CHUNK)]
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0


RightName = Literal["read", "append", "write", "full"]
"""A right as spelled on the wire (see neotwist.server.rights.Right)."""

RIGHTS_TEXT = "read (list, pull), append (read + push), write (append + push --delete), full (write + prune, remove)"
"""One line explaining the rights, for the help texts of neo-share (client) and neo-admin (server)."""


class TargetInfo(msgspec.Struct, array_like=True, frozen=True):
    """One target the account can reach. ``right`` and ``owner`` describe a granted target: its
    owner's account name, and the right held (``full`` and ``""`` for the account's own targets). For a grant
    on a sub-path, ``snapshots``/``latest``/``files`` describe that sub-path only and ``stored_bytes`` is 0."""

    name: Name
    encrypted: bool
    snapshots: U64
    latest: SnapshotId | None
    latest_time: float | None
    files: U64
    stored_bytes: U64
    right: RightName = "full"
    owner: Annotated[str, msgspec.Meta(max_length=limits.MAX_NAME)] = ""


class Message(msgspec.Struct, array_like=True, tag=True):
    """Base of every message. The tag (message type) is the first array element; ``rid`` the second."""

    rid: U32


# --- session ---------------------------------------------------------------------------------------------


class Hello(Message, tag="hello"):
    """Client's first frame: protocol version, software name, its receive window."""

    version: U32
    software: Text
    window: Window
    features: Features = msgspec.field(default_factory=list)


class Welcome(Message, tag="welcome"):
    """Server's answer to hello. ``account`` is set when the transport already authenticated (SSH)."""

    version: U32
    software: Text
    window: Window
    login_required: bool
    account: str
    features: Features = msgspec.field(default_factory=list)


class Login(Message, tag="login"):
    """In-band login (TLS only). Answered by ``logged_in`` or ``error auth_failed``."""

    account: Name
    password: Password


class LoggedIn(Message, tag="logged_in"):
    account: Name


class Credit(Message, tag="credit"):
    """Flow control: the sender may send ``amount`` more bytes of frames. Not itself counted against credit."""

    amount: Annotated[int, msgspec.Meta(ge=1, le=limits.MAX_WINDOW)]


class Bye(Message, tag="bye"):
    """Explicit end of session (EOF alone is not a clean end). The server answers bye, then closes."""


class Ping(Message, tag="ping"):
    """Are you there? Answered at once with ``pong`` (same rid) by the peer's connection layer, ahead of any
    request still being handled, so a busy server is told from a dead connection. Only sent to a peer whose
    hello / welcome lists the ``ping`` feature."""


class Pong(Message, tag="pong"):
    """The answer to ``ping``."""


class Ok(Message, tag="ok"):
    """Success with nothing more to say."""


class Error(Message, tag="error"):
    """A request failed. ``code`` is one of :class:`neotwist.wire.errors.ErrorCode`. ``path``: the path the
    error is about, when it names one (``message`` is then the reason alone)."""

    code: Annotated[str, msgspec.Meta(max_length=64)]
    message: Text
    path: Text | None = None


# --- targets -----------------------------------------------------------------------------------------------


class ListTargets(Message, tag="targets"):
    """Which targets can this account see?"""


class Targets(Message, tag="target_list"):
    targets: Annotated[list[TargetInfo], msgspec.Meta(max_length=100_000)]


class Open(Message, tag="open"):
    """Open ``target`` at sub-path ``path`` for reading or pushing; the handle's root is that sub-path.

    ``create`` lets a push open create a target that does not exist yet. ``encrypted`` says what the client
    will push; a mismatch with an existing target is refused. ``keep_history`` (push only): False makes the
    target keep only its latest snapshot (set at creation, or changed later with the ``full`` right); None
    leaves the setting as it is (a new target keeps history). ``key_check`` (encrypted push with create): the
    client's key-check record, stored with a target this open creates and ignored otherwise.
    """

    target: Name
    path: PathText
    mode: Literal["read", "push"]
    create: bool = False
    encrypted: bool = False
    keep_history: bool | None = None
    # --- encryption ---
    key_check: KeyCheck = b""


class Opened(Message, tag="opened"):
    """``key_check`` is the encrypted target's key-check record (empty for plaintext targets): the client checks
    its key against it before it writes anything."""

    handle: Handle
    exists: bool
    encrypted: bool
    chunker: ChunkerParams
    latest: SnapshotId | None
    latest_time: float | None
    keep_history: bool = True
    # --- encryption ---
    key_check: KeyCheck = b""


class Close(Message, tag="close"):
    """Release a handle (aborting any push in progress on it). Answered by ok."""

    handle: Handle


# --- push --------------------------------------------------------------------------------------------------


class Have(Message, tag="have"):
    """Which of these chunk ids does the target lack? Answered by ``missing``."""

    handle: Handle
    ids: ChunkIds


class Missing(Message, tag="missing"):
    """Bitmap over the ids of the ``have`` request: bit i (LSB first within each byte) set = id i is missing."""

    bitmap: Annotated[bytes, msgspec.Meta(max_length=(limits.MAX_IDS + 7) // 8)]


class Put(Message, tag="put"):
    """Store one chunk. No reply on success (an ``error`` with this rid otherwise); ``commit`` is the barrier."""

    handle: Handle
    id: ChunkId
    codec: Codec
    size: Annotated[int, msgspec.Meta(ge=0, le=limits.MAX_CHUNK)]
    data: ChunkData


class Sign(Message, tag="sign"):
    """Describe these base chunks (stored chunks the client's new chunks likely grew from) for a delta: cut
    each one's plaintext into sub-pieces and hash them. Answered by ``signatures``, one per id, in order; a
    base that cannot serve (not stored, unreadable, a sealed target's, past the request's read or reply bound,
    a handle confined to a grant) gets an empty one. Sent only to a server with the ``subdelta`` feature."""

    handle: Handle
    ids: Annotated[list[ChunkId], msgspec.Meta(max_length=limits.MAX_SIGN_IDS)]


class PieceSignature(msgspec.Struct, array_like=True, frozen=True):
    """One base chunk's sub-pieces: their lengths in order and SUB_HASH bytes of BLAKE3 of each."""

    lengths: Annotated[
        list[Annotated[int, msgspec.Meta(ge=1, le=limits.MAX_CHUNK)]], msgspec.Meta(max_length=limits.MAX_SUB_PIECES)
    ]
    hashes: Annotated[bytes, msgspec.Meta(max_length=limits.MAX_SUB_PIECES * limits.SUB_HASH)]


class Signatures(Message, tag="signatures"):
    signatures: Annotated[list[PieceSignature], msgspec.Meta(max_length=limits.MAX_SIGN_IDS)]


DeltaOp = tuple[U32, Annotated[int, msgspec.Meta(ge=1, le=limits.MAX_CHUNK)]]
"""(start, count): copy ``count`` sub-pieces of the bases from index ``start``, or with start = DELTA_LITERAL
``count`` literal bytes."""


class ChunkDelta(msgspec.Struct, array_like=True, frozen=True):
    """A chunk as a delta against base chunks: the server cuts the bases (in order; indices run over all their
    sub-pieces), applies ``ops`` with the literal bytes (``codec`` raw or zstd, ``literal_size`` bytes once
    decoded), and stores the result only if it is ``size`` bytes whose BLAKE3 is ``id``."""

    id: ChunkId
    size: Annotated[int, msgspec.Meta(ge=0, le=limits.MAX_CHUNK)]
    bases: Annotated[list[ChunkId], msgspec.Meta(min_length=1, max_length=limits.MAX_DELTA_BASES)]
    ops: Annotated[list[DeltaOp], msgspec.Meta(max_length=limits.MAX_DELTA_OPS)]
    codec: Literal[0, 1]
    literal_size: Annotated[int, msgspec.Meta(ge=0, le=limits.MAX_CHUNK)]
    literals: ChunkData


class PutDelta(Message, tag="put_delta"):
    """Store chunks sent as deltas (plaintext targets, a server with the ``subdelta`` feature). Like ``put``:
    no reply on success, an ``error`` with this rid otherwise (``chunk_mismatch`` for a delta that does not
    rebuild its id; the push then cannot commit)."""

    handle: Handle
    deltas: Annotated[list[ChunkDelta], msgspec.Meta(min_length=1, max_length=limits.MAX_DELTAS)]


class PushBegin(Message, tag="push_begin"):
    """Start a push on a push handle. With ``delete``, entries under the root that the push does not list are
    recorded as deleted; without it the previous snapshot's entries are kept. With ``parent`` the push lists
    only what changed since that snapshot, which must still be the target's latest at commit: unlisted entries
    keep their current version, and with ``delete`` only the paths named by ``deleted_paths`` are deleted.
    Answered by ok."""

    handle: Handle
    delete: bool = False
    parent: SnapshotId | None = None


class PushDeleted(Message, tag="deleted_paths"):
    """Paths (relative to the push root) a push with ``parent`` and ``delete`` records as deleted. A post, like
    ``entries``; counted with the entries against MAX_PUSH_ENTRIES."""

    handle: Handle
    paths: Annotated[list[PathText], msgspec.Meta(max_length=limits.MAX_ENTRIES)]


class PushEntries(Message, tag="entries"):
    """Part of the new tree. No reply on success."""

    handle: Handle
    entries: Entries


class Commit(Message, tag="commit"):
    """Make the push one new snapshot, atomically. Answered by ``committed``.

    ``label`` (plaintext targets) or ``sealed_label`` (encrypted targets, opaque): the snapshot's host, source
    directory, tags and warnings count (see neotwist.wire.label); a label of the other kind is refused."""

    handle: Handle
    label: SnapshotLabel | None = None
    sealed_label: SealedLabel = b""


class Committed(Message, tag="committed"):
    snapshot: SnapshotId
    time: float
    files: U64
    changed: U64
    deleted: U64
    new_chunks: U64
    new_bytes: U64
    stored_bytes: U64


class Abort(Message, tag="abort"):
    """Drop the push in progress; the target is as it was. Answered by ok."""

    handle: Handle


# --- pull --------------------------------------------------------------------------------------------------


class List(Message, tag="list"):
    """Entries at ``path`` (relative to the handle root) in ``snapshot`` (None: latest). Answered by one or
    more ``listing`` messages with this rid, the last with ``done``."""

    handle: Handle
    snapshot: SnapshotId | None
    path: PathText
    recursive: bool = True


class Listing(Message, tag="listing"):
    snapshot: SnapshotId
    entries: Entries
    done: bool


class Get(Message, tag="get"):
    """Fetch chunks of one file version. Every id must belong to that file. Answered by one ``chunk`` per id,
    in order, or an ``error``."""

    handle: Handle
    snapshot: SnapshotId
    path: PathText
    ids: ChunkIds


class FileIds(msgspec.Struct, array_like=True, frozen=True):
    """One file of a ``get_files``: its path and ids of its chunks."""

    path: PathText
    ids: ChunkIds


class GetFiles(Message, tag="get_files"):
    """Fetch chunks of several file versions of one snapshot in one request (a restore of many small files).
    Every id must belong to its file; the ids of all files together are at most ``MAX_IDS``. Answered by one
    ``chunk`` per id, file after file, in order, or an ``error``. Sent only to a server that lists the feature
    ``get_files``."""

    handle: Handle
    snapshot: SnapshotId
    files: Annotated[list[FileIds], msgspec.Meta(max_length=limits.MAX_GET_FILES)]


class ChunkReply(Message, tag="chunk"):
    id: ChunkId
    codec: Codec
    size: Annotated[int, msgspec.Meta(ge=0, le=limits.MAX_CHUNK)]
    data: ChunkData


# --- stash: snapshots, versions, deleted files, retention, check --------------------------------------------

class SnapshotRecord(msgspec.Struct, array_like=True, frozen=True):
    """One kept snapshot. ``root`` is the sub-path the push that made it covered ('' = the whole target), shown
    relative to the handle's root; ``new_bytes`` the stored bytes it added."""

    id: SnapshotId
    time: float
    files: U64
    dirs: U64
    changed: U64
    deleted: U64
    new_chunks: U64
    new_bytes: U64
    root: PathText
    delete_mode: bool
    label: SnapshotLabel | None = None  # plaintext targets; None: the snapshot has none (made before labels)
    sealed_label: SealedLabel = b""  # encrypted targets: as the client sealed it


class ListSnapshots(Message, tag="snapshots"):
    """The target's kept snapshots, oldest first. Answered by ``snapshot_list`` pages, the last with ``done``."""

    handle: Handle


class SnapshotList(Message, tag="snapshot_list"):
    snapshots: Annotated[list[SnapshotRecord], msgspec.Meta(max_length=limits.MAX_ENTRIES)]
    done: bool


class VersionRecord(msgspec.Struct, array_like=True, frozen=True):
    """One stored version of a path: present in the kept snapshots from ``snapshot`` up to (not including)
    ``until`` (None: still current). ``time`` is the server time of ``snapshot``."""

    snapshot: SnapshotId
    until: SnapshotId | None
    time: float
    kind: EntryKind
    mode: Annotated[int, msgspec.Meta(ge=0, le=0o7777)]
    mtime_ns: I64
    size: U64


class ListVersions(Message, tag="versions"):
    """Every stored version of ``path`` (relative to the handle root). Answered by ``version_list`` pages."""

    handle: Handle
    path: PathText


class VersionList(Message, tag="version_list"):
    versions: Annotated[list[VersionRecord], msgspec.Meta(max_length=limits.MAX_ENTRIES)]
    done: bool


class DeletedRecord(msgspec.Struct, array_like=True, frozen=True):
    """A path absent from the current view that a kept snapshot still holds: its newest version, the newest
    kept snapshot holding it (restore from there) and the snapshot (and time) that removed it."""

    path: PathText
    kind: EntryKind
    size: U64
    mtime_ns: I64
    last_snapshot: SnapshotId
    deleted_in: SnapshotId
    deleted_time: float


class ListDeleted(Message, tag="deleted"):
    """Deleted paths at or below ``path``. Answered by ``deleted_list`` pages, the last with ``done``."""

    handle: Handle
    path: PathText


class DeletedList(Message, tag="deleted_list"):
    entries: Annotated[list[DeletedRecord], msgspec.Meta(max_length=limits.MAX_ENTRIES)]
    done: bool


Count = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]


class Prune(Message, tag="prune"):
    """Apply a retention policy to the whole target (needs ``full`` on the target's root), then collect
    garbage. Counts are snapshots to keep per rule, ``keep_within`` seconds before the server's now; at least one
    rule must be given and the newest snapshot is always kept. With ``dry_run`` nothing changes. Answered by
    ``pruned``."""

    handle: Handle
    keep_last: Count = 0
    keep_hourly: Count = 0
    keep_daily: Count = 0
    keep_weekly: Count = 0
    keep_monthly: Count = 0
    keep_within: Annotated[float, msgspec.Meta(ge=0.0, le=1e12)] = 0.0
    dry_run: bool = False
    keep_yearly: Count = 0
    # --keep-tag, decided by the client (it reads the tags; the server cannot in an encrypted target): the ids it
    # keeps, and the newest id it listed (tagged_through > 0 switches the rule on; newer snapshots are kept)
    keep_tagged: Annotated[list[SnapshotId], msgspec.Meta(max_length=limits.MAX_PRUNE_LISTED)] = []
    tagged_through: U64 = 0


class PruneDecision(msgspec.Struct, array_like=True, frozen=True):
    """A snapshot the policy keeps or removes, with the rules that keep it (empty when removed)."""

    id: SnapshotId
    time: float
    keep: bool
    reasons: Annotated[list[Annotated[str, msgspec.Meta(max_length=16)]], msgspec.Meta(max_length=8)]


class Pruned(Message, tag="pruned"):
    """What prune decided (every snapshot; at most MAX_PRUNE_LISTED listed, ``truncated`` if more) and, unless
    ``dry_run``, what garbage collection reclaimed."""

    decisions: Annotated[list[PruneDecision], msgspec.Meta(max_length=limits.MAX_PRUNE_LISTED)]
    truncated: bool
    kept: U64
    removed: U64
    dry_run: bool
    chunks_removed: U64
    bytes_removed: U64
    disk_before: U64
    disk_after: U64


class Check(Message, tag="check"):
    """Check the target's index against its chunk store (and with ``verify_data`` every chunk against its id).
    Answered by ``check_progress`` messages, then one ``check_report``. With ``repair`` (needs the full right) the
    damaged chunks found are marked, so the next push of the intact file stores them again."""

    handle: Handle
    verify_data: bool = False
    repair: bool = False


class CheckProgress(Message, tag="check_progress"):
    done_bytes: U64
    total_bytes: U64


class DamagedFile(msgspec.Struct, array_like=True, frozen=True):
    """A file version that references a damaged or missing chunk, and the kept snapshots whose view holds it."""

    path: PathText
    snapshots: Annotated[list[SnapshotId], msgspec.Meta(max_length=limits.MAX_ENTRIES)]
    chunk: Annotated[str, msgspec.Meta(max_length=64)]
    why: Text
    marked: bool = False  # the server marked the chunk damaged: a push of the intact file heals it


class CheckReport(Message, tag="check_report"):
    """The result: ``ok`` when nothing is damaged. Lists are capped (``truncated`` when something was left out)."""

    ok: bool
    chunks_checked: U64
    bytes_checked: U64
    damaged_chunks: U64
    files: Annotated[list[DamagedFile], msgspec.Meta(max_length=limits.MAX_ENTRIES)]
    snapshots: Annotated[list[SnapshotId], msgspec.Meta(max_length=limits.MAX_PRUNE_LISTED)]
    problems: Annotated[list[Text], msgspec.Meta(max_length=256)]
    truncated: bool
    verified_data: bool
    repaired: bool = False  # the check marked what it found (asked with repair)
    marked_chunks: U64 = 0  # chunks it marked now
    lost_chunks: U64 = 0  # marked chunks kept snapshots refer to: lost until a push sends them again


# --- target removal, sub-accounts, grants, usage -----------------------------------------------------------

KeyLine = Annotated[str, msgspec.Meta(max_length=limits.MAX_KEY_LINE)]
KeyLines = Annotated[list[KeyLine], msgspec.Meta(max_length=limits.MAX_KEYS_PER_MESSAGE)]
KeyNames = Annotated[
    list[Annotated[str, msgspec.Meta(max_length=limits.MAX_NAME)]], msgspec.Meta(max_length=limits.MAX_KEYS_PER_MESSAGE)
]


class RemoveTarget(Message, tag="remove_target"):
    """Remove the handle's target with every snapshot and chunk. Needs the full right on the whole target (a
    handle opened at the target root); refused while a push runs on it. Answered by ``target_removed``; the
    handle is closed."""

    handle: Handle


class TargetRemoved(Message, tag="target_removed"):
    name: Name
    snapshots: U64
    stored_bytes: U64


class SubAccountAdd(Message, tag="sub_add"):
    """Create a sub-account of the logged-in account (its name must start with ``ACCOUNT.``), with a password
    and/or OpenSSH public key lines. Answered by ok."""

    name: Name
    password: Password | None
    keys: KeyLines = msgspec.field(default_factory=list)


class SubAccountSet(Message, tag="sub_set"):
    """Change one of the account's sub-accounts: a new password (or ``clear_password``), keys to add, keys to
    remove (by fingerprint or comment). Answered by ok."""

    name: Name
    password: Password | None = None
    clear_password: bool = False
    add_keys: KeyLines = msgspec.field(default_factory=list)
    remove_keys: KeyNames = msgspec.field(default_factory=list)


class SubAccountRemove(Message, tag="sub_remove"):
    """Delete one of the account's sub-accounts, with its keys and grants. Answered by ok."""

    name: Name


class GrantAccess(Message, tag="grant"):
    """Give one of the account's sub-accounts ``right`` on ``path`` of the account's target ``target``, reached
    as ``name`` (default: the target's name). Granting the same place under the same name again changes the
    right. Answered by ok."""

    grantee: Name
    target: Name
    path: PathText
    right: RightName
    name: Name | None = None


class Revoke(Message, tag="revoke"):
    """Remove the grant ``name`` of ``grantee`` on one of the account's targets. Answered by ok."""

    grantee: Name
    name: Name


class ListShares(Message, tag="shares"):
    """The account's sub-accounts, the grants it gave and the grants it holds. Answered by ``share_list``."""


class SubAccountInfo(msgspec.Struct, array_like=True, frozen=True):
    name: Name
    has_password: bool
    keys: U32
    created: float


class GrantInfo(msgspec.Struct, array_like=True, frozen=True):
    grantee: Name
    owner: Name
    target: Name
    path: PathText
    right: RightName
    name: Name
    created: float


class Shares(Message, tag="share_list"):
    sub_accounts: Annotated[list[SubAccountInfo], msgspec.Meta(max_length=100_000)]
    grants: Annotated[list[GrantInfo], msgspec.Meta(max_length=100_000)]


class GetUsage(Message, tag="usage"):
    """The logged-in account's usage against its quota. Answered by ``usage_info``."""


class TargetUsageInfo(msgspec.Struct, array_like=True, frozen=True):
    name: Name
    stored_bytes: U64
    file_versions: U64
    dir_versions: U64


class UsageInfo(Message, tag="usage_info"):
    """``used`` = ``stored_bytes`` + ``per_file`` x ``file_versions`` + ``per_dir`` x ``dir_versions``; ``quota``
    nil = unlimited. A sub-account owns nothing: ``charged_to`` names the account its pushes are charged to."""

    account: Name
    used: U64
    quota: U64 | None
    stored_bytes: U64
    file_versions: U64
    dir_versions: U64
    per_file: U64
    per_dir: U64
    targets: Annotated[list[TargetUsageInfo], msgspec.Meta(max_length=100_000)]
    charged_to: Annotated[str, msgspec.Meta(max_length=limits.MAX_NAME)] = ""


AnyMessage = (
    Hello
    | Welcome
    | Login
    | LoggedIn
    | Credit
    | Bye
    | Ping
    | Pong
    | Ok
    | Error
    | ListTargets
    | Targets
    | Open
    | Opened
    | Close
    | Have
    | Missing
    | Put
    | Sign
    | Signatures
    | PutDelta
    | PushBegin
    | PushEntries
    | PushDeleted
    | Commit
    | Committed
    | Abort
    | List
    | Listing
    | Get
    | GetFiles
    | ChunkReply
    | ListSnapshots
    | SnapshotList
    | ListVersions
    | VersionList
    | ListDeleted
    | DeletedList
    | Prune
    | Pruned
    | Check
    | CheckProgress
    | CheckReport
    # target removal, sub-accounts, grants, usage
    | RemoveTarget
    | TargetRemoved
    | SubAccountAdd
    | SubAccountSet
    | SubAccountRemove
    | GrantAccess
    | Revoke
    | ListShares
    | Shares
    | GetUsage
    | UsageInfo
)

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[AnyMessage] = msgspec.msgpack.Decoder(AnyMessage)  # type: ignore[arg-type,unused-ignore]


def encode(message: Message) -> bytes:
    """The frame body for ``message`` (without the length header)."""
    return _encoder.encode(message)


def decode(body: bytes | memoryview) -> Message:
    """Parse and validate one frame body. Raises ``msgspec.DecodeError`` / ``ValidationError`` on bad input."""
    return _decoder.decode(body)  # type: ignore[no-any-return,unused-ignore]
