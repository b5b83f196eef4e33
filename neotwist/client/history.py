"""Reading a target's history for the browsing commands: neo-diff, neo-find, neo-cat and neo-mount.

One read handle (:class:`History`) gives the target's snapshots, each snapshot's tree in plaintext (an
encrypted target's names and metadata decrypted and authenticated, as neo-pull does), and the verified bytes
of one file version, fetched a bounded segment at a time. It composes the requests neo-ls and neo-pull
already make (``snapshots``, ``list``, ``get``); nothing here is new to the server.

This is the browsing commands' one coupling to the client internals (opening with the key, listing,
decrypting, the chunk codec), so that they can move onto another client API by changing this module alone.

Snapshots are named as the other commands name them (:func:`parse_spec`): an id as ``neo-ls --snapshots``
shows it, ``latest``, ``latest~N`` (N snapshots before the latest), or a TIME as ``--at`` takes it.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.threads import deferToThread

from neotwist.client import stash
from neotwist.client.encryption import Crypt, KeySource
from neotwist.client.metadata import BadExtra, Extra, decode
from neotwist.client.pins import TargetPin
from neotwist.client.remote import UsageError
from neotwist.client.remotetarget import Access, RemoteTarget
from neotwist.client.timespec import AtTime, TimeSpecError, parse_at
from neotwist.codec import PLAIN, ChunkCodec, CodecError
from neotwist.wire import limits
from neotwist.wire.messages import ChunkReply, Close, Entry, Get, Message, Opened, SnapshotRecord
from neotwist.wire.peer import Peer

ID = limits.ID_SIZE

SEGMENT_IDS = 256
"""Chunk ids asked for by one ``get`` (as neo-pull asks)."""
SEGMENT_BYTES = 8 * 1024 * 1024
"""...and fewer when the file's listed size says its chunks are bigger: a segment holds about this much."""
SEGMENT_SLACK = 2 * limits.MAX_CHUNK
"""A segment may arrive this much larger than its share of the file's listed size (chunks vary in length);
a server that sends more is refused: it decides nothing about how much a client holds."""

SPEC_HELP = "ID as neo-ls --snapshots shows it, 'latest', 'latest~N' (N before the latest), or a TIME as --at takes"


class BrowseError(stash.StashError):
    """A browsing command could not do what was asked (one line for the terminal, exit 1)."""


@dataclass(frozen=True)
class SnapSpec:
    """A snapshot as the command line names it: an id, ``latest~back``, or the newest at or before ``at``."""

    text: str
    id: int | None = None
    back: int | None = None
    at: AtTime | None = None


_LATEST = re.compile(r"latest(?:~(\d{1,9}))?")


def parse_spec(text: str, now: float | None = None) -> SnapSpec:
    """The :class:`SnapSpec` of ``text``; UsageError (exit 2) if it names no snapshot."""
    t = text.strip()
    if t.isdigit():
        return SnapSpec(t, id=int(t))
    m = _LATEST.fullmatch(t)
    if m is not None:
        return SnapSpec(t, back=int(m.group(1) or 0))
    try:
        return SnapSpec(t, at=parse_at(t, time.time() if now is None else now))
    except TimeSpecError as e:
        raise UsageError(f"{text!r} names no snapshot: give an {SPEC_HELP} ({e})") from None


def resolve(records: list[SnapshotRecord], spec: SnapSpec) -> SnapshotRecord:
    """The kept snapshot ``spec`` names; BrowseError names what there is when it names none."""
    if not records:
        raise BrowseError("the target has no snapshot yet; push to it first")
    if spec.back is not None:
        if spec.back >= len(records):
            raise BrowseError(f"{spec.text}: the target keeps only {len(records)} snapshot(s)")
        return records[-1 - spec.back]
    wanted = stash.resolve_snapshot(records, spec.at, spec.id)
    return next(r for r in records if r.id == wanted)


@dataclass
class Tree:
    """One snapshot's entries in plaintext, by path relative to the handle root ('' is the root itself).

    ``meta`` of each entry is the :class:`~neotwist.client.metadata.Extra` record (owner, xattrs, special
    files) in both kinds of target. ``errors``: entries an encrypted listing could not authenticate (left
    out, each named)."""

    snapshot: int
    entries: dict[str, Entry]
    remote: dict[str, str] | None = None  # plaintext path -> the path the server knows (encrypted targets)
    errors: list[str] = field(default_factory=list)

    def server_path(self, path: str) -> str:
        return path if self.remote is None else self.remote[path]


def extra_of(entry: Entry) -> Extra | None:
    """The owner, xattrs and special-file record of ``entry`` (None when it has none or it does not decode)."""
    if not entry.meta:
        return None
    try:
        return decode(entry.meta)
    except BadExtra:
        return None


def kind_of(entry: Entry, extra: Extra | None = None) -> str:
    """'f', 'd', 'l', or for special files 'p' (FIFO), 'c' / 'b' (devices)."""
    if entry.kind == "f":
        x = extra if extra is not None else extra_of(entry)
        if x is not None and x.special:
            return x.special
    return entry.kind


class History:
    """A read handle on one target (at REMOTE's sub-path) for browsing its snapshots."""

    def __init__(self, peer: Peer, opened: Opened, crypt: Crypt | None) -> None:
        self.peer = peer
        self.opened = opened
        self.crypt = crypt
        self.codec: ChunkCodec = ChunkCodec(crypt.sealer) if crypt is not None else PLAIN
        self._snapshots: list[SnapshotRecord] | None = None
        self._known: dict[tuple[Any, ...], Entry] = {}  # server record -> plaintext entry, of the last listing

    @property
    def encrypted(self) -> bool:
        return self.crypt is not None

    async def snapshots(self, refresh: bool = False) -> list[SnapshotRecord]:
        """The target's kept snapshots, oldest first (asked once per run unless ``refresh``)."""
        if self._snapshots is None or refresh:
            self._snapshots = await stash.snapshots(self.peer, self.opened.handle)
        return self._snapshots

    async def resolve(self, spec: SnapSpec) -> SnapshotRecord:
        return resolve(await self.snapshots(), spec)

    def tags(self, records: list[SnapshotRecord]) -> dict[int, list[str]]:
        """Each snapshot's tags (snapshots whose label is missing or cannot be read have none)."""
        from neotwist.client.labels import read_labels

        keys = self.crypt.keys if self.crypt is not None else None
        return {x.record.id: x.tags for x in read_labels(records, keys) if not x.unreadable}

    def tagged(self, records: list[SnapshotRecord], groups: list[frozenset[str]]) -> list[SnapshotRecord]:
        """The records whose tags match ``--tag`` groups (labels.matches); an encrypted target's sealed labels
        are opened with its key. A label that cannot be read matches no group."""
        from neotwist.client.labels import matches, read_labels

        keys = self.crypt.keys if self.crypt is not None else None
        return [x.record for x in read_labels(records, keys) if not x.unreadable and matches(x.tags, groups)]

    async def tree(self, snapshot: int) -> Tree:
        """Every entry of ``snapshot`` below the handle root, in plaintext (decrypted in a worker thread)."""
        got, entries = await stash.entries(self.peer, self.opened.handle, snapshot, "", True)
        if self.crypt is None:
            return Tree(got, {e.path: e for e in entries})
        return await deferToThread(self._decrypted, got, entries)

    def _decrypted(self, snapshot: int, entries: list[Entry]) -> Tree:
        """The plaintext tree of an encrypted listing. Records the previous listing held too (same encrypted
        path, kind, chunks and sealed metadata: an unchanged file seals the same way) are taken from it, so
        that browsing many snapshots decrypts mostly what changed. That is sound because decryption is a
        function of the record alone (a name is bound to its encrypted path, hence to its parents'); what is
        new is decrypted with its ancestors, in listing order, to name it."""
        assert self.crypt is not None
        known = self._known
        key: dict[str, tuple[Any, ...]] = {e.path: (e.path, e.kind, e.chunks, e.meta, e.link) for e in entries}
        need = {path for path, k in key.items() if k not in known}
        fresh: dict[str, Entry] = {}
        errors: list[str] = []
        if need:
            wanted = set(need)
            for path in need:
                while path:
                    path = path.rpartition("/")[0]
                    if path in wanted:
                        break
                    wanted.add(path)
            decrypted = self.crypt.decrypt_listing([e for e in entries if e.path in wanted])
            errors = decrypted.errors
            fresh = {decrypted.remote[e.path]: e for e in decrypted.entries}
        tree = Tree(snapshot, {}, {}, errors)
        assert tree.remote is not None
        memo: dict[tuple[Any, ...], Entry] = {}
        for e in entries:
            k = key[e.path]
            plain = known.get(k) if e.path not in need else fresh.get(e.path)
            if plain is None:
                continue  # not authenticated: named in ``errors``
            tree.entries[plain.path] = plain
            tree.remote[plain.path] = e.path
            memo[k] = plain
        self._known = memo  # the last listing only: memory follows one tree
        return tree

    async def fetch(self, tree: Tree, path: str, ids: list[bytes], expected: int, name: str = "") -> list[ChunkReply]:
        """The chunks ``ids`` of the file at ``path`` in ``tree``, undecoded, in order. ``expected``: the bytes
        they should take, from the file's listed size; a server that sends more than that plus
        :data:`SEGMENT_SLACK` is refused (BrowseError), so what a segment holds is bounded. ``name``: the file
        as messages call it (default ``path``)."""
        if not ids:
            return []
        got: list[ChunkReply] = []
        cap = expected + SEGMENT_SLACK
        arrived = 0

        def more(message: Message) -> bool:
            nonlocal arrived
            if not isinstance(message, ChunkReply):
                raise BrowseError(f"the server answered get with {type(message).__name__}")
            if message.id != ids[len(got)]:
                raise BrowseError(f"{name or path}: the server sent chunks out of order")
            arrived += len(message.data)
            if arrived > cap:
                raise BrowseError(f"{name or path}: the server sent far more data than its listed size; refused")
            got.append(message)
            return len(got) < len(ids)

        await self.peer.request(
            Get(rid=0, handle=self.opened.handle, snapshot=tree.snapshot, path=tree.server_path(path), ids=ids),
            more=more,
        )
        return got

    def decode(self, path: str, reply: ChunkReply) -> bytes:
        """The plaintext of a fetched chunk, checked against its id (and its seal); BrowseError names the file
        when it is damaged. Thread-safe (call it off the reactor)."""
        try:
            return self.codec.decode(reply.id, reply.codec, reply.size, reply.data)
        except CodecError as e:
            raise BrowseError(f"{path}: a chunk of it is damaged or forged: {e.message}") from None

    def _decode_all(self, path: str, replies: list[ChunkReply]) -> list[bytes]:
        return [self.decode(path, r) for r in replies]

    async def stream(self, tree: Tree, entry: Entry, name: str = "") -> AsyncIterator[list[bytes]]:
        """The verified bytes of the regular file ``entry`` of ``tree``, a segment at a time (a list of chunk
        plaintexts), the next segment fetched while the caller handles this one: at most two segments are
        held. BrowseError when the bytes do not add up to the listed size. ``name``: the file as messages call
        it (default its path in the tree)."""
        from twisted.internet.defer import ensureDeferred

        name = name or entry.path
        ids = [entry.chunks[i : i + ID] for i in range(0, len(entry.chunks), ID)]
        n = max(1, len(ids))
        per = max(1, min(SEGMENT_IDS, SEGMENT_BYTES * n // max(1, entry.size)))
        segments = [ids[i : i + per] for i in range(0, len(ids), per)]

        def share(segment: list[bytes]) -> int:
            return entry.size * len(segment) // n + 1

        total = 0
        pending: Any = None
        try:
            for k in range(len(segments)):
                replies = await (
                    pending or ensureDeferred(self.fetch(tree, entry.path, segments[k], share(segments[k]), name))
                )
                pending = None
                if k + 1 < len(segments):
                    pending = ensureDeferred(
                        self.fetch(tree, entry.path, segments[k + 1], share(segments[k + 1]), name)
                    )
                raws = await deferToThread(self._decode_all, name, replies)
                del replies
                total += sum(len(r) for r in raws)
                if total > entry.size:
                    raise BrowseError(f"{name}: its chunks hold more bytes than its listed size ({entry.size})")
                yield raws
        finally:
            if pending is not None:  # the caller stopped early, or this segment failed: nobody waits for it
                pending.addErrback(lambda _f: None)
        if total != entry.size:
            raise BrowseError(f"{name}: its chunks hold {total} bytes, not its listed size ({entry.size})")

    async def close(self) -> None:
        await self.peer.request(Close(rid=0, handle=self.opened.handle))


async def open_history(
    peer: Peer, target: str, subpath: str, keys: KeySource, grant_root: str, pin: TargetPin, require: bool
) -> History:
    """Open ``target`` at ``subpath`` for reading as neo-ls and neo-pull do (the key and pin checks of an
    encrypted target included); BrowseError when it has no snapshot yet."""
    remote = await RemoteTarget.open_read(peer, target, subpath, Access(keys, pin, require, grant_root.strip("/")))
    opened, crypt = remote.opened, remote.crypt
    if not opened.exists or opened.latest is None:
        raise BrowseError(f"target {target} has no snapshot yet; push to it first")
    return History(peer, opened, crypt)


async def open_for_command(peer: Peer, args: Any, remote: Any) -> History:
    """:func:`open_history` with the key options of a command line (see clibase.add_key_options)."""
    from neotwist.client.clibase import key_source, target_pin

    return await open_history(
        peer, remote.target, remote.path, key_source(args), args.grant_root, target_pin(remote), args.require_encryption
    )
