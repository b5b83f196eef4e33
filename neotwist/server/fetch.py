"""Answering ``get`` and ``get_files``: chunks of stored file versions, streamed a read group at a time.

A ``get`` names one file and ids of its chunks; a ``get_files`` names several files of one snapshot, each with
ids of its chunks (a restore of many small files asks for a few hundred at once instead of one request per
file: one admission, one access check, one index query for the locations and one worker hop for the first
group, where per-file requests cost each of those per file). Both are answered the same way, one ``chunk``
per id in request order, by :func:`send_chunks`:

- the first worker hop checks the request (the session's ``check``: access, snapshot, that every id belongs to
  its file), locates every id in one query and reads the first group;
- each group is planned from the chunks' stored lengths (at most READ_GROUP_BYTES, or one chunk, which is
  never larger), read only once the reply queue is below the client's window and the connection's memory
  budget holds its bytes, and given back only once its replies have drained: a client that stops reading
  stops the reads, however many requests it has sent.

This module knows nothing of sessions or handles: the session passes what it checks and where work runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from neotwist.server.budget import ByteBudget
from neotwist.server.repository import Target
from neotwist.server.repository.errors import Damaged
from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, NeoError
from neotwist.wire.messages import ChunkReply, Codec, FileIds
from neotwist.wire.peer import Peer

log = Logger()

READ_GROUP_BYTES = 4 * 1024 * 1024
"""Stored bytes read per worker hop while answering; the session waits for the client's credit between groups,
so a request for thousands of chunks never sits in memory at once."""


@dataclass(frozen=True, slots=True)
class Wanted:
    """Chunks of one stored file: ``where`` in the target, ``named`` as the client knows it (for errors)."""

    where: str
    named: str
    ids: Sequence[bytes]


def check_get_files(files: Sequence[FileIds]) -> None:
    """The bounds of a ``get_files`` the decoder cannot see: its ids together, and a file naming none."""
    if not files:
        raise NeoError(ErrorCode.PROTOCOL, "get_files names no file")
    total = 0
    for f in files:
        if not f.ids:
            raise NeoError(ErrorCode.PROTOCOL, "get_files names a file without chunk ids")
        total += len(f.ids)
    if total > limits.MAX_IDS:
        raise NeoError(
            ErrorCode.LIMIT_EXCEEDED, f"get_files asks for {total} chunk ids; at most {limits.MAX_IDS} per request"
        )


async def send_chunks(
    peer: Peer,
    rid: int,
    target: Target,
    files: Sequence[Wanted],
    check: Callable[[], None],
    work: Callable[..., Deferred[Any]],
    memory: ByteBudget,
    target_name: str,
) -> None:
    """Send one ``chunk`` per id of ``files``, in order (see the module docstring). ``check`` runs blocking in
    the first worker hop and raises NeoError to refuse the request; ``work`` runs a blocking call in the
    account's turn; ``memory`` is the connection's budget for groups read and not yet drained."""
    flat: list[tuple[bytes, int]] = [(cid, k) for k, f in enumerate(files) for cid in f.ids]
    locations: dict[bytes, Any] = {}

    def length(i: int) -> int:
        """The stored bytes of a located chunk (0 for one not found: reading it fails as damaged)."""
        loc = locations.get(flat[i][0])
        return 0 if loc is None else int(loc[2])

    def read(start: int, end: int) -> list[ChunkReply]:
        out: list[ChunkReply] = []
        for cid, k in flat[start:end]:
            try:
                codec, size, data = target.read_located(cid, locations.get(cid))
            except Damaged as e:
                log.error(
                    "damaged chunk: target={target} path={path!r}: {why}",
                    target=target_name,
                    path=files[k].where,
                    why=e.message,
                )
                raise NeoError(ErrorCode.DAMAGED, e.message, path=files[k].named) from None
            out.append(ChunkReply(rid=rid, id=cid, codec=cast(Codec, codec), size=size, data=data))
        return out

    def plan(start: int) -> tuple[int, int]:
        """The end of the group starting at ``start`` and its stored bytes (at most READ_GROUP_BYTES, or one
        chunk, which is never larger)."""
        end, group = start, 0
        while end < len(flat) and (end == start or group + length(end) <= READ_GROUP_BYTES):
            group += length(end)
            end += 1
        return end, group

    def first() -> tuple[list[ChunkReply], int, int]:
        """Check and locate, then read the first group in the same worker hop (a small request is one hop)."""
        check()
        locations.update(target.locate([cid for cid, _ in flat]))
        end, group = plan(0)
        return read(0, end), end, group

    start = 0
    while start < len(flat):
        await peer.drain()
        if start == 0:  # planned in the worker: hold what any first group may take
            held = READ_GROUP_BYTES
            await memory.acquire(held)
            run = work(first)
        else:
            end, held = plan(start)
            await memory.acquire(held)
            run = work(read, start, end)
        try:
            if start == 0:
                replies, end, group = await run
                if group < held:  # give back what the first group did not take
                    memory.release(held - group)
                    held = group
            else:
                replies = await run
            with peer.batch():  # one write for the group: conch sends a packet (HMAC, padding) per write
                for reply in replies:
                    peer.send(reply)
            del replies
            await peer.drain()
        finally:
            memory.release(held)
        start = end
