"""What a file version carries beyond its mode and mtime: owner, xattrs and ACLs, hard links, special files.

Captured by the walk of a push (from the ``lstat`` it does anyway, plus one ``llistxattr``) and stored per
version in ``Entry.meta`` (plaintext targets) or inside the sealed attributes (encrypted targets), as one
:class:`Extra` record::

    extra = 0x01 (format version) | msgpack map {"u": uid, "g": gid, "U": user name, "G": group name,
             "x": [[xattr name, value], ...], "h": first path of the inode, "s": "p"|"c"|"b", "r": rdev,
             "l": a symlink's exact target}

``h`` is a path in its wire text (:func:`neotwist.paths.to_wire`). ``l`` is only there for a symlink whose
target is not UTF-8: the entry's own link text then shows it escaped (``\\xNN``), and ``l`` has its bytes.

Keys with their default value are left out; an empty record is not stored at all (snapshots written before
this record existed have none and restore as before). Unknown keys are ignored, so later versions can add some.

POSIX ACLs are the ``system.posix_acl_access`` / ``system.posix_acl_default`` xattrs and travel as such (as
``rsync -A`` and ``tar --acls`` keep them), byte for byte.

A pull applies them with :class:`Applier`: ownership by name (falling back to the number when the name is
unknown here), or by number with ``--numeric-ids``, and only when running as root (otherwise it is kept in
the snapshot and reported once); ``security.*`` and ``trusted.*`` xattrs only as root.
"""

from __future__ import annotations

import errno
import functools
import grp
import os
import pwd
import stat
from collections.abc import Callable
from typing import Annotated

import msgspec

from neotwist import paths

EXTRA_VERSION = 1
MAX_XATTR_BYTES = 32 * 1024
"""Xattr names and values stored per item at most (the whole record must fit in MAX_META, sealed or not)."""
ROOT_ONLY = ("security.", "trusted.")


class Extra(msgspec.Struct, omit_defaults=True, frozen=True, rename={
    "uid": "u", "gid": "g", "user": "U", "group": "G", "xattrs": "x", "first": "h", "special": "s", "rdev": "r",
    "link": "l",
}):  # fmt: skip
    """One version's metadata beyond mode and mtime (see the module docstring for the format)."""

    uid: int | None = None
    gid: int | None = None
    user: str = ""
    group: str = ""
    xattrs: list[tuple[str, bytes]] = []  # msgspec copies mutable defaults
    first: str = ""  # a hard link: the path (from the push root) of the first name of its inode in this push
    special: Annotated[str, msgspec.Meta(max_length=1)] = ""  # "p" FIFO, "c"/"b" character/block device
    rdev: int = 0
    link: bytes = b""  # a symlink's exact target, when it is not UTF-8


EMPTY = Extra()
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Extra)


def encode(extra: Extra) -> bytes:
    if extra == EMPTY:
        return b""
    if extra.first:
        extra = msgspec.structs.replace(extra, first=paths.to_wire(extra.first))
    return bytes([EXTRA_VERSION]) + _encoder.encode(extra)


class BadExtra(ValueError):
    """A stored record that does not decode (damaged, or a format this client does not know)."""


def decode(data: bytes) -> Extra:
    if not data:
        return EMPTY
    if data[0] != EXTRA_VERSION:
        raise BadExtra(f"metadata record of unknown format {data[0]}")
    try:
        extra = _decoder.decode(data[1:])
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise BadExtra(f"metadata record does not decode ({e})") from None
    if extra.first and "\\" in extra.first:
        try:
            extra = msgspec.structs.replace(extra, first=paths.from_wire(extra.first))
        except ValueError as e:
            raise BadExtra(f"metadata record names a malformed path ({e})") from None
    return extra


def link_fields(target: str, extra: bytes) -> tuple[str, bytes]:
    """(link text, extra record) to store for a symlink to ``target`` (as Python holds file names) whose
    record is ``extra``: a target that is not UTF-8 is stored as escaped text, its bytes in the record."""
    try:
        target.encode("utf-8")
        return target, extra
    except UnicodeEncodeError:
        pass
    raw = target.encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "backslashreplace"), encode(msgspec.structs.replace(decode(extra), link=raw))


def exact_link(link: str, extra: Extra | None) -> str:
    """A stored symlink's target as Python holds file names: from its record when it has the bytes."""
    if extra is not None and extra.link:
        return extra.link.decode("utf-8", "surrogateescape")
    return link


# --- push side ---------------------------------------------------------------------------------------------

@functools.cache
def user_name(uid: int) -> str:
    """The user name of ``uid`` ('' when it has none), looked up once per run."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@functools.cache
def group_name(gid: int) -> str:
    """The group name of ``gid`` ('' when it has none), looked up once per run."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def read_xattrs(path: str, follow: bool = False) -> tuple[list[tuple[str, bytes]], str | None]:
    """Every xattr of ``path`` this process can read, sorted by name, and why some are missing (or None)."""
    try:
        names = os.listxattr(path, follow_symlinks=follow)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.ENOENT):
            return [], None
        return [], f"xattrs not stored: cannot list them ({e.strerror})"
    if not names:
        return [], None
    out: list[tuple[str, bytes]] = []
    total = 0
    problem = None
    for name in sorted(names):
        try:
            value = os.getxattr(path, name, follow_symlinks=follow)
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.ENOTSUP):
                problem = f"xattr {name} not stored: {e.strerror}"
            continue
        text = paths.to_wire(name)  # a name that is not UTF-8 is kept as escaped text, as paths are
        total += len(text) + len(value)
        if total > MAX_XATTR_BYTES:
            return out, f"xattrs beyond {MAX_XATTR_BYTES} bytes not stored (from {text} on)"
        out.append((text, value))
    return out, problem


def xattr_name(stored: str) -> str:
    """The xattr name of a stored record's text, as Python holds names (the inverse of the escape in
    :func:`read_xattrs`). A record written before names were escaped that holds a lone backslash reads as it
    was stored."""
    try:
        return paths.from_wire(stored)
    except ValueError:
        return stored


Known = Callable[[str, int, int, int, int], "bytes | None"]
"""The files cache's record of a file unchanged since the last push: (path, size, mtime, inode, ctime) -> extra."""


class Capture:
    """Builds the :class:`Extra` of each item of one walk; remembers the first name of every multiply-linked
    inode, so later names become hard links to it."""

    def __init__(self, known: Known | None = None) -> None:
        self._known = known
        self._inodes: dict[tuple[int, int], str] = {}
        self._plain: dict[tuple[int, int], bytes] = {}  # (uid, gid) -> the record of an item with nothing else

    def record(self, path: str, rel: str, st: os.stat_result, kind: str) -> tuple[bytes, str | None]:
        """The encoded record of the item at ``path`` (``rel`` from the root) and a problem to report, if any."""
        first = ""
        if st.st_nlink > 1 and kind != "d":
            key = (st.st_dev, st.st_ino)
            first = self._inodes.setdefault(key, rel)
            if first == rel:
                first = ""
        elif kind == "f" and self._known is not None:
            cached = self._known(rel, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
            if cached is not None:  # unchanged since the last push (a chown or setxattr changes the ctime)
                return cached, None
        xattrs, problem = read_xattrs(path)
        mode = st.st_mode
        if not xattrs and not first and kind != "s":  # most items: one record per owner, encoded once
            owner = (st.st_uid, st.st_gid)
            plain = self._plain.get(owner)
            if plain is None:
                plain = self._plain[owner] = encode(
                    Extra(uid=owner[0], gid=owner[1], user=user_name(owner[0]), group=group_name(owner[1]))
                )
            return plain, problem
        special = ""
        rdev = 0
        if stat.S_ISFIFO(mode):
            special = "p"
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            special = "c" if stat.S_ISCHR(mode) else "b"
            rdev = st.st_rdev
        extra = Extra(
            uid=st.st_uid,
            gid=st.st_gid,
            user=user_name(st.st_uid),
            group=group_name(st.st_gid),
            xattrs=xattrs,
            first=first,
            special=special,
            rdev=rdev,
        )
        return encode(extra), problem


# --- pull side ---------------------------------------------------------------------------------------------


class Applier:
    """Applies stored records on a pull (thread-safe enough: caches only grow)."""

    def __init__(self, numeric_ids: bool = False) -> None:
        self.numeric_ids = numeric_ids
        self.root = os.geteuid() == 0
        self.owners_kept = 0  # items whose ownership was not applied (not root)
        self._uids: dict[str, int | None] = {}
        self._gids: dict[str, int | None] = {}

    def owner(self, x: Extra) -> tuple[int, int] | None:
        """(uid, gid) to give, or None when nothing is stored or ownership cannot be applied here."""
        if x.uid is None or x.gid is None:
            return None
        if not self.root:
            self.owners_kept += 1
            return None
        uid, gid = x.uid, x.gid
        if not self.numeric_ids:
            if x.user:
                uid = _lookup(self._uids, x.user, lambda n: pwd.getpwnam(n).pw_uid, uid)
            if x.group:
                gid = _lookup(self._gids, x.group, lambda n: grp.getgrnam(n).gr_gid, gid)
        return uid, gid

    def settable(self, name: str) -> bool:
        return self.root or not name.startswith(ROOT_ONLY)

    def apply_fd(self, fd: int | str, x: Extra, fresh: bool) -> list[str]:
        """Give the open file or directory ``fd`` (or a /proc/self/fd path) the owner and xattrs of ``x`` (before
        its mode is set: a chown clears set-id bits). ``fresh``: just created, so it has no xattrs to remove.
        Returns problems."""
        problems: list[str] = []
        owner = self.owner(x)
        if owner is not None:
            st = os.stat(fd)
            if (st.st_uid, st.st_gid) != owner:
                try:
                    os.chown(fd, *owner)
                except OSError as e:
                    problems.append(f"owner {owner[0]}:{owner[1]} not set: {e.strerror}")
        self._xattrs(fd, x, fresh, problems)
        return problems

    def _xattrs(self, target: int | str, x: Extra, fresh: bool, problems: list[str]) -> None:
        wanted = {xattr_name(name): value for name, value in x.xattrs if self.settable(name)}
        if not fresh or wanted:
            try:
                have = {} if fresh else {n: None for n in os.listxattr(target) if self.settable(n)}
            except OSError:
                have = {}
            for name in have:
                if name not in wanted and not name.startswith("security."):  # labels the system gives: left alone
                    try:
                        os.removexattr(target, name)
                    except OSError as e:
                        problems.append(f"xattr {name} not removed: {e.strerror}")
            for name, value in wanted.items():
                try:
                    if not fresh and name in have and os.getxattr(target, name) == value:
                        continue
                    os.setxattr(target, name, value)
                except OSError as e:
                    problems.append(f"xattr {name} not set: {e.strerror}")

    def apply_link_at(self, dir_fd: int, name: str, x: Extra) -> list[str]:
        """Owner of the symlink ``name`` itself (symlinks carry no settable user xattrs on Linux)."""
        owner = self.owner(x)
        if owner is None:
            return []
        try:
            os.chown(name, *owner, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as e:
            return [f"owner {owner[0]}:{owner[1]} not set: {e.strerror}"]
        return []

    def apply_at(self, dir_fd: int, name: str, x: Extra) -> list[str]:
        """:meth:`apply_fd` on the existing regular file ``name`` in ``dir_fd`` (never following a symlink)."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError as e:
            return [f"metadata not set: {e.strerror}"]
        try:
            return self.apply_fd(fd, x, fresh=False)
        finally:
            os.close(fd)

    def wants_update(self, st: os.stat_result, x: Extra) -> bool:
        """Does an existing item whose content is current need :meth:`apply_at`? (Owner differs, or it has or
        should have xattrs: those are compared by :meth:`apply_at`.)"""
        if x.xattrs:
            return True
        owner = None if not self.root or x.uid is None else self.owner(x)
        return owner is not None and (st.st_uid, st.st_gid) != owner


def _lookup(cache: dict[str, int | None], name: str, find: object, fallback: int) -> int:
    if name not in cache:
        try:
            cache[name] = find(name)  # type: ignore[operator]
        except KeyError:
            cache[name] = None
    found = cache[name]
    return fallback if found is None else found
