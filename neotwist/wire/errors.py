"""Error codes carried by ``error`` messages, and the exceptions that map to them."""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Stable, documented error codes. Clients switch on these, never on message text."""

    BAD_FRAME = "bad_frame"  # frame length 0 or over MAX_FRAME; fatal
    BAD_MESSAGE = "bad_message"  # body not msgpack, unknown type, wrong fields, value out of range; fatal
    UNSUPPORTED_VERSION = "unsupported_version"  # hello with a version this server does not speak; fatal
    FLOW_CONTROL = "flow_control"  # peer sent more bytes than the credit it was granted; fatal
    LIMIT_EXCEEDED = "limit_exceeded"  # too many handles / requests in flight / entries; fatal
    PROTOCOL = "protocol"  # message out of order (e.g. request before hello, commit without push_begin)
    BAD_ARGUMENT = "bad_argument"  # well-formed request whose values cannot be acted on (prune with no rule)
    AUTH_REQUIRED = "auth_required"  # TLS request before login
    AUTH_FAILED = "auth_failed"  # wrong account or password (never says which)
    NO_SUCH_TARGET = "no_such_target"
    NO_SUCH_SNAPSHOT = "no_such_snapshot"
    NO_SUCH_PATH = "no_such_path"
    BAD_HANDLE = "bad_handle"
    BAD_PATH = "bad_path"  # absolute, '..', '.', empty component, NUL, over MAX_PATH, not UTF-8
    BAD_NAME = "bad_name"  # account or target name not allowed
    PERMISSION_DENIED = "permission_denied"
    CHUNK_MISMATCH = "chunk_mismatch"  # uploaded chunk data does not hash to its id; fatal for the push
    CHUNK_NOT_IN_FILE = "chunk_not_in_file"  # get asked for an id the named file does not reference
    MISSING_CHUNKS = "missing_chunks"  # commit references chunks the server does not hold
    ENCRYPTION_MISMATCH = "encryption_mismatch"  # plaintext push into encrypted target or the reverse
    QUOTA_EXCEEDED = "quota_exceeded"
    CONFLICT = "conflict"
    DAMAGED = "damaged"  # stored data failed its check
    STORAGE = "storage"  # the server could not store data (I/O error, index locked); nothing was committed
    DISK_FULL = "disk_full"  # the server's disk is full (or below its free-space reserve); nothing was committed
    INTERNAL = "internal"  # a bug; the server log has the traceback
    # issue 5: rights, quotas, throttling
    THROTTLED = "throttled"  # too many failed logins for this account or from this address: wait and retry
    UNAVAILABLE = "unavailable"  # the server is short of a resource (file descriptors) right now: try again later


FATAL_CODES = frozenset(
    {
        ErrorCode.BAD_FRAME,
        ErrorCode.BAD_MESSAGE,
        ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.FLOW_CONTROL,
        ErrorCode.LIMIT_EXCEEDED,
    }
)
"""After sending one of these the sender closes the connection."""


class NeoError(Exception):
    """An error with a protocol code. Raised by handlers; sent to the peer as an ``error`` message.

    ``path``: the path the error is about, as the sender names it, when there is one (a damaged file, say);
    ``reason`` is then the message without it, and ``message`` both, as a person reads them. A receiver takes
    the path and the reason from their fields, never by cutting the message apart."""

    def __init__(self, code: ErrorCode, message: str, path: str | None = None) -> None:
        self.code = code
        self.path = path
        self.reason = message
        self.message = message if path is None else f"{path}: {message}"
        super().__init__(f"{code}: {self.message}")

    @property
    def fatal(self) -> bool:
        return self.code in FATAL_CODES


class ProtocolViolation(NeoError):
    """The peer broke the framing or message rules: reply with an error, then close the connection."""


class RemoteError(NeoError):
    """The peer answered a request with an ``error`` message."""
