"""The one definition of a valid path inside a target, used by the server, the client and the repository.

Paths in the protocol are data, never file-system paths on the server: they are '/'-separated, relative, and
made only of ordinary components. Checking them in one place means '..' and friends cannot slip in through a
second, laxer parser.
"""

from __future__ import annotations

from neotwist.wire import limits
from neotwist.wire.errors import ErrorCode, NeoError


def check_path(path: str) -> str:
    """Return ``path`` if it is a valid relative target path ('' = the root), else raise NeoError(BAD_PATH).

    Refused: absolute paths, empty components ('a//b', trailing '/'), '.', '..', NUL, backslashes (so a path
    means the same on every client), and anything over the byte limits.
    """
    if path == "":
        return path
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise NeoError(ErrorCode.BAD_PATH, "path is not valid UTF-8") from None
    if len(encoded) > limits.MAX_PATH:
        raise NeoError(ErrorCode.BAD_PATH, f"path longer than {limits.MAX_PATH} bytes")
    if "\x00" in path or "\\" in path:
        raise NeoError(ErrorCode.BAD_PATH, f"path contains NUL or backslash: {path!r}")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise NeoError(ErrorCode.BAD_PATH, f"path must be relative with no '', '.' or '..' parts: {path!r}")
        if len(part.encode("utf-8")) > limits.MAX_NAME:
            raise NeoError(ErrorCode.BAD_PATH, f"path component longer than {limits.MAX_NAME} bytes")
    return path


def check_name(name: str, what: str = "name") -> str:
    """Account and target names: one path-safe component of letters, digits, '.', '_', '-' (not leading '.')."""
    if not name or len(name) > limits.MAX_NAME or name[0] == "." or not all(
        c.isascii() and (c.isalnum() or c in "._-") for c in name
    ):
        raise NeoError(ErrorCode.BAD_NAME, f"{what} must be letters, digits, '.', '_' or '-': {name!r}")
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
