"""neo-push and neo-pull skip the interpreter's teardown once their work is done (neotwist.entry.exit_now), but
only when nothing can be lost by it: output flushed, no other thread still running, and a numeric code."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(body: str) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(
        """
        import atexit, sys, threading, time
        from neotwist.entry import exit_now
        atexit.register(lambda: print("teardown ran", flush=True))
        sys.stdout.write("work done\\n")  # buffered: exit_now must flush it
        """
    ) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def _printed(script: str) -> list[str]:
    """The words ``script`` printed, run in a child interpreter that must succeed."""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_exit_now_ends_at_once_with_the_code_and_flushed_output() -> None:
    r = _run("exit_now(23)\nprint('not reached')\n")
    assert r.returncode == 23
    assert r.stdout == "work done\n"  # flushed, and neither the atexit handler nor the next line ran


def test_exit_now_with_none_is_success() -> None:
    r = _run("exit_now(None)\n")
    assert (r.returncode, r.stdout) == (0, "work done\n")


def test_exit_now_returns_while_another_thread_runs() -> None:
    r = _run(
        """
        stop = threading.Event()
        t = threading.Thread(target=stop.wait)
        t.start()
        exit_now(0)
        print("returned", flush=True)
        stop.set()
        t.join()
        """
    )
    assert r.returncode == 0
    assert r.stdout == "work done\nreturned\nteardown ran\n"


def test_exit_now_leaves_a_message_to_the_ordinary_exit() -> None:
    r = _run("exit_now('bad thing')\nsys.exit('bad thing')\n")
    assert r.returncode == 1
    assert "teardown ran" in r.stdout
    assert "bad thing" in r.stderr


def test_the_console_scripts_end_through_it() -> None:
    """The installed neo-push exits with its usual code (2 for a usage error) through the fast path."""
    import neotwist.entry as entry

    script = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('teardown ran', flush=True))\n"
        "sys.argv = ['neo-push', '--no-such-flag']\n"
        "from neotwist.entry import push\n"
        "push()\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "--no-such-flag" in r.stderr
    assert "teardown ran" not in r.stdout
    assert entry.push.__doc__ == "Entry point of neo-push."


def test_no_collection_runs_while_the_command_loads() -> None:
    """The modules' objects outlive the process's work: collecting while they load only walks them again."""
    script = (
        "import gc\n"
        "from neotwist.entry import _load\n"
        "starts = []\n"
        "gc.callbacks.append(lambda phase, info: starts.append(info['generation']) if phase == 'start' else None)\n"
        "_load('neo-push', 'neotwist.client.cli', 'push_main')\n"
        "print(len(starts), gc.isenabled(), gc.get_freeze_count() > 10_000)\n"
    )
    assert _printed(script) == ["0", "True", "True"]  # none ran; collection is back on; the modules are frozen


def test_modules_nothing_uses_are_loaded_only_when_used() -> None:
    """Twisted imports http.cookiejar (and with it urllib.request, http.client, email) for an alias no command
    uses: a command loads without them, and the module still works, whole, for whoever uses it."""
    script = (
        "import sys\n"
        "from neotwist.entry import _load\n"
        "_load('neo-push', 'neotwist.client.cli', 'push_main')\n"
        "import neotwist.client.push, neotwist.client.sshclient\n"
        "print('urllib.request' in sys.modules, 'http.client' in sys.modules)\n"
        "from http import cookiejar\n"
        "jar = cookiejar.CookieJar()\n"
        "print(len(jar), 'urllib.request' in sys.modules)\n"
    )
    assert _printed(script) == ["False", "False", "0", "True"]
