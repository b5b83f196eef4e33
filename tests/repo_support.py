"""Helpers shared by the repository tests: storing chunks, making entries, committing, reading back."""

from __future__ import annotations

from pathlib import Path

import blake3
import zstandard

from neotwist.codec import CodecError, raw_bytes
from neotwist.server.errormap import to_wire
from neotwist.server.reads import listing_records
from neotwist.server.repository import Repository, Target
from neotwist.server.repository.errors import NoSuchPath, RepositoryError
from neotwist.wire import limits
from neotwist.wire.errors import NeoError
from neotwist.wire.messages import CODEC_RAW, CODEC_ZSTD, Entry

Refused = (RepositoryError, CodecError, NeoError)
"""What a repository call raises when it refuses: its own errors, the codec's, or the protocol's refusal of a
path (:mod:`neotwist.paths`)."""


def as_sent(error: BaseException) -> NeoError:
    """The wire error the session answers ``error`` with (through :func:`neotwist.server.errormap.to_wire`)."""
    sent = to_wire(error)
    assert isinstance(sent, NeoError), error
    return sent


def every_target(repo: Repository) -> list[Target]:
    """Every target of every account, each held (by account id, then name), as ``neo-admin check`` goes
    through them."""
    found = (repo.find_target(meta.account_id, meta.name) for meta in repo.target_metas())
    return [t for t in found if t is not None]


def open_targets(repo: Repository) -> tuple[int, int]:
    """(targets open, of which held): what the repository's bound and idle time leave open."""
    with repo._open_lock:
        entries = [*repo._open.values(), *repo._leaving]
        return len(entries), sum(1 for e in entries if e.holders > 0)


def file_chunks(target: Target, snapshot: int, path: str) -> bytes | None:
    """The concatenated chunk ids of the file at ``path`` in ``snapshot``, as its listing holds them; None if no
    file is there."""
    try:
        first = next(iter(target.list_entries(snapshot, path, False)), None)
    except NoSuchPath:
        return None
    return first.chunks if first is not None and first.path == path and first.kind == "f" else None


def store_chunk(target: Target, chunk_id: bytes, codec: int, size: int, data: bytes) -> bool:
    """Verify and store one chunk; True if it was new, False if already stored or pending (errors as
    :meth:`Target.store_chunks`)."""
    return target.store_chunks([(chunk_id, codec, size, data)]) == 1


def read_chunk(target: Target, chunk_id: bytes) -> tuple[int, int, bytes]:
    """(codec, raw size, stored bytes) of one chunk; Damaged if it is not stored or does not check out."""
    return target.read_located(chunk_id, target.locate([chunk_id]).get(chunk_id))


def put(target: Target, data: bytes, *, compress: bool = True) -> bytes:
    """Store ``data`` as one chunk of ``target``; return its id."""
    cid = blake3.blake3(data).digest()
    if compress:
        store_chunk(target, cid, CODEC_ZSTD, len(data), zstandard.ZstdCompressor().compress(data))
    else:
        store_chunk(target, cid, CODEC_RAW, len(data), data)
    return cid


def file_entry(path: str, *datas: bytes, target: Target | None = None, mtime: int = 1) -> Entry:
    """A file entry made of ``datas`` as chunks (stored in ``target`` when given)."""
    ids = b"".join(put(target, d) if target is not None else blake3.blake3(d).digest() for d in datas)
    return Entry(path, "f", 0o644, mtime, sum(len(d) for d in datas), ids)


def dir_entry(path: str) -> Entry:
    return Entry(path, "d", 0o755, 1, 0)


def listing(target: Target, snapshot: int, path: str = "", recursive: bool = True) -> list[Entry]:
    """The records a ``list`` of ``path`` answers with (a large file split into continuation records)."""
    return list(listing_records(target.list_entries(snapshot, path, recursive), ""))


def view(target: Target, snapshot: int, path: str = "") -> dict[str, Entry]:
    return {e.path: e for e in listing(target, snapshot, path)}


def commit(target: Target, entries: list[Entry], now: float, *, delete: bool = True) -> int:
    """One push of ``entries`` (relative to the target root); the new snapshot's id."""
    push = target.begin_push("", delete)
    push.add(entries)
    return push.commit(now).snapshot.id


def ids_of(entry: Entry) -> list[bytes]:
    return [entry.chunks[i : i + limits.ID_SIZE] for i in range(0, len(entry.chunks), limits.ID_SIZE)]


def read_file(target: Target, entry: Entry) -> bytes:
    """The content of a file entry read back chunk by chunk; each chunk's BLAKE3 must equal its id."""
    out = bytearray()
    for cid in ids_of(entry):
        codec, size, data = read_chunk(target, cid)
        plain = raw_bytes(codec, size, data)
        assert blake3.blake3(plain).digest() == cid
        out += plain
    return bytes(out)


def pack_bytes(target: Target) -> int:
    """Bytes on disk in the target's pack files."""
    return sum(p.stat().st_size for p in Path(target.directory / "packs").rglob("*.pack"))
