"""Writing under a pull's destination without ever following a symlink out of it.

Every path a pull writes comes from the server, so it is treated as hostile: it is re-checked with
:func:`neotwist.paths.check_path` (no '..', no absolute paths) and resolved one component at a time from
a descriptor of the destination directory with ``O_NOFOLLOW | O_DIRECTORY``. A component that is a
symlink (planted before or during the pull, or created by the pull itself from a server-sent link) makes
the operation fail with :class:`UnsafePath` instead of being followed. Files are created with
``O_EXCL | O_NOFOLLOW`` under a temporary name in their directory and renamed into place relative to the
same directory descriptor, so a symlink at the final name is replaced, never written through.

All methods are safe to call from several worker threads at once: each call resolves its own descriptors.
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from neotwist.paths import check_local
from neotwist.wire.errors import NeoError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_MARK = ".neotmp."


Fix = Callable[[int | str], None]
"""Applies what else a restored item carries (owner, xattrs) to its open descriptor."""


class UnsafePath(Exception):
    """A server path cannot be written safely (bad syntax, or a symlink / non-directory in the way)."""


_temp_numbers = itertools.count()
_temp_prefix = secrets.token_hex(4)


def temp_name(name: str) -> str:
    """``.<name>.neotmp.<unique>`` (the name is shortened so the result stays within 255 bytes).

    Unique per process by a counter after a random per-process prefix: no system call per file (a
    ``getrandom`` per temp file cost 2.5 s of a 50,000-file restore). O_EXCL refuses a name someone planted.
    """
    short = name.encode("utf-8", "surrogateescape")[:200].decode("utf-8", "surrogateescape")
    return f".{short}{TEMP_MARK}{_temp_prefix}{next(_temp_numbers):x}"


def _umask() -> int:
    """The process's umask, read without changing it (other threads may be creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o077)  # no /proc: the classic way (set and restore), at the start of a pull
    os.umask(old)
    return old


def _default_acl(fd: int) -> bool:
    """Does the directory ``fd`` have a default ACL (which the files and directories made in it inherit)?"""
    try:
        os.getxattr(fd, "system.posix_acl_default")
    except (OSError, AttributeError):
        return False  # none (ENODATA), or no ACLs on this file system or platform
    return True


def _split(rel: str) -> list[str]:
    try:
        check_local(rel)
    except NeoError as e:
        raise UnsafePath(f"refusing server path {rel!r}: {e.message}") from None
    return rel.split("/") if rel else []


class TempFile:
    """A new file being written under a temporary name; :meth:`commit` renames it into place.

    In a directory that held nothing when the pull began (the destination was empty, or the pull made the
    directory), there is no complete file a failed write could spoil: the file is created under its final name
    (``O_EXCL``: if something appeared there meanwhile, the temporary name is used after all), which spares a
    rename per file. Created so, it is given its mode at creation when nothing can change it afterwards (see
    :meth:`SafeDest.exact_mode`), which spares a ``fchmod``. An aborted one is removed as a temporary one is.
    """

    def __init__(
        self, dest: SafeDest, rel: str, dir_fd: int, name: str, own_dir: bool = True, fresh: bool = False,
        mode: int | None = None,
    ) -> None:  # fmt: skip
        """``own_dir``: the file takes over ``dir_fd`` and closes it with itself; else it only borrows it (from a
        :class:`DirStack` that outlives it). ``fresh``: ``dir_fd`` held nothing when the pull began; ``mode``:
        the mode it is created with when that mode is final (else 0o600 until :meth:`commit`)."""
        self.rel = rel
        self._dest = dest
        self._dir_fd = dir_fd
        self._own_dir = own_dir
        self.name = name
        self._done = False
        self._mode = -1  # the mode it was created with, when final
        if fresh:
            try:
                self.fd = os.open(name, _NEW_FLAGS, 0o600 if mode is None else mode, dir_fd=dir_fd)
                self.tmp = name
                self._mode = -1 if mode is None else mode
                return
            except FileExistsError:
                pass
        self.tmp = temp_name(name)
        self.fd = os.open(self.tmp, _NEW_FLAGS, 0o600, dir_fd=dir_fd)

    @property
    def in_place(self) -> bool:
        """Created under its final name (no rename at commit)."""
        return self.tmp == self.name

    def commit(self, mode: int, mtime_ns: int, fsync: bool = True, fix: Fix | None = None) -> None:
        """Set owner and xattrs (``fix``), mode and mtime, fsync, and rename over whatever non-directory is at the
        final name."""
        try:
            if fix is not None:
                fix(self.fd)  # before the mode: a chown clears set-id bits
            wanted = self._dest.allowed_mode(mode)
            if wanted != self._mode:  # (created with it only when ``fix`` cannot change it: SafeDest.exact_mode)
                os.fchmod(self.fd, wanted)
            os.utime(self.fd, ns=(mtime_ns, mtime_ns))
            if fsync:
                os.fsync(self.fd)
            if not self.in_place:
                try:
                    # rename(2) replaces a file or a symlink (the link itself, never what it points to) and refuses
                    # a directory with EISDIR: no stat beforehand (one system call less per restored file).
                    os.rename(self.tmp, self.name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
                except IsADirectoryError:
                    raise UnsafePath(
                        f"{self.rel}: a directory is in the way of a file; move it and pull again"
                    ) from None
            self._done = True
        finally:
            self._close(unlink=not self._done)

    def abort(self) -> None:
        self._close(unlink=True)

    def _close(self, unlink: bool) -> None:
        mine: tuple[int, int] | None = None
        if self.fd >= 0:
            if unlink and self.in_place:
                st = os.fstat(self.fd)
                mine = (st.st_dev, st.st_ino)
            os.close(self.fd)
            self.fd = -1
        if unlink and self._dir_fd >= 0:
            try:
                if self.in_place:  # only what this pull created is removed, never something renamed there since
                    now = os.stat(self.tmp, dir_fd=self._dir_fd, follow_symlinks=False)
                    if (now.st_dev, now.st_ino) != mine:
                        raise FileNotFoundError
                os.unlink(self.tmp, dir_fd=self._dir_fd)
            except OSError:
                pass
        if self._dir_fd >= 0:
            if self._own_dir:
                os.close(self._dir_fd)
            self._dir_fd = -1


class DirStack:
    """Descriptors of the directories along the last path opened, reused for the next one.

    A pull handles paths in sorted order, so consecutive paths share most of their directories: resolving each
    from the root cost one ``openat`` per component per item (ten per file of a restored tree), where this
    opens only the components that differ from the previous path's. Every component is opened as
    :meth:`SafeDest._open_dir` opens it (``O_NOFOLLOW | O_DIRECTORY``, relative to its parent's descriptor), so
    a symlink in the way is refused the same way. One thread at a time; :meth:`close` releases them all.
    """

    def __init__(self, dest: SafeDest, new: bool = False) -> None:
        """``new``: the directories opened are expected not to exist yet (they are made without trying to open
        them first: one failed ``openat`` less per directory of a restore into an empty destination)."""
        self._dest = dest
        self._new = new
        self._names: list[str] = []
        self._fds: list[int] = []

    def open(self, rel_dir: str, create: bool) -> int:
        """A descriptor of directory ``rel_dir`` ('' = the root), valid until the next :meth:`open` or
        :meth:`close` (do not close it); the directories it had to create go into :attr:`SafeDest.made`.
        FileNotFoundError (``create`` false), UnsafePath or OSError."""
        parts = _split(rel_dir)
        names, fds = self._names, self._fds
        keep = 0
        while keep < len(names) and keep < len(parts) and names[keep] == parts[keep]:
            keep += 1
        while len(fds) > keep:
            names.pop()
            os.close(fds.pop())
        for i in range(keep, len(parts)):
            parent = fds[-1] if fds else self._dest.root_fd
            at = "/".join(parts[: i + 1])
            fds.append(self._dest._open_dir(parent, parts[i], create, rel_dir, at, self._new and create))
            names.append(parts[i])
        return fds[-1] if fds else self._dest.root_fd

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.pop())
        self._names.clear()

    def __enter__(self) -> DirStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SafeDest:
    """The destination directory of a pull, and the only way the pull touches it."""

    def __init__(self, root: str, *, special_bits: bool = False) -> None:
        """``special_bits``: restore setuid and setgid as the server lists them (always so for root)."""
        self.root_existed = os.path.isdir(root)
        os.makedirs(root, exist_ok=True)
        self.special_bits = special_bits or os.geteuid() == 0
        self.root = root
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        with os.scandir(self.root_fd) as listing:
            self.was_empty = next(listing, None) is None
        """Nothing was in the destination when the pull began: no file there to look at or reuse."""
        self.made: set[str] = set()
        """Every directory this pull created (by its path), whichever call or thread created it."""
        self.umask = _umask()
        self.inherits_acl = self.was_empty and _default_acl(self.root_fd)

    def close(self) -> None:
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    def _open_dir(
        self, dir_fd: int, name: str, create: bool, rel: str, at: str = "", new: bool = False
    ) -> int:
        """Open directory ``name`` (the path ``at``) in ``dir_fd``, creating it with ``create`` (``new``: make it
        first, then open it: it is not expected to exist); ``rel`` is the path the caller resolves (messages)."""
        if not new:
            try:
                return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                if not create:
                    raise
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise UnsafePath(
                        f"{rel}: {name!r} in the destination is a symlink or not a directory; not following it"
                    ) from None
                raise
        try:
            os.mkdir(name, 0o777, dir_fd=dir_fd)
            if at:
                self.made.add(at)  # atomic under the GIL: several workers may be creating directories
        except FileExistsError:
            pass  # another worker made it (or it was there); the open below still refuses a symlink
        return self._open_dir(dir_fd, name, False, rel)

    def _walk(self, parts: list[str], create: bool, rel: str) -> int:
        """A new descriptor of the directory ``parts`` (resolved with O_NOFOLLOW from the root)."""
        fd = os.dup(self.root_fd)
        try:
            for i, part in enumerate(parts):
                nxt = self._open_dir(fd, part, create, rel, "/".join(parts[: i + 1]))
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    def lstat_at(self, dir_fd: int, name: str) -> os.stat_result | None:
        """``lstat`` of ``name`` in the directory ``dir_fd`` (None when missing)."""
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def open_read_at(self, dir_fd: int, name: str) -> int | None:
        """:meth:`open_read` of ``name`` in the directory ``dir_fd``."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENOTDIR, errno.EACCES):
                return None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return fd

    def new_file_at(self, dir_fd: int, rel: str, mode: int | None = None, fix: Fix | None = None) -> TempFile:
        """:meth:`new_file` in ``dir_fd``, the directory of ``rel`` (from :meth:`open_dir`); the TempFile takes
        ownership of ``dir_fd`` (closed with it, also on failure)."""
        parts = _split(rel)
        try:
            if not parts:
                raise UnsafePath("the destination root itself is not a file")
            return self.temp_file(rel, dir_fd, parts[-1], True, mode, fix)
        except BaseException:
            os.close(dir_fd)
            raise

    def temp_file(
        self, rel: str, dir_fd: int, name: str, own_dir: bool, mode: int | None = None, fix: Fix | None = None
    ) -> TempFile:
        """The TempFile for ``rel`` (``name`` in ``dir_fd``): in place when its directory held nothing when the
        pull began, created with its final ``mode`` when :meth:`exact_mode` allows (``fix``: what it gets
        before its mode, if anything)."""
        fresh = self.was_empty or rel.rpartition("/")[0] in self.made
        exact = self.exact_mode(mode, fix) if fresh and mode is not None else None
        return TempFile(self, rel, dir_fd, name, own_dir, fresh, exact)

    def exact_mode(self, mode: int, fix: Fix | None) -> int | None:
        """The mode a new file of a destination that was empty can be created with as its final one, or None if
        something could change it after creation: a umask that clears some of its bits, a default ACL on the
        destination (every directory the pull makes inherits it), set-id bits, or owner and xattrs to apply
        first that could change it (an ACL sets the group bits; a chown clears set-id bits only)."""
        if (fix is not None and not getattr(fix, "keeps_mode", False)) or not self.was_empty or self.inherits_acl:
            return None
        wanted = self.allowed_mode(mode)
        return None if wanted & (0o7000 | self.umask) else wanted

    @contextmanager
    def parent(self, rel: str, create: bool = True) -> Iterator[tuple[int, str]]:
        """(descriptor of ``rel``'s directory, last component); ``rel`` must not be the root."""
        parts = _split(rel)
        if not parts:
            raise UnsafePath("the destination root itself is not a file")
        fd = self._walk(parts[:-1], create, rel)
        try:
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def make_dir(self, rel: str, dirs: DirStack | None = None) -> bool:
        """Create directory ``rel`` and its parents (refusing symlinks and non-directories in the way); True
        when ``rel`` itself was made by this pull (it is in :attr:`made`)."""
        if dirs is not None:
            dirs.open(rel, create=True)
        else:
            os.close(self._walk(_split(rel), True, rel))
        return rel in self.made

    def lstat(self, rel: str) -> os.stat_result | None:
        """``lstat`` of ``rel`` (None when it or a parent is missing; UnsafePath if a parent is a symlink)."""
        parts = _split(rel)
        if not parts:
            return os.fstat(self.root_fd)
        try:
            with self.parent(rel, create=False) as (fd, name):
                return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def open_read(self, rel: str) -> int | None:
        """A read descriptor of the regular file at ``rel``, or None (a symlink is not one)."""
        try:
            with self.parent(rel, create=False) as (dfd, name):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except (FileNotFoundError, UnsafePath):
            return None
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENOTDIR, errno.EACCES):
                return None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return fd

    def new_file(self, rel: str, mode: int | None = None, fix: Fix | None = None) -> TempFile:
        """Start writing the new version of ``rel`` under a temporary name next to it."""
        parts = _split(rel)
        if not parts:
            raise UnsafePath("the destination root itself is not a file")
        fd = self._walk(parts[:-1], True, rel)
        try:
            return self.temp_file(rel, fd, parts[-1], True, mode, fix)
        except BaseException:
            os.close(fd)
            raise

    def make_special(self, rel: str, kind: str, rdev: int, mode: int, mtime_ns: int, fix: Fix | None) -> None:
        """Make ``rel`` a FIFO (``kind`` "p") or a device node ("c", "b": as root), under a temporary name renamed
        over whatever non-directory is there."""
        fmt = {"p": stat.S_IFIFO, "c": stat.S_IFCHR, "b": stat.S_IFBLK}[kind]
        with self.parent(rel) as (dfd, name):
            tmp = temp_name(name)
            os.mknod(tmp, fmt | 0o600, rdev if kind != "p" else 0, dir_fd=dfd)
            try:
                fd = os.open(tmp, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_PATH, dir_fd=dfd)
                try:
                    proc = f"/proc/self/fd/{fd}"  # the node itself (fd is O_PATH: no fchown on it)
                    if fix is not None:
                        fix(proc)
                    os.chmod(proc, self.allowed_mode(mode))
                    os.utime(proc, ns=(mtime_ns, mtime_ns))
                finally:
                    os.close(fd)
                try:
                    os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                except IsADirectoryError:
                    raise UnsafePath(f"{rel}: a directory is in the way; move it and pull again") from None
            except BaseException:
                with suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise

    def make_hardlink(self, first: str, rel: str) -> bool:
        """Make ``rel`` another name of the file ``first`` (both under the destination); False if it is already."""
        with self.parent(first, create=False) as (sfd, sname), self.parent(rel) as (dfd, name):
            src = os.stat(sname, dir_fd=sfd, follow_symlinks=False)
            if not stat.S_ISREG(src.st_mode) and not stat.S_ISFIFO(src.st_mode):
                raise UnsafePath(f"{rel}: its first name {first} is not a file here")
            try:
                now = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if (now.st_dev, now.st_ino) == (src.st_dev, src.st_ino):
                    return False
            except FileNotFoundError:
                pass
            tmp = temp_name(name)
            os.link(sname, tmp, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            try:
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                with suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
            return True

    def make_symlink(self, rel: str, target: str, mtime_ns: int | None = None) -> bool:
        """Make ``rel`` a symlink to ``target`` (created as text, never followed). False if already so."""
        with self.parent(rel) as (fd, name):
            try:
                existing = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                existing = None
            if existing is not None:
                if stat.S_ISLNK(existing.st_mode) and os.readlink(name, dir_fd=fd) == target:
                    return False
                if stat.S_ISDIR(existing.st_mode):
                    raise UnsafePath(f"{rel}: a directory is in the way of a symlink; move it and pull again")
            tmp = temp_name(name)
            os.symlink(target, tmp, dir_fd=fd)
            try:
                os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                os.unlink(tmp, dir_fd=fd)
                raise
            if mtime_ns is not None:
                try:
                    os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=fd, follow_symlinks=False)
                except (NotImplementedError, OSError):
                    pass  # symlink times are cosmetic; not every platform can set them
            return True

    def set_mode_at(self, dir_fd: int, name: str, mode: int) -> None:
        """Give the regular file ``name`` in ``dir_fd`` the permission bits ``mode`` (a pull whose content is
        current still applies a mode change; set-id bits only as :meth:`allowed_mode` allows). Never follows a
        symlink; needs no read permission."""
        mode = self.allowed_mode(mode)
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return
            try:
                os.chmod(f"/proc/self/fd/{fd}", mode)  # the file itself: fd is not a symlink
            except FileNotFoundError:  # no /proc
                rfd = self.open_read_at(dir_fd, name)
                if rfd is not None:
                    try:
                        os.fchmod(rfd, mode)
                    finally:
                        os.close(rfd)
        finally:
            os.close(fd)

    def allowed_mode(self, mode: int) -> int:
        """The mode a server-listed ``mode`` is restored with: setuid and setgid dropped unless allowed (a
        server must not plant set-id programs for a user who did not ask, as tar does without -p)."""
        mode &= 0o7777
        return mode if self.special_bits else mode & ~0o6000

    def set_dir_meta(
        self, rel: str, mode: int, mtime_ns: int, fix: Fix | None = None, dirs: DirStack | None = None
    ) -> None:
        """Set a directory's owner and xattrs (``fix``), mode and mtime (after its contents are written, so the
        mtime sticks). The mode of a destination root that existed before the pull is the user's, and is left
        alone."""
        if dirs is not None:
            self._dir_meta(dirs.open(rel, create=False), rel, mode, mtime_ns, fix)
            return
        fd = self._walk(_split(rel), False, rel)
        try:
            self._dir_meta(fd, rel, mode, mtime_ns, fix)
        finally:
            os.close(fd)

    def _dir_meta(self, fd: int, rel: str, mode: int, mtime_ns: int, fix: Fix | None) -> None:
        """Only what differs is set: a chmod or utime dirties the inode even when it changes nothing, and a
        pull into an up-to-date tree rewrote every directory's inode (two system calls and a journal write
        each, thousands per tree) for nothing."""
        if fix is not None:
            fix(fd)
        st = os.fstat(fd)
        if rel or not self.root_existed:
            wanted = self.allowed_mode(mode)
            if stat.S_IMODE(st.st_mode) != wanted:
                os.fchmod(fd, wanted)
        if st.st_mtime_ns != mtime_ns:
            os.utime(fd, ns=(mtime_ns, mtime_ns))
