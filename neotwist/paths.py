"""The one definition of a valid path inside a target, used by the server, the client and the repository.

Paths in the protocol are data, never file-system paths on the server: they are '/'-separated, relative, and
made only of ordinary components. Checking them in one place means '..' and friends cannot slip in through a
second, laxer parser.
"""

from __future__ import annotations

import re

from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, NeoError


class BadPath(NeoError):
    """A path the protocol does not allow (``bad_path``): the same refusal on both sides, so it is the wire's
    error itself, raised as it is by the repository, the server and the client alike."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.BAD_PATH, message)


class BadName(NeoError):
    """An account or target name the protocol does not allow (``bad_name``)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.BAD_NAME, message)


_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def _wire_text(raw: bytes) -> str:
    """The wire text of the path bytes ``raw``: see :func:`to_wire`."""
    return raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def to_wire(path: str) -> str:
    """The wire (and stored) text of a path held as Python holds file names (``os.fsdecode``: a byte that is
    not UTF-8 is a lone surrogate). A path that is UTF-8 without a backslash is sent as it is; any other has
    each backslash doubled and each byte that is not UTF-8 written ``\\xNN`` (two lowercase hex digits).
    Paths stored before this existed never held a backslash (they were refused), so they read unchanged."""
    if "\\" not in path:
        if path.isascii():  # O(1): most paths, without an encode
            return path
        try:
            path.encode("utf-8")
            return path
        except UnicodeEncodeError:
            pass
    return _wire_text(path.encode("utf-8", "surrogateescape"))


def wire_bytes(text: str) -> bytes:
    """The path bytes of wire text; ValueError unless ``text`` is exactly what :func:`to_wire` makes of them
    (one wire text per path: ``\\x41`` for ``A`` or a lone backslash are refused)."""
    if "\\" not in text:
        return text.encode("utf-8")
    parts = _ESCAPE.split(text)  # literal, escape, literal, escape, ..., literal
    out = bytearray()
    for i, part in enumerate(parts):
        if i % 2 == 0:
            if "\\" in part:
                raise ValueError("a backslash that starts no escape")
            out += part.encode("utf-8")
        else:
            out += b"\\" if part == "\\" else bytes([int(part[1:], 16)])
    raw = bytes(out)
    if _wire_text(raw) != text:
        raise ValueError("an escape of a byte that needs none")
    return raw


def from_wire(text: str) -> str:
    """The path of wire ``text`` as Python holds file names (the inverse of :func:`to_wire`); ValueError if
    it is not well formed."""
    if "\\" not in text:
        return text
    return wire_bytes(text).decode("utf-8", "surrogateescape")


def local_bytes(path: str) -> bytes:
    """The bytes of a path held as Python holds file names (whatever the locale says)."""
    return path.encode("utf-8", "surrogateescape")


def _check_bytes(raw: bytes, shown: str) -> None:
    if len(raw) > limits.MAX_PATH:
        raise BadPath(f"path longer than {limits.MAX_PATH} bytes")
    if b"\x00" in raw:
        raise BadPath(f"path contains NUL: {shown!r}")
    for part in raw.split(b"/"):
        if part in (b"", b".", b".."):
            raise BadPath(f"path must be relative with no '', '.' or '..' parts: {shown!r}")
        if len(part) > limits.MAX_NAME:
            raise BadPath(f"path component longer than {limits.MAX_NAME} bytes")


def check_path(path: str) -> str:
    """Return the wire text ``path`` if it is a valid relative target path ('' = the root), else raise
    BadPath.

    Refused: absolute paths, empty components ('a//b', trailing '/'), '.', '..', NUL, malformed escapes (see
    :func:`to_wire`), and anything over the byte limits (counted on the path's bytes, not its escapes).
    """
    if path == "":
        return path
    if len(path) > limits.MAX_WIRE_PATH:
        raise BadPath(f"path longer than {limits.MAX_PATH} bytes")
    try:
        raw = wire_bytes(path)
    except UnicodeEncodeError:
        raise BadPath("path is not valid UTF-8") from None
    except ValueError as e:
        raise BadPath(f"path has a malformed escape ({e}): {path!r}") from None
    _check_bytes(raw, path)
    return path


def check_local(path: str) -> str:
    """:func:`check_path` for a path held as Python holds file names (a name typed by the user, or decrypted):
    any bytes but NUL and '/' make a name; '', '.' and '..' components and the byte limits are refused."""
    if path:
        try:
            raw = local_bytes(path)
        except UnicodeEncodeError:
            raise BadPath(f"path is not a file name: {path!r}") from None
        _check_bytes(raw, path)
    return path


def check_name(name: str, what: str = "name") -> str:
    """Account and target names: one path-safe component of letters, digits, '.', '_', '-' (not leading '.')."""
    if (
        not name
        or len(name) > limits.MAX_NAME
        or name[0] == "."
        or not all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    ):
        raise BadName(f"{what} must be letters, digits, '.', '_' or '-': {name!r}")
    return name


def join(root: str, path: str) -> str:
    """``root`` and ``path`` joined, both already checked ('' is the root)."""
    if not root:
        return path
    if not path:
        return root
    return f"{root}/{path}"


def is_within(path: str, root: str) -> bool:
    """True when ``path`` is ``root`` or below it (component-wise: 'ab' is not within 'a')."""
    return root == "" or path == root or path.startswith(root + "/")


def relative_to(path: str, root: str) -> str:
    """``path`` made relative to ``root``; the caller has checked is_within."""
    if root == "":
        return path
    if path == root:
        return ""
    return path[len(root) + 1 :]
