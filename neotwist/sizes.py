"""Byte sizes as people type them: ``100000000``, ``100MB``, ``1GiB``, ``4 KiB``, ``none`` (for "unlimited").

The original server's account file spelled quotas as plain byte counts (``SpaceQuota: 100000000``); those
still work. Decimal units (KB, MB, GB, TB, or K, M, G, T) are powers of 1000, binary ones (KiB, MiB, GiB, TiB)
powers of 1024, as in IEC 80000-13.
"""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "p": 1000**5,
    "pb": 1000**5,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "pib": 1024**5,
}

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")

UNLIMITED = ("none", "unlimited")


def parse_size(text: str, *, allow_unlimited: bool = False) -> int | None:
    """The number of bytes ``text`` means; None for ``none``/``unlimited`` when allowed. ValueError otherwise,
    with the accepted forms in the message."""
    if allow_unlimited and text.strip().lower() in UNLIMITED:
        return None
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        extra = " or 'none'" if allow_unlimited else ""
        raise ValueError(f"{text!r} is not a size: give bytes (100000000) or a unit (100MB, 1GiB, 512KiB){extra}")
    value = float(match.group(1)) * _UNITS[unit] if "." in match.group(1) else int(match.group(1)) * _UNITS[unit]
    return int(value)


def human_size(n: int) -> str:
    """Bytes for people, in the binary units every summary and progress bar uses: 512 B, 1.5 KiB, 3.2 GiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"
