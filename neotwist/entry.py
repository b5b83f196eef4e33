"""The console scripts' entry points: each loads its command's module under a SIGINT and SIGTERM handler
that ends the process with one line and exit code 130, so that Ctrl-C while the (many) modules load never
shows a KeyboardInterrupt traceback. Once loaded, the command handles interruption itself (see
:func:`neotwist.client.runner.entry_point`); this module imports nothing else for that reason. Standard
output and error are then guarded against terminal controls in names (:mod:`neotwist.display`).
"""

from __future__ import annotations

import importlib
import os
import signal
from collections.abc import Callable

EXIT_INTERRUPTED = 130


def _load(prog: str, module: str, name: str) -> Callable[[], None]:
    def interrupted(signum: int, frame: object) -> None:
        os.write(2, f"{prog}: interrupted\n".encode())
        os._exit(EXIT_INTERRUPTED)

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    main: Callable[[], None] = getattr(importlib.import_module(module), name)
    from neotwist.display import guard_output

    guard_output()  # names and messages from others never drive the terminal
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return main


def _command(prog: str, module: str, name: str) -> Callable[[], None]:
    def main() -> None:
        _load(prog, module, name)()

    main.__doc__ = f"Entry point of {prog}."
    return main


push = _command("neo-push", "neotwist.client.cli", "push_main")
pull = _command("neo-pull", "neotwist.client.cli", "pull_main")
admin = _command("neo-admin", "neotwist.admin", "main")
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
