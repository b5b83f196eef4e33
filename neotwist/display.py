"""Names and messages made safe for a terminal, the way ``ls -b`` shows file names.

Paths, target and account names, link targets and the server's error messages come from other people (an
append grantee, a server) and may hold terminal controls: ESC sequences that erase a line or set the window
title, a CR that overwrites what was printed, bidirectional overrides that reverse text. Human-readable output
shows each such character as an escape instead: ``\\n``, ``\\r``, ``\\t`` and the other C escapes, else the
octal of its UTF-8 bytes (``\\033``, ``\\342\\200\\256``); a byte that was not UTF-8 (kept as a lone surrogate)
shows as its own octal. ``--json`` output keeps the exact names (JSON escapes them itself; a name that is not
UTF-8 comes with its bytes in base64 beside it: :func:`json_name`).

:func:`shown` is for a name in a table or message: it also doubles a backslash, so every shown name reads
back unambiguously. :class:`SafeText` guards a whole output stream (the commands wrap stdout and stderr in
it): it escapes controls but leaves newlines, tabs and backslashes alone, so that messages keep their lines
and JSON stays JSON.
"""

from __future__ import annotations

import re
from typing import IO, Any

_CONTROLS = (
    "\x00-\x08\x0b-\x1f\x7f-\x9f"  # C0 but newline and tab, DEL, C1
    "\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidirectional marks, embeddings, overrides, isolates
    "\u2028\u2029"  # line and paragraph separators
    "\ud800-\udfff"  # lone surrogates: bytes of a name that was not UTF-8
)
_IN_STREAM = re.compile(f"[{_CONTROLS}]")
_IN_NAME = re.compile(f"[{_CONTROLS}\t\n\\\\]")
_NAMED = {"\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v", "\f": "\\f", "\r": "\\r", "\\": "\\\\"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: one undecodable byte
        return f"\\{code - 0xDC00:03o}"
    data = ch.encode("utf-8", "surrogatepass")
    return "".join(f"\\{byte:03o}" for byte in data)


def shown(name: str) -> str:
    """``name`` as ``ls -b`` would show it: controls and backslashes escaped, everything else as is."""
    if name.isprintable() and "\\" not in name:
        return name  # the common case, without a regex pass
    return _IN_NAME.sub(_escape, name)


def json_name(key: str, name: str) -> dict[str, str]:
    """``{key: name}`` for ``--json``; for a name that is not UTF-8 (held with lone surrogates), which JSON
    text cannot carry, ``key`` has it with each such byte as ``\\xNN`` and ``key + "_b64"`` its exact bytes
    in base64 (as borg does): a reader that needs the bytes takes ``_b64`` when it is there."""
    try:
        name.encode("utf-8")
        return {key: name}
    except UnicodeEncodeError:
        pass
    import base64

    raw = name.encode("utf-8", "surrogateescape")
    return {key: raw.decode("utf-8", "backslashreplace"), key + "_b64": base64.b64encode(raw).decode("ascii")}


def safe_text(text: str) -> str:
    """``text`` with terminal controls escaped; newlines, tabs and backslashes kept."""
    if text.isascii() and text.isprintable():
        return text
    return _IN_STREAM.sub(_escape, text)


class SafeText:
    """A text stream that writes through :func:`safe_text` to ``stream``; everything else is ``stream``'s."""

    def __init__(self, stream: IO[str]) -> None:
        self.raw = stream

    def write(self, text: str) -> int:
        self.raw.write(safe_text(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def guard_output() -> None:
    """Wrap ``sys.stdout`` and ``sys.stderr`` in :class:`SafeText` (once)."""
    import sys

    if not isinstance(sys.stdout, SafeText):
        sys.stdout = SafeText(sys.stdout)
    if not isinstance(sys.stderr, SafeText):
        sys.stderr = SafeText(sys.stderr)


def write_json(value: Any) -> None:
    """Print ``value`` as one line of JSON on standard output, past the guard: JSON escapes what it must, and
    the exact names are the point of ``--json``."""
    import msgspec

    try:
        text = msgspec.json.encode(value)
    except UnicodeEncodeError:  # a name that is not UTF-8 somewhere json_name was not used: escaped, not a crash
        text = msgspec.json.encode(_escaped(value))
    raw_stdout().write(text.decode("utf-8") + "\n")


def _escaped(value: Any) -> Any:
    """``value`` with every string JSON cannot carry (lone surrogates) escaped as :func:`json_name` does."""
    if isinstance(value, str):
        try:
            raw = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = value.encode("utf-8", "surrogatepass")
        return raw.decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escaped(v) for v in value]
    return value


def raw_stdout() -> Any:
    """Standard output without the guard: for JSON."""
    import sys

    stream = sys.stdout
    return stream.raw if isinstance(stream, SafeText) else stream


def raw_stderr() -> Any:
    """Standard error without the guard: for progress bars, whose CRs and ESC sequences are ours."""
    import sys

    stream = sys.stderr
    return stream.raw if isinstance(stream, SafeText) else stream
