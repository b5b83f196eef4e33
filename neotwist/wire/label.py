"""What a snapshot says about itself: the host and source directory of the push that made it, its tags, and
the warnings it completed with (a snapshot with warnings is *incomplete*: something was not stored).

The label travels in ``commit`` and comes back in ``snapshot_list``. A plaintext target gets it as a
:class:`SnapshotLabel` (the server checks and stores it); an encrypted target gets it sealed by the client
(``neotwist.crypto.label``), opaque to the server, so host names, paths and tags stay private there.

Every bound is declared on the struct, so msgspec enforces it while decoding a frame; :func:`check_label` adds
what a type cannot say (no control characters, no comma in a tag, no repeated tag). Lengths are characters.

Annotations are not postponed here, as in :mod:`neotwist.wire.messages` (which says why).
"""

import unicodedata
from typing import Annotated

import msgspec

MAX_TAGS = 64
"""Tags on one snapshot."""

MAX_TAG = 128
"""Characters in one tag."""

MAX_SOURCE = 4096
"""Characters of ``SnapshotLabel.source`` (fixed here, not ``limits.MAX_PATH``: the label is informational, and
a longer source would be refused by servers whose paths stop at 4096 bytes)."""

MAX_HOST = 255
"""Characters in the host name a label records."""

MAX_SEALED_LABEL = 64 * 1024
"""Bytes of an encrypted target's sealed label: the largest label the bounds above allow (about 50 KiB of
msgpack when every character takes 4 UTF-8 bytes) seals to less."""

Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TAG)]
Tags = Annotated[list[Tag], msgspec.Meta(max_length=MAX_TAGS)]
SealedLabel = Annotated[bytes, msgspec.Meta(max_length=MAX_SEALED_LABEL)]


class LabelError(ValueError):
    """A label (or a tag given on a command line) that cannot be stored; the message says why."""


class SnapshotLabel(msgspec.Struct, array_like=True, frozen=True):
    """``host``: the client's host name; ``source``: the local directory pushed (absolute, as the client names
    it); ``tags``: free-form words, in the order given, no repeats; ``warnings``: how many items the push could
    not store (or stored only in part), 0 for a complete snapshot. Empty strings mean "not recorded"."""

    host: Annotated[str, msgspec.Meta(max_length=MAX_HOST)] = ""
    source: Annotated[str, msgspec.Meta(max_length=MAX_SOURCE)] = ""
    tags: Tags = []
    warnings: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0

    @property
    def incomplete(self) -> bool:
        return self.warnings > 0


def _control(text: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text)


def check_tag(tag: str) -> str:
    """``tag`` if it can be stored; LabelError otherwise (empty, too long, a comma, a control character)."""
    if not tag or tag.strip() != tag:
        raise LabelError(f"tag {tag!r} is empty or starts or ends with a space")
    if len(tag) > MAX_TAG:
        raise LabelError(f"a tag has at most {MAX_TAG} characters, not {len(tag)}")
    if "," in tag:
        raise LabelError(f"tag {tag!r} has a comma (commas separate tags: --tag a,b gives two)")
    if _control(tag):
        raise LabelError(f"tag {tag!r} has a control character")
    return tag


def check_label(label: SnapshotLabel) -> SnapshotLabel:
    """``label`` if every field can be stored and shown; LabelError otherwise. The decoder already bounded
    lengths and counts."""
    for tag in label.tags:
        check_tag(tag)
    if len(set(label.tags)) != len(label.tags):
        raise LabelError("a tag is given twice")
    if len(label.tags) > MAX_TAGS:
        raise LabelError(f"a snapshot has at most {MAX_TAGS} tags, not {len(label.tags)}")
    if _control(label.host) or _control(label.source):
        raise LabelError("the host name or source path has a control character")
    if len(label.host) > MAX_HOST or len(label.source) > MAX_SOURCE:
        raise LabelError("the host name or source path is too long")
    return label


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SnapshotLabel)


def encode(label: SnapshotLabel) -> bytes:
    return _encoder.encode(label)


def decode(data: bytes) -> SnapshotLabel:
    """The label encoded in ``data``; LabelError if it is not one (or breaks a bound)."""
    try:
        return check_label(_decoder.decode(data))
    except msgspec.ValidationError as e:
        raise LabelError(f"not a snapshot label: {e}") from None
    except msgspec.DecodeError as e:
        raise LabelError(f"not a snapshot label: {e}") from None
