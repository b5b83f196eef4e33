"""What the browsing command lines (neo-diff, neo-find, neo-cat) share: their parser, how REMOTE is found
among their positional arguments, and running a body on an open :class:`~neotwist.client.history.History`.

They connect, authenticate and fail as neo-ls does (same flags, one-line errors, exit codes: see
:mod:`neotwist.client.clibase`).
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from neotwist.client.clibase import (
    REMOTE_FORM,
    REPOSITORY_ENV,
    Parser,
    add_connection_options,
    add_key_options,
    add_output_options,
    add_version,
    default_remote,
)
from neotwist.client.encryption import plain_errors
from neotwist.client.history import History, open_for_command
from neotwist.client.remote import Remote, UsageError, parse_remote

if TYPE_CHECKING:
    from neotwist.client.api import Client

EXIT_CODES = """\
exit codes: 0 done; 1 failed (one line on stderr says why); 2 usage error; 3 authentication, host key or
encryption pin refused; 130 interrupted."""


def parser(prog: str, usage: str, description: str, epilog: str) -> Parser:
    p = Parser(
        prog=prog,
        usage=usage,
        description=description,
        epilog=f"REMOTE is {REMOTE_FORM}; it may be left out when {REPOSITORY_ENV} is set.\n\n{epilog}\n{EXIT_CODES}\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("args", nargs="*", metavar="ARG", help=argparse.SUPPRESS)
    add_version(p)
    add_connection_options(p)
    add_output_options(p, progress=False)
    add_key_options(p)
    return p


def split_remote(
    p: Parser, args: argparse.Namespace, names: Sequence[str], optional: int = 0
) -> tuple[Remote, list[str]]:
    """(REMOTE, the other positionals named ``names``) from ``args.args``: REMOTE comes first, or from
    NEO_REPOSITORY when exactly ``len(names)`` positionals are given (the last ``optional`` may be left out)."""
    given = list(args.args)
    least = len(names) - optional
    env = default_remote()
    if least <= len(given) <= len(names) and env is not None:
        text, rest = env, given
    elif least + 1 <= len(given) <= len(names) + 1:
        text, rest = given[0], given[1:]
    else:
        shown = " ".join(names[:least]) + "".join(f" [{n}]" for n in names[least:])
        p.error(f"expected REMOTE {shown} (REMOTE may be left out when {REPOSITORY_ENV} is set)")
    try:
        return parse_remote(text), rest
    except UsageError as e:
        p.error(str(e))


def run(prog: str, args: argparse.Namespace, remote: Remote, body: Callable[[History], Awaitable[int]]) -> int:
    """Connect to ``remote``, open it for reading, run ``body``, close; failures become one line and an exit
    code as in neo-ls."""
    from neotwist.client.stashcli import _run

    async def opened(client: Client) -> int:
        history = await open_for_command(client.peer, args, remote)
        with plain_errors(history.crypt):  # errors from the server name plaintext paths
            try:
                return await body(history)
            finally:
                try:
                    await history.close()
                except Exception:  # noqa: S110 - the result is decided; a failing close changes nothing
                    pass

    return _run(prog, args, remote, opened)
