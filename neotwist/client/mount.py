"""neo-mount: every snapshot of a target as a read-only FUSE filesystem (:mod:`neotwist.client.mountfs`),
file contents fetched on demand.

Threads: the reactor (and the connection) runs in the main thread under the command runner, so Ctrl-C and
SIGTERM are handled as in every command; libfuse's loop runs in a thread of its own and its callbacks call
into the reactor. Ctrl-C, SIGTERM or ``fusermount3 -u`` unmount cleanly (``auto_unmount`` also unmounts if
the process is killed); a lost connection unmounts too, rather than leave a mount whose every read fails.

mfusepy (pure Python over the system's libfuse3 via ctypes) is an optional extra, ``neophytos[mount]``: it
needs no compiler or trio (pyfuse3 needs both), and servers and most clients never mount.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from neotwist.client.browsecli import parser as browse_parser
from neotwist.client.browsecli import run, split_remote
from neotwist.client.clibase import EXIT_FAILED, EXIT_OK, Parser
from neotwist.client.history import BrowseError, History
from neotwist.client.mountfs import SnapshotFS
from neotwist.client.runner import entry_point
from neotwist.display import shown, write_json
from neotwist.sizes import human_size, parse_size

DEFAULT_CACHE = "64MiB"

_EPILOG = """\
MOUNTPOINT must be an empty directory. The filesystem shows:
  MOUNTPOINT/snapshots/ID/...        every kept snapshot, by id (neo-ls --snapshots)
  MOUNTPOINT/snapshots/latest        a symlink to the newest
  MOUNTPOINT/by-time/TIME            symlinks named by each snapshot's time
  MOUNTPOINT/tags/TAG/ID             symlinks to the snapshots that have each tag (neo-push --tag)
  MOUNTPOINT/latest                  a symlink to snapshots/latest
Files are read-only and fetched as they are read (verified chunk by chunk, cached up to --cache-size);
owners, modes, mtimes, symlinks, xattrs and ACLs are shown as stored. Encrypted targets are decrypted here.
Runs in the foreground until unmounted: Ctrl-C or SIGTERM (exit 130, as any interrupted command), or
fusermount3 -u MOUNTPOINT from another shell (exit 0). Needs FUSE: /dev/fuse, libfuse3 (apt install fuse3)
and the mount extra (pip install 'neophytos[mount]'). With --json, a line {"message_type": "mounted", ...} is
printed once mounted and {"message_type": "summary", "bytes_fetched", "cache_hits", ...} at the unmount. A
lost connection unmounts (exit 1) rather than leave a mount whose reads all fail.

examples:
  mkdir -p ~/nas && neo-mount alice@nas/docs ~/nas
  ls ~/nas/snapshots/                                  ids, plus latest
  diff -r ~/nas/snapshots/12/reports ~/nas/latest/reports
  cp -a ~/nas/by-time/2026-11-23T14:30:05+01:00/photos ~/restore/
  NEO_PASSPHRASE_FILE=~/.neo-pass neo-mount --cache-size 256MiB alice@nas/secret ~/secret
"""


def _parser() -> Parser:
    p = browse_parser(
        "neo-mount",
        "neo-mount [options] REMOTE MOUNTPOINT",
        "Mount every snapshot of a target as a read-only filesystem (FUSE), contents fetched on demand.",
        _EPILOG,
    )
    g = p.add_argument_group("mount")
    g.add_argument("--cache-size", default=DEFAULT_CACHE, metavar="SIZE",
                   help=f"bytes of decoded chunks kept in memory (default {DEFAULT_CACHE})")  # fmt: skip
    g.add_argument("--fuse-debug", action="store_true", help=argparse.SUPPRESS)
    return p


class FuseUnavailable(Exception):
    """FUSE cannot be used here (one line: what is missing and how to get it)."""


def load_fuse() -> Any:
    """The mfusepy module, or FuseUnavailable saying what is missing."""
    if not os.path.exists("/dev/fuse"):
        raise FuseUnavailable("FUSE is not available: there is no /dev/fuse (load the fuse module: modprobe fuse)")
    try:
        import mfusepy
    except ImportError:
        raise FuseUnavailable("neo-mount needs the mount extra: pip install 'neophytos[mount]'") from None
    except OSError as e:  # mfusepy found no libfuse
        raise FuseUnavailable(f"FUSE is not available: {e} (install libfuse3: apt install fuse3)") from None
    return mfusepy


# --- the command ----------------------------------------------------------------------------------------------


def mount_main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    remote, rest = split_remote(p, args, ["MOUNTPOINT"])
    mountpoint = os.path.abspath(rest[0])
    try:
        cache_bytes = parse_size(args.cache_size) or 0
    except ValueError as e:
        p.error(f"--cache-size: {e}")
    if cache_bytes < 4 * 1024 * 1024:
        p.error("--cache-size must be at least 4MiB (a read-ahead must fit)")
    try:
        fuse = load_fuse()
        _check_mountpoint(mountpoint)
    except FuseUnavailable as e:
        sys.stderr.write(f"neo-mount: {e}\n")
        return EXIT_FAILED

    async def body(history: History) -> int:
        from twisted.internet import reactor
        from twisted.internet.defer import Deferred, ensureDeferred
        from twisted.internet.threads import blockingCallFromThread

        def call(fn: Callable[..., Any], *a: Any) -> Any:
            return blockingCallFromThread(reactor, lambda: ensureDeferred(fn(*a)))

        def log(text: str) -> None:
            sys.stderr.write(f"neo-mount: {text}\n")

        records = await history.snapshots()
        fs = SnapshotFS(history, call, cache_bytes, log)
        fs.records, fs.refreshed = records, time.monotonic()
        mounted: Deferred[str] = Deferred()  # "mounted", or "ended" when libfuse gave up before
        ended: Deferred[None] = Deferred()

        def fire(d: Deferred[Any], value: Any) -> None:
            if not d.called:
                d.callback(value)

        def on_end() -> None:
            fire(mounted, "ended")
            fire(ended, None)

        fs.ready = lambda: reactor.callFromThread(fire, mounted, "mounted")
        outcome: list[BaseException] = []

        def serve() -> None:
            options: dict[str, Any] = {"foreground": True, "ro": True, "fsname": f"neophytos:{remote.target}",
                                       "subtype": "neophytos", "auto_unmount": True, "kernel_cache": True}  # fmt: skip
            try:
                fuse.FUSE(fs, mountpoint, debug=args.fuse_debug, **options)
            except BaseException as e:
                outcome.append(e)
            finally:
                reactor.callFromThread(on_end)

        thread = threading.Thread(target=serve, name="neo-mount-fuse", daemon=True)
        thread.start()
        try:
            first = await mounted
        except BaseException:
            await _unmount(mountpoint, thread)
            raise
        if first == "ended":
            why = f": {outcome[0]}" if outcome and str(outcome[0]) else ""
            raise BrowseError(f"could not mount {mountpoint}{why} (libfuse's reason is above)")
        if args.json:
            write_json({"message_type": "mounted", "mountpoint": mountpoint, "target": remote.target,
                        "path": remote.path, "snapshots": len(records), "encrypted": history.encrypted})  # fmt: skip
        elif not args.quiet:
            sys.stderr.write(
                f"neo-mount: {len(records)} snapshot(s) of {shown(remote.target)} mounted read-only at "
                f"{shown(mountpoint)}; Ctrl-C or 'fusermount3 -u {shown(mountpoint)}' unmounts\n"
            )
        # a connection that is lost would fail every read from then on: unmount and say so instead
        lost: Deferred[bool] = Deferred()
        history.peer.when_closed().addCallback(lambda _: fire(lost, True))
        ended.addCallback(lambda _: fire(lost, False))
        try:
            connection_lost = await lost
        finally:
            if thread.is_alive():  # interrupted, or the connection is gone: unmount, leave no mount behind
                await _unmount(mountpoint, thread)
        if args.json:
            write_json({"message_type": "summary", "mountpoint": mountpoint, "bytes_fetched": fs.bytes_fetched,
                        "cache_hits": fs.cache.hits, "cache_misses": fs.cache.misses, "trees_listed": fs.trees_listed,
                        "connection_lost": connection_lost})  # fmt: skip
        if connection_lost:
            raise BrowseError(
                f"the connection to the server was lost: unmounted {mountpoint}; run neo-mount again to mount it again"
            )
        if not (args.quiet or args.json):
            sys.stderr.write(f"neo-mount: unmounted {shown(mountpoint)} ({human_size(fs.bytes_fetched)} fetched)\n")
        return EXIT_OK

    return run("neo-mount", args, remote, body)


async def _unmount(mountpoint: str, thread: threading.Thread) -> None:
    from twisted.internet.threads import deferToThread

    def unmount() -> None:
        tool = shutil.which("fusermount3") or shutil.which("fusermount")
        import subprocess

        if tool is not None:
            subprocess.run([tool, "-u", "-z", mountpoint], capture_output=True, timeout=10)
        else:
            subprocess.run(["umount", "-l", mountpoint], capture_output=True, timeout=10)
        thread.join(timeout=5)

    await deferToThread(unmount)


def _check_mountpoint(path: str) -> None:
    if not os.path.isdir(path):
        raise FuseUnavailable(f"cannot mount at {path}: not a directory (mkdir it first)")
    if os.path.ismount(path):
        raise FuseUnavailable(f"cannot mount at {path}: something is mounted there already")
    try:
        if os.listdir(path):
            raise FuseUnavailable(f"cannot mount at {path}: it is not empty")
    except PermissionError:
        raise FuseUnavailable(f"cannot mount at {path}: permission denied") from None


mount = entry_point("neo-mount", lambda: mount_main(None))

__all__ = ["load_fuse", "mount", "mount_main"]
