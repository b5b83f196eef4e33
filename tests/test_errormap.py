"""The repository's and the codec's errors reach the client as the same wire code and message as before they
had types of their own: one row per error class, and every class has a row."""

from __future__ import annotations

import errno

import pytest
from twisted.python.failure import Failure

from neotwist import codec
from neotwist.server import context
from neotwist.server.errormap import RejectedChunk, answered, to_wire
from neotwist.server.repository import errors, index
from neotwist.wire.errors import ErrorCode, NeoError

CID = bytes(range(32))

CASES: list[tuple[Exception, ErrorCode, str]] = [
    (
        errors.ReadOnly("cannot store chunks: target home is open read-only"),
        ErrorCode.PERMISSION_DENIED,
        "cannot store chunks: target home is open read-only",
    ),
    (errors.NoSuchSnapshot(5, "home"), ErrorCode.NO_SUCH_SNAPSHOT, "no snapshot 5 in target home"),
    (errors.NoSuchPath("a/b"), ErrorCode.NO_SUCH_PATH, "no stored version of 'a/b'"),
    (errors.NoSuchPath("a/b", 3), ErrorCode.NO_SUCH_PATH, "nothing at 'a/b' in snapshot 3"),
    (errors.Conflict("push again listing everything"), ErrorCode.CONFLICT, "push again listing everything"),
    (
        errors.LatestSnapshot(4),
        ErrorCode.CONFLICT,
        "snapshot 4 is the latest of the target and cannot be pruned",
    ),
    (errors.MissingChunks(3, CID), ErrorCode.MISSING_CHUNKS, f"3 chunks missing, e.g. {CID.hex()}"),
    (
        errors.DamagedChunks(2, CID),
        ErrorCode.MISSING_CHUNKS,
        f"2 chunks are damaged on the server and must be sent again, e.g. {CID.hex()}",
    ),
    (
        errors.ListEverything(),
        ErrorCode.MISSING_CHUNKS,
        "chunks are damaged on the server: list every file again",
    ),
    (errors.Damaged("chunk 00 is not stored"), ErrorCode.DAMAGED, "chunk 00 is not stored"),
    (errors.RecordDamaged("pack 1: record is truncated"), ErrorCode.DAMAGED, "pack 1: record is truncated"),
    (
        index.storage_error("write chunk data", OSError(errno.EIO, "Input/output error")),
        ErrorCode.STORAGE,
        "cannot write chunk data: Input/output error",
    ),
    (
        index.storage_error("write chunk data", OSError(errno.ENOSPC, "No space left on device")),
        ErrorCode.DISK_FULL,
        "cannot write chunk data: the server's disk is full",
    ),
    (
        errors.BadPush("a path is listed twice in one push"),
        ErrorCode.BAD_MESSAGE,
        "a path is listed twice in one push",
    ),
    (
        errors.PushTooLarge.entries(20_000_000),
        ErrorCode.LIMIT_EXCEEDED,
        "a push may list at most 20000000 entries",
    ),
    (errors.PushTooLarge.chunks("big", 6), ErrorCode.LIMIT_EXCEEDED, "'big' has over 6 chunks"),
    (
        errors.PushOutOfOrder("push is already committed or aborted"),
        ErrorCode.PROTOCOL,
        "push is already committed or aborted",
    ),
    (errors.OverBudget(10), ErrorCode.QUOTA_EXCEEDED, "10 new bytes are over the budget"),
    (codec.BadChunk("chunk id must be 32 bytes"), ErrorCode.BAD_MESSAGE, "chunk id must be 32 bytes"),
    (codec.ChunkTooLarge("chunk larger than 4 bytes"), ErrorCode.LIMIT_EXCEEDED, "chunk larger than 4 bytes"),
    (
        codec.ChunkMismatch("raw chunk is 4 bytes, declared 5"),
        ErrorCode.CHUNK_MISMATCH,
        "raw chunk is 4 bytes, declared 5",
    ),
    (
        codec.SealingMismatch("a plaintext target does not store sealed chunks"),
        ErrorCode.ENCRYPTION_MISMATCH,
        "a plaintext target does not store sealed chunks",
    ),
    (codec.ChunkForged("record failed authentication"), ErrorCode.DAMAGED, "record failed authentication"),
]


def _classes(base: type[Exception]) -> set[type[Exception]]:
    found = set()
    for sub in base.__subclasses__():
        found |= {sub, *_classes(sub)}
    return found


@pytest.mark.parametrize(("error", "code", "message"), CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_each_error_is_sent_with_its_code_and_message(error: Exception, code: ErrorCode, message: str) -> None:
    sent = to_wire(error)
    assert isinstance(sent, NeoError)
    assert (sent.code, sent.message) == (code, message)
    assert sent.path is None


def test_every_error_class_has_its_row() -> None:
    covered = {type(error) for error, _code, _message in CASES}
    every = (_classes(errors.RepositoryError) | _classes(codec.CodecError)) - {errors.ChunkRejected}
    assert every - covered == set()


def test_a_rejected_chunk_keeps_its_place_in_the_batch_and_the_codec_code() -> None:
    sent = to_wire(errors.ChunkRejected(2, codec.ChunkMismatch(f"chunk data does not hash to {CID.hex()}")))
    assert isinstance(sent, RejectedChunk)
    assert (sent.code, sent.message, sent.index) == (
        ErrorCode.CHUNK_MISMATCH,
        f"chunk data does not hash to {CID.hex()}",
        2,
    )


def test_wire_errors_and_bugs_pass_through() -> None:
    wire = NeoError(ErrorCode.BAD_PATH, "path contains NUL: 'a'")
    bug = KeyError("x")
    assert to_wire(wire) is wire
    assert to_wire(bug) is bug


def test_a_workers_repository_error_is_answered_as_the_wires() -> None:
    """The session boundary: what a worker raised is what the handlers (and the peer) see."""
    with pytest.raises(NeoError) as e:
        context._as_answered(Failure(errors.NoSuchSnapshot(9, "home")), "list")
    assert (e.value.code, e.value.message) == (ErrorCode.NO_SUCH_SNAPSHOT, "no snapshot 9 in target home")
    bug = Failure(KeyError("x"))
    assert context._as_answered(bug, "list") is bug


def test_a_failure_escaping_a_handler_is_answered_as_the_wires() -> None:
    mapped = answered(Failure(errors.LatestSnapshot(4)))
    assert isinstance(mapped.value, NeoError)
    assert (mapped.value.code, mapped.value.message) == (
        ErrorCode.CONFLICT,
        "snapshot 4 is the latest of the target and cannot be pruned",
    )
    wire = Failure(NeoError(ErrorCode.BAD_HANDLE, "no handle 3"))
    assert answered(wire) is wire
