"""A snapshot label as the repository stores it, and as a listing hands it back.

The ``snapshots.label`` column holds, for a plaintext target, the msgpack of the checked
:class:`~neotwist.wire.label.SnapshotLabel` the commit carried; for an encrypted target, the client's sealed
label, byte for byte (the server cannot read it). ``x''``: the push said nothing (a snapshot from before labels,
or an older client).

A commit of the wrong kind for its target is refused (``encryption_mismatch``): a plaintext label in an
encrypted target would hand the server what the client means to keep from it.
"""

from __future__ import annotations

from neotwist.wire import label as wire_label
from neotwist.wire.errors import ErrorCode, NeoError
from neotwist.wire.label import SnapshotLabel


def stored_label(encrypted: bool, label: SnapshotLabel | None, sealed: bytes) -> bytes:
    """What to store for a commit's ``label``/``sealed_label`` in a target that is ``encrypted`` or not; raises
    ENCRYPTION_MISMATCH for the wrong kind and BAD_ARGUMENT for a label that breaks a rule."""
    if encrypted:
        if label is not None:
            raise NeoError(
                ErrorCode.ENCRYPTION_MISMATCH, "an encrypted target takes a sealed snapshot label, not a plaintext one"
            )
        return sealed
    if sealed:
        raise NeoError(ErrorCode.ENCRYPTION_MISMATCH, "a plaintext target takes no sealed snapshot label")
    if label is None:
        return b""
    try:
        return wire_label.encode(wire_label.check_label(label))
    except wire_label.LabelError as e:
        raise NeoError(ErrorCode.BAD_ARGUMENT, f"snapshot label refused: {e}") from None


def listed_label(encrypted: bool, stored: bytes) -> tuple[SnapshotLabel | None, bytes]:
    """(label, sealed_label) for a ``snapshot_record`` from a stored label. A plaintext label that no longer
    decodes (a damaged row) lists as none rather than failing the whole listing."""
    if not stored:
        return None, b""
    if encrypted:
        return None, stored
    try:
        return wire_label.decode(stored), b""
    except wire_label.LabelError:
        return None, b""


def label_chars(label: SnapshotLabel | None, sealed: bytes) -> int:
    """An upper bound of a listed label's size in characters (a sealed byte counts as one), for paging."""
    if label is None:
        return len(sealed) // 4 + 1
    return len(label.host) + len(label.source) + sum(len(t) + 2 for t in label.tags) + 16
