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
    from neotwist.client import heap

    def no(name: str) -> None:
        raise AssertionError(f"find_library({name!r}) runs ldconfig in a child process")

    monkeypatch.setattr(ctypes.util, "find_library", no)
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    assert heap.fix_mmap_threshold() is True
    assert runtime.release_free_memory() is True
