"""Process-wide settings that the server and the client programs both apply at start."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SWITCH_INTERVAL = 0.001
"""Seconds a thread may hold the GIL while another waits (Python's default is 0.005). Worker threads make many
short system calls, each releasing the GIL; with the reactor thread busy, each waited up to the interval to get it
back: a 50,000-file restore took 61 s at the default and 32 s at 1 ms (client system time 39 s -> 9 s)."""


def tune_threads() -> None:
    """Let disk-bound worker threads get the GIL back quickly after each system call."""
    sys.setswitchinterval(SWITCH_INTERVAL)


M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""mallopt's parameter numbers (glibc malloc.h)."""

MMAP_THRESHOLD = 8 * 1024 * 1024
"""Allocations from this size up get mappings of their own, returned to the system when freed (glibc starts at
128 KiB and raises it, up to 32 MiB, each time such a buffer is freed): fixed, so the peak stays where it is
measured. Below it, buffers come from the heap and are reused. The file reads, compressed jobs and frames of a
push (1-8 MiB) used to be mappings (the threshold was 1 MiB): each one was faulted in, page by page, and a 64 MiB
first push took 66,000-81,000 page faults and 0.24-0.36 s of system time, 20,000-27,000 and 0.13-0.15 s now
(0.74-0.81 s against 0.90-0.94 s in all; a 512 MiB file, 3.63 s against 4.08 s). The client's peak grew by a few
MiB (a first push of the 50,724-file tree: 140 MiB against 133-138 MiB, in 8.1-8.6 s against 8.4-8.9 s)."""

TRIM_THRESHOLD = 16 * 1024 * 1024
"""Free memory at the top of a heap that stays there rather than going back to the system (glibc's default is
128 KiB). conch copies each SSH packet (up to 128 KiB of channel data) four times to frame, encrypt and sign it,
and as many to check and decrypt one it receives; with the default, each free gave the top of the heap back and
the next packet faulted it in again, page by page: 129 page faults and 400 us per 128 KiB packet (330 MB/s),
against 0.2 faults and 115 us (1.1 GB/s) with it kept. Twice :data:`MMAP_THRESHOLD`, so a freed buffer of any
size below that stays for the next."""


def tune_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds (:data:`MMAP_THRESHOLD`, :data:`TRIM_THRESHOLD`; setting either also
    turns off glibc's own adjustment of both); False where there is no glibc. What
    ``MALLOC_MMAP_THRESHOLD_=8388608 MALLOC_TRIM_THRESHOLD_=16777216`` does, set from inside the process."""
    import ctypes

    mallopt = _glibc("mallopt", ctypes.c_int, ctypes.c_int)
    if mallopt is False:
        return False  # not glibc (musl has no mallopt)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


_functions: dict[str, Any] = {}  # glibc's functions once looked up; False where there is none


def _glibc(name: str, *argtypes: Any) -> Any:
    """glibc's function ``name`` taking ``argtypes``, or False where there is none (not Linux, not glibc).
    Looked up once, among the symbols the process has loaded (libc's among them: ctypes.util.find_library("c")
    runs "ldconfig -p" in a child process to find a name that is already loaded): each lookup made a library
    object and a new class, garbage that outlived a trim and could pin a pymalloc arena it was placed in."""
    function = _functions.get(name)
    if function is None:
        function = False
        if sys.platform.startswith("linux"):
            import ctypes

            try:
                function = getattr(ctypes.CDLL(None), name)
                function.argtypes = list(argtypes)
            except (OSError, AttributeError):
                function = False
        _functions[name] = function
    return function


def release_free_memory() -> bool:
    """Ask the C allocator to hand freed heap memory back to the system (glibc's ``malloc_trim``); False where
    there is no such call. Freeing a cache in a long-running process does not shrink it otherwise: glibc keeps
    freed pages of a fragmented heap for reuse (measured: 119 MB stayed 119 MB until ``malloc_trim(0)``, then
    55 MB)."""
    import ctypes

    trim = _glibc("malloc_trim", ctypes.c_size_t)
    if trim is False:
        return False
    trim(0)
    return True


def retire_idle_workers(pool: Any) -> int:
    """Ask every idle worker of a Twisted ``ThreadPool`` to end (the pool starts new ones when work comes); return
    how many were asked. Call it from the reactor's thread. A worker thread keeps what it allocated for itself
    (its thread-local decompressor and SQLite connections, its malloc arena's scattered live blocks, which keep
    the free space around them resident): after 16 clients' pushes, ending the 10 idle workers gave 4.4 MiB back
    (with :func:`release_free_memory` once they have ended, and :func:`forget_ended_workers`)."""
    forget_ended_workers(pool)
    idle = len(pool.waiters)
    for _ in range(idle):
        pool.stopAWorker()
    return idle


def forget_ended_workers(pool: Any) -> int:
    """Drop the threads that have ended from a Twisted ``ThreadPool``'s list of every thread it ever started (it
    keeps them until it stops: each with its locks, conditions and queues, small objects that pin the pymalloc
    arenas they sit in); how many are left."""
    pool.threads[:] = [thread for thread in pool.threads if thread.is_alive()]
    return len(pool.threads)


@contextmanager
def tls_left_out() -> Iterator[None]:
    """Modules imported inside it see no pyOpenSSL, as on a system without it; outside it, nothing changes.

    Twisted's reactor imports pyOpenSSL (and with it cryptography's X.509 support and service_identity) whenever
    it can, for TLS it may never be asked for: about 50 ms of every neo-push, neo-pull, neo-ls (and the other
    remote commands) over SSH, which use no TLS at all (a re-push with nothing to send took 0.48 s against
    0.53 s with it). Twisted was made to run without pyOpenSSL, so its reactor, loaded here, simply has no TLS;
    the command that asks for this is the one that knows it needs none. Anything imported later (outside) may
    import pyOpenSSL as usual."""
    if "OpenSSL" in sys.modules:  # already loaded: leaving it out would save nothing
        yield
        return
    sys.modules["OpenSSL"] = None  # type: ignore[assignment]  # an import of it now raises ImportError
    try:
        yield
    finally:
        if "OpenSSL" in sys.modules and sys.modules["OpenSSL"] is None:
            del sys.modules["OpenSSL"]
