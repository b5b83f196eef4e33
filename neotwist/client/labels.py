"""Snapshot labels on the client: what a push says about its snapshot, reading them back, and tag filters.

Tags follow restic: ``neo-push --tag a,b --tag c`` gives the snapshot the tags a, b and c. As a filter
(``neo-ls --snapshots --tag``, ``neo-prune --keep-tag``) each option is one group: a snapshot matches a group
when it has every tag of it, and matches the filter when it matches any group (``--tag a,b --tag c``: both a
and b, or c).

An encrypted target's labels are sealed here and opened here (:mod:`neotwist.crypto.label`); the server never
reads them, so ``--keep-tag`` is decided here too: the client names the snapshots to keep (see
``neotwist.server.repository.retention``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from neotwist.crypto import AuthenticationFailed
from neotwist.crypto import label as sealing
from neotwist.crypto.keys import TargetKeys
from neotwist.wire import label as wire_label
from neotwist.wire.label import LabelError, SnapshotLabel

TagFilter = list[frozenset[str]]


def split_tags(values: Iterable[str]) -> list[str]:
    """The tags of ``--tag`` options (each may hold several, comma-separated), in order, without repeats;
    LabelError for a tag that cannot be stored or for more than MAX_TAGS."""
    tags: list[str] = []
    for value in values:
        for tag in value.split(","):
            wire_label.check_tag(tag.strip())
            if tag.strip() not in tags:
                tags.append(tag.strip())
    if len(tags) > wire_label.MAX_TAGS:
        raise LabelError(f"a snapshot has at most {wire_label.MAX_TAGS} tags, not {len(tags)}")
    return tags


def tag_filter(values: Iterable[str]) -> TagFilter:
    """The filter ``--tag``/``--keep-tag`` options make (one group per option); LabelError for a bad tag."""
    return [frozenset(wire_label.check_tag(t.strip()) for t in value.split(",")) for value in values]


def matches(tags: Sequence[str], groups: TagFilter) -> bool:
    """True if ``tags`` has every tag of some group (an empty filter matches everything)."""
    return not groups or any(group.issubset(tags) for group in groups)


def push_label(source: str, tags: Sequence[str], host: str | None = None) -> SnapshotLabel:
    """The label a push of the local directory ``source`` sends (its warnings are added at commit). ``host``
    defaults to this machine's name. Text that cannot be stored as is (a path that is not UTF-8, a control
    character) is kept readable, escaped."""
    name = host if host is not None else socket.gethostname()
    path = _printable(os.fsencode(os.path.abspath(source)).decode("utf-8", "backslashreplace"))
    if len(path) > wire_label.MAX_SOURCE:  # informational: a deep source is still pushed, its label names it cut short
        path = path[: wire_label.MAX_SOURCE - 3] + "..."
    return SnapshotLabel(host=_printable(name)[: wire_label.MAX_HOST], source=path, tags=list(tags))


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def commit_fields(label: SnapshotLabel | None, warnings: int, keys: TargetKeys | None) -> dict[str, Any]:
    """The ``commit`` message's label fields: the label with its warnings count, sealed for an encrypted
    target (``keys``)."""
    full = SnapshotLabel(
        host=label.host if label else "", source=label.source if label else "", tags=label.tags if label else [],
        warnings=warnings,
    )  # fmt: skip
    if keys is not None:
        return {"sealed_label": sealing.seal(keys, full)}
    return {"label": full}


@dataclass(frozen=True)
class Labelled:
    """A snapshot record with its label read: ``label`` None when it has none (made before labels or by an
    older client); ``unreadable`` says why a sealed label could not be opened (then ``label`` is None)."""

    record: Any
    label: SnapshotLabel | None
    unreadable: str = ""

    @property
    def tags(self) -> list[str]:
        return self.label.tags if self.label is not None else []


def read_labels(records: Sequence[Any], keys: TargetKeys | None) -> list[Labelled]:
    """Each snapshot record with its label: plaintext as listed, sealed ones opened with ``keys``."""
    out = []
    for r in records:
        if keys is not None and r.label is not None:
            # an encrypted target's labels are sealed: a plaintext one was made up by the server
            out.append(Labelled(r, None, "a plaintext label in an encrypted target (not made by a client)"))
        elif r.sealed_label:
            if keys is None:
                out.append(Labelled(r, None, "sealed, and this target was not opened with its key"))
                continue
            try:
                out.append(Labelled(r, sealing.open_label(keys, r.sealed_label)))
            except AuthenticationFailed as e:
                out.append(Labelled(r, None, str(e)))
        else:
            out.append(Labelled(r, r.label))
    return out


def keep_tagged(labelled: Sequence[Labelled], groups: TagFilter) -> tuple[list[int], int]:
    """``--keep-tag``: (ids to keep, the newest id listed). A snapshot whose label cannot be read is kept (its
    tags are unknown, and prune never removes what it cannot judge)."""
    keep = [x.record.id for x in labelled if x.unreadable or matches(x.tags, groups)]
    through = max((x.record.id for x in labelled), default=0)
    return keep, through
