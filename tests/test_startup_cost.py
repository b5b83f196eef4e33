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
