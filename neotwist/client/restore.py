"""The parts of a pull beyond file contents: owners and xattrs, FIFOs and devices, hard links.

A listing is split by :func:`plan`: plain files are fetched and written as ever; FIFOs and device nodes (stored
as empty files with a special record) are made with ``mknod``; the later names of a hard-linked inode are
linked to its first name once every file is written (when the first name is outside what is pulled, the first
of the others that is pulled stands in for it). Owner and xattrs are applied by
:class:`~neotwist.client.metadata.Applier` through the ``fix`` hooks of :mod:`~neotwist.client.localfs`.
Everything that cannot be done is named with its reason. Runs in worker threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from neotwist.client.localfs import Fix, SafeDest, UnsafePath
from neotwist.client.metadata import Applier, BadExtra, Extra, decode
from neotwist.wire.messages import Entry


@dataclass
class Plan:
    """A listing sorted for a pull."""

    extras: dict[str, Extra] = field(default_factory=dict)  # path -> its record (items that have one)
    files: list[Entry] = field(default_factory=list)  # to fetch and write
    specials: list[Entry] = field(default_factory=list)
    links: list[tuple[str, Entry]] = field(default_factory=list)  # (name to link to, later name)
    problems: list[str] = field(default_factory=list)


DECODED_RECORDS = 4096
"""Distinct records :func:`plan` keeps decoded. Most items of a tree share one record (the same owner, no
xattrs): decoding each once was a third of planning a 50,000-file pull."""


def plan(entries: list[Entry]) -> Plan:
    out = Plan()
    extras = out.extras
    decoded: dict[bytes, Extra | BadExtra] = {}
    linked = False  # some item is a later name of a hard-linked inode
    for e in entries:
        meta = e.meta
        if not meta:
            continue
        x = decoded.get(meta)
        if x is None:
            try:
                x = decode(meta)
            except BadExtra as err:
                x = err
            if len(decoded) < DECODED_RECORDS:
                decoded[meta] = x
        if isinstance(x, BadExtra):
            out.problems.append(f"{e.path}: owner, xattrs and links not restored: {x}")
            continue
        extras[e.path] = x
        linked = linked or bool(x.first)
    # the first names that are pulled themselves (listings are sorted by path, not in the order of the walk)
    firsts = (
        {e.path for e in entries if e.kind == "f" and not (e.path in extras and extras[e.path].first)}
        if linked
        else set()
    )
    stand_in: dict[str, str] = {}  # a first name not pulled -> the first pulled name of its inode
    for e in entries:
        if e.kind != "f":
            continue
        x = extras.get(e.path)
        if x is not None and x.special and not x.first:
            out.specials.append(e)
            continue
        if x is not None and x.first:
            first = x.first if x.first in firsts else stand_in.get(x.first)
            if first is not None:
                out.links.append((first, e))
                continue
            stand_in[x.first] = e.path  # its first name is not pulled: this one is written in its place
            if x.special:
                out.specials.append(e)
                continue
        out.files.append(e)
    return out


@dataclass(slots=True)
class _Apply:
    """A :data:`~neotwist.client.localfs.Fix`: applies ``x`` to an open descriptor, naming what failed."""

    restorer: Restorer
    path: str
    x: Extra
    fresh: bool

    @property
    def keeps_mode(self) -> bool:
        """It cannot change the permission bits of a file without set-id bits: no xattrs (an ACL sets the group
        bits), only an owner (a chown clears set-id bits alone)."""
        return not self.x.xattrs

    def __call__(self, fd: int | str) -> None:
        r = self.restorer
        for problem in r.applier.apply_fd(fd, self.x, self.fresh):
            r.problems.append(f"{self.path}: {problem}")


class Restorer:
    """Applies records while a pull writes; collects what could not be applied (thread-safe appends)."""

    def __init__(self, dest: SafeDest, applier: Applier, laid: Plan) -> None:
        self.dest = dest
        self.applier = applier
        self.plan = laid
        self.problems: list[str] = []

    def fix(self, path: str, x: Extra | None, fresh: bool = True) -> Fix | None:
        """The hook that gives ``path`` its owner and xattrs once its descriptor is open (None: nothing to do)."""
        if x is None:
            return None
        return _Apply(self, path, x, fresh)

    def symlinks(self, links: list[Entry]) -> None:
        """Owners of restored symlinks (as root; they have no other settable metadata)."""
        if not self.applier.root:
            return
        extras = self.plan.extras
        for e in links:
            x = extras.get(e.path)
            if x is None or x.uid is None:
                continue
            try:
                with self.dest.parent(e.path, create=False) as (fd, name):
                    for problem in self.applier.apply_link_at(fd, name, x):
                        self.problems.append(f"{e.path}: {problem}")
            except (UnsafePath, OSError) as err:
                self.problems.append(f"{e.path}: owner not set: {err}")

    def specials(self, entries: list[Entry]) -> int:
        made = 0
        for e in entries:
            x = self.plan.extras[e.path]
            if x.special != "p" and not self.applier.root:
                kind = "character" if x.special == "c" else "block"
                self.problems.append(f"{e.path}: {kind} device not restored: only root can make device nodes")
                continue
            try:
                self.dest.make_special(e.path, x.special, x.rdev, e.mode, e.mtime_ns, self.fix(e.path, x))
                made += 1
            except (UnsafePath, OSError, KeyError) as err:
                self.problems.append(f"{e.path}: not restored: {err}")
        return made

    def hardlinks(self, links: list[tuple[str, Entry]]) -> int:
        made = 0
        for first, e in links:
            try:
                made += self.dest.make_hardlink(first, e.path)
            except (UnsafePath, OSError) as err:
                self.problems.append(f"{e.path}: hard link to {first} not made: {err}")
        return made
