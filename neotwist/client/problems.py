"""What a push or pull could not store or restore, each named with its reason.

A backup loses nothing silently: every item left out, or kept only in part, becomes a :class:`Problem`. They are
printed as they happen, counted in ``--json`` as ``warnings`` (the number, as before) and listed as
``warnings_detail`` (``{path, reason}``), and make the run end with EXIT_PARTIAL instead of success.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

MAX_KEPT = 1000
"""Problems kept for the summary (all are counted and printed as they happen)."""


class Problem(msgspec.Struct, frozen=True):
    """One item not stored or restored (or stored incompletely): its local path and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def problems_json(problems: list[Problem], count: int | None = None) -> dict[str, Any]:
    """The ``--json`` keys: ``warnings`` (how many, also those beyond MAX_KEPT: the key's meaning since the
    first release) and ``warnings_detail`` (a list of ``{path, reason}``)."""
    return {
        "warnings": len(problems) if count is None else count,
        "warnings_detail": [{"path": shown(p.path), "reason": shown(p.reason)} for p in problems],
    }


def shown(path: str) -> str:
    """``path`` fit for a terminal and for JSON: bytes that are not UTF-8 (kept by the OS as surrogates)
    become ``\\xNN`` escapes."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def from_text(text: str) -> Problem:
    """A problem from a ``"path: reason"`` line (the form pull errors take)."""
    path, sep, reason = text.partition(": ")
    return Problem(path, reason) if sep else Problem("", text)
