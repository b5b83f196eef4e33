"""What every client run pays before any work: modules it does not need are not loaded, and nothing starts a
child process to find a library already loaded."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys

import pytest


def test_a_push_without_patterns_does_not_load_pathspec() -> None:
    code = (
        "import sys\n"
        "import neotwist.client.cli\n"
        "from neotwist.client.filters import Filter\n"
        "f = Filter()\n"
        "assert f.empty\n"
        "print('pathspec' in sys.modules)\n"
        "g = Filter(patterns=['*.tmp'])\n"
        "print('pathspec' in sys.modules, g.take_file('a.tmp', 'a.tmp'), g.take_file('a.txt', 'a.txt'))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    lines = r.stdout.splitlines()
    assert lines[0] == "False"
    assert lines[1] == "True False True"  # with patterns it is loaded, and they apply


def test_the_allocator_calls_find_libc_without_a_child_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from neotwist import runtime

    def no(name: str) -> None:
        raise AssertionError(f"find_library({name!r}) runs ldconfig in a child process")

    monkeypatch.setattr(ctypes.util, "find_library", no)
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    assert runtime.tune_malloc() is True
    assert runtime.release_free_memory() is True
    looked_up = dict(runtime._functions)
    assert runtime.tune_malloc() is True and runtime.release_free_memory() is True  # every push and idle settle
    assert runtime._functions == looked_up and all(f is looked_up[n] for n, f in runtime._functions.items())


def test_the_api_loads_the_push_and_pull_pipelines_only_when_used() -> None:
    code = (
        "import sys\n"
        "import neotwist.client.api as api\n"
        "print('neotwist.client.pull' in sys.modules, 'neotwist.client.push' in sys.modules)\n"
        "from neotwist.client.api import PushOptions\n"
        "print('neotwist.client.pull' in sys.modules, 'neotwist.client.push' in sys.modules)\n"
        "print(api.PullIncomplete.__module__, PushOptions.__module__, all(hasattr(api, n) for n in api.__all__))\n"
        "try:\n"
        "    api.NoSuchName\n"
        "except AttributeError as e:\n"
        "    print('AttributeError', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert r.stdout.splitlines() == [
        "False False",
        "False True",
        "neotwist.client.pull neotwist.client.push True",
        "AttributeError module 'neotwist.client.api' has no attribute 'NoSuchName'",
    ]


_PACKETS = """
import os, resource, sys
from twisted.conch.ssh import transport
from neotwist import runtime
assert runtime.tune_malloc()
t = transport.SSHTransportBase()
class Sink:
    def write(self, data): pass
t.transport = Sink()
t.currentEncryptions = c = transport.SSHCiphers(b"aes128-ctr", b"aes128-ctr", b"hmac-sha2-256", b"hmac-sha2-256")
c.setKeys(*(os.urandom(64) for _ in range(6)))
t.outgoingCompression = None
t.outgoingPacketSequence = 0
t._keyExchangeState = t._KEY_EXCHANGE_NONE
for size in (128 * 1024, 256 * 1024):
    data = os.urandom(size)
    for _ in range(20):
        t.sendPacket(94, data)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(200):
        t.sendPacket(94, data)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 200)
for size in (2 << 20, 6 << 20):  # a push's file reads, compressed jobs and frames
    for _ in range(5):
        buffer = bytearray(size)
        buffer[-1] = 1
        del buffer
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        buffer = bytearray(size)
        buffer[-1] = 1
        del buffer
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 50)
"""


def test_ssh_packets_and_big_buffers_reuse_heap_memory() -> None:
    """conch copies a packet four times to send it: with the allocator tuned (as the CLI and the server are), those
    copies reuse the heap's memory; with glibc's defaults, the top of the heap went back to the system at each free
    and every packet faulted it in again (129 page faults per 128 KiB packet, a third of the throughput). Buffers
    of a few MiB are reused too, where each was a mapping of its own, faulted in page by page (512 faults per
    2 MiB)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    r = subprocess.run([sys.executable, "-c", _PACKETS], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    faults = [float(x) for x in r.stdout.split()]
    assert max(faults) < 8, faults  # pages per packet or buffer: 32 to 1,536 of them faulted before
