"""The one place the repository's errors become the protocol's: each class has its wire code, and its message
goes to the client as the repository wrote it.

The repository (:mod:`neotwist.server.repository.errors`) and the chunk codec (:mod:`neotwist.codec`) know
nothing of the wire. Every call into them runs in a worker (:meth:`neotwist.server.context.ServerServices.run`),
whose failure goes through :func:`to_wire` before any handler sees it, and whatever a request's handler lets
escape passes it again on its way to the peer (:meth:`neotwist.server.session.ServerSession.message_received`,
:meth:`neotwist.server.context.RequestContext.admit`); the few handlers that say an error in the client's own
terms (its path, its name for the target) catch the typed error inside the worker.
"""

from __future__ import annotations

from twisted.python.failure import Failure

from neotwist import codec
from neotwist.server.repository import errors as repo
from neotwist.wire.errors import ErrorCode, NeoError

CODES: dict[type[Exception], ErrorCode] = {
    repo.ReadOnly: ErrorCode.PERMISSION_DENIED,
    repo.NoSuchSnapshot: ErrorCode.NO_SUCH_SNAPSHOT,
    repo.NoSuchPath: ErrorCode.NO_SUCH_PATH,
    repo.Conflict: ErrorCode.CONFLICT,
    repo.MissingChunks: ErrorCode.MISSING_CHUNKS,
    repo.Damaged: ErrorCode.DAMAGED,
    repo.StorageFailed: ErrorCode.STORAGE,
    repo.DiskFull: ErrorCode.DISK_FULL,
    repo.BadPush: ErrorCode.BAD_MESSAGE,
    repo.PushTooLarge: ErrorCode.LIMIT_EXCEEDED,
    repo.PushOutOfOrder: ErrorCode.PROTOCOL,
    repo.OverBudget: ErrorCode.QUOTA_EXCEEDED,
    codec.BadChunk: ErrorCode.BAD_MESSAGE,
    codec.ChunkTooLarge: ErrorCode.LIMIT_EXCEEDED,
    codec.ChunkMismatch: ErrorCode.CHUNK_MISMATCH,
    codec.SealingMismatch: ErrorCode.ENCRYPTION_MISMATCH,
    codec.ChunkForged: ErrorCode.DAMAGED,
}
"""Each error class's wire code; a subclass not listed takes its nearest listed base's."""


class RejectedChunk(NeoError):
    """A chunk of a batch of puts was refused: the error the client sees, answered to that chunk's own put
    (``index`` in the batch)."""

    def __init__(self, code: ErrorCode, message: str, index: int) -> None:
        super().__init__(code, message)
        self.index = index


def code_of(error: repo.RepositoryError | codec.CodecError) -> ErrorCode:
    """The wire code of a repository or codec error."""
    for kind in type(error).__mro__:
        code = CODES.get(kind)
        if code is not None:
            return code
    return ErrorCode.INTERNAL


def answered(failure: Failure) -> Failure:
    """``failure`` as the peer answers it (an errback): a repository or codec error becomes the wire's."""
    error = to_wire(failure.value)
    return failure if error is failure.value else Failure(error)


def to_wire(error: BaseException) -> BaseException:
    """The wire's error for a repository or codec error (same message, its class's code); anything else as
    it is (a NeoError already, or a bug the caller answers as ``internal``)."""
    if isinstance(error, repo.ChunkRejected):
        return RejectedChunk(code_of(error.error), error.message, error.index)
    if isinstance(error, (repo.RepositoryError, codec.CodecError)):
        return NeoError(code_of(error), error.message)
    return error
