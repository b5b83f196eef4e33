"""The console scripts' entry points: each loads its command's module under a SIGINT and SIGTERM handler
that ends the process with one line and exit code 130, so that Ctrl-C while the (many) modules load never
shows a KeyboardInterrupt traceback. Once loaded, the command handles interruption itself (see
:func:`neotwist.client.runner.entry_point`); this module imports nothing else for that reason. Standard
output and error are then guarded against terminal controls in names (:mod:`neotwist.display`).

neo-push and neo-pull end with :func:`os._exit` once their work is done, standard output and error are flushed
and no other thread is left: the interpreter's own teardown (freeing every object of the files cache and the
listing one by one, then the modules) took 0.1-0.2 s of each run, time a user waits for and that changes
nothing on disk (files are closed and renamed, the files cache written, before the command returns).

Before a command loads, the standard-library modules that Twisted imports for names no command uses
(:data:`UNUSED_AT_START`) are made lazy: each is loaded on first use, if ever.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import os
import signal
import sys
import threading
from collections.abc import Callable

EXIT_INTERRUPTED = 130

UNUSED_AT_START = ("http.cookiejar",)
"""Modules loaded lazily (:class:`importlib.util.LazyLoader`): loaded at their first attribute access.
``twisted.python.compat`` imports http.cookiejar at start for a deprecated alias (``cookielib``) that only
twisted.web's client ever used; with it came urllib.request, http.client, email and tempfile and their
regular expressions: about 15 ms of every command's start (neo-push of a source release update takes about
0.45 s in all)."""


def defer_unused_modules() -> None:
    """Put lazy stand-ins for :data:`UNUSED_AT_START` in ``sys.modules`` (those not loaded already). The parent
    package gets the stand-in as its attribute too: ``from http import cookiejar`` then binds it without
    touching it, where the import system would read its ``__spec__`` (and so load it) to look it up."""
    for name in UNUSED_AT_START:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            continue
        loader = importlib.util.LazyLoader(spec.loader)
        spec.loader = loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loader.exec_module(module)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


def _load(prog: str, module: str, name: str) -> Callable[[], None]:
    def interrupted(signum: int, frame: object) -> None:
        os.write(2, f"{prog}: interrupted\n".encode())
        os._exit(EXIT_INTERRUPTED)

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    # Loading the command allocates tens of thousands of objects that live as long as the process; each
    # collection while they load walks the young ones again, for nothing: 10 ms (6 %) of neo-push's import.
    # The few cyclic leftovers of the modules' own set-up (about 1,600 objects, 0.3 MB) are frozen with them.
    gc.disable()
    try:
        defer_unused_modules()
        main: Callable[[], None] = getattr(importlib.import_module(module), name)
    finally:
        gc.enable()
    gc.freeze()  # the modules' objects live as long as the process: no collection need walk them again
    from neotwist.display import guard_output

    guard_output()  # names and messages from others never drive the terminal
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return main


def exit_now(code: object) -> None:
    """End the process with ``code`` (a :class:`SystemExit` code) without the interpreter's teardown, when that
    is safe: standard output and error flush, and no other thread runs (one that did might still be writing).
    Otherwise it returns, and the caller exits the ordinary way."""
    if threading.active_count() != 1:
        return
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        return  # a message to print: the ordinary exit prints it
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return  # the ordinary exit reports (or silences) it as it always has
    os._exit(status)


def _command(prog: str, module: str, name: str, fast_exit: bool = False) -> Callable[[], None]:
    def main() -> None:
        if not fast_exit:
            _load(prog, module, name)()
            return
        try:
            _load(prog, module, name)()
        except SystemExit as e:
            exit_now(e.code)
            raise

    main.__doc__ = f"Entry point of {prog}."
    return main


push = _command("neo-push", "neotwist.client.cli", "push_main", fast_exit=True)
pull = _command("neo-pull", "neotwist.client.cli", "pull_main", fast_exit=True)
admin = _command("neo-admin", "neotwist.server.admin", "main")
ls = _command("neo-ls", "neotwist.client.stashcli", "ls")
prune = _command("neo-prune", "neotwist.client.stashcli", "prune")
check = _command("neo-check", "neotwist.client.stashcli", "check")
share = _command("neo-share", "neotwist.client.accountcli", "share_entry")
target = _command("neo-target", "neotwist.client.accountcli", "target_entry")
key = _command("neo-key", "neotwist.client.keycli", "main_entry")
diff = _command("neo-diff", "neotwist.client.diff", "diff")
find = _command("neo-find", "neotwist.client.find", "find")
cat = _command("neo-cat", "neotwist.client.cat", "cat")
mount = _command("neo-mount", "neotwist.client.mount", "mount")
