"""Take a password given on the command line out of the process's command line once it is parsed.

``--password SECRET`` (the original client's flag, kept for compatibility) sits in ``/proc/PID/cmdline``,
which every user of the machine can read, for as long as the process runs. Python cannot write over its own
argv, but setproctitle (C) rewrites that memory: the command line then shows ``***`` in the secret's place.
Until that happens (process start-up, the parse) the secret was visible, so the user is warned either way.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

SECRET_FLAGS = ("--password", "--authcode")
MASK = "***"


def _is_secret_flag(flag: str) -> bool:
    """``--password``, ``--authcode``, or an abbreviation argparse took for ``--authcode`` (``--password``
    has none: ``--password-stdin`` makes every prefix ambiguous)."""
    return flag in SECRET_FLAGS or (len(flag) >= 4 and "--authcode".startswith(flag))


def masked(argv: Sequence[str]) -> list[str] | None:
    """``argv`` with every secret flag's value replaced by MASK; None when it has none."""
    out: list[str] = []
    hidden = False
    value_next = False
    for arg in argv:
        if value_next:
            out.append(MASK)
            value_next, hidden = False, True
            continue
        flag, eq, _value = arg.partition("=")
        if _is_secret_flag(flag):
            if eq:
                out.append(f"{flag}={MASK}")
                hidden = True
            else:
                out.append(arg)
                value_next = True
            continue
        out.append(arg)
    return out if hidden else None


def hide_secrets(prog: str) -> None:
    """Rewrite this process's command line without the secrets it holds, and warn that they were visible."""
    cover = masked(sys.orig_argv)
    if cover is None:
        return
    try:
        import setproctitle
    except ImportError:
        sys.stderr.write(
            f"{prog}: warning: --password stays visible to other users of this machine (in the process list) "
            "while this runs; use --password-stdin or NEO_PASSWORD\n"
        )
        return
    setproctitle.setproctitle(" ".join(cover))
    sys.stderr.write(
        f"{prog}: warning: --password was visible to other users of this machine (in the process list) as this "
        "started; it is hidden now, but prefer --password-stdin or NEO_PASSWORD\n"
    )
