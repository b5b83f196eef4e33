"""neo-share and neo-target: an account owner manages its sub-accounts, grants and targets from the client.

``neo-share REMOTE subaccount add|passwd|key-add|key-remove|remove ...``, ``grant``, ``revoke`` and ``list``
send the account-management requests of protocol version 1 (``sub_add``, ``sub_set``, ``sub_remove``,
``grant``, ``revoke``, ``shares``); the server allows them only on the account's own targets and sub-accounts.
``neo-target remove REMOTE`` removes a target (``remove_target``): it needs the full right on the whole target.

Exit codes as neo-push: 0 done; 1 refused or failed (one line on stderr says why); 2 usage error; 3
authentication or host key refused.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, get_args

from neotwist import paths
from neotwist.client.clibase import (
    EXIT_AUTH,
    EXIT_FAILED,
    Parser,
    add_connection_options,
    add_output_options,
    add_version,
    connect_options,
    open_session,
    start_logging,
)
from neotwist.client.credentials import confirm
from neotwist.client.pins import PinFileError, TargetPin
from neotwist.client.remote import Remote, UsageError, parse_remote
from neotwist.client.remotetarget import RemoteTarget
from neotwist.client.runner import entry_point, react
from neotwist.client.stash import StashError
from neotwist.display import shown, write_json
from neotwist.wire.errors import ErrorCode, NeoError
from neotwist.wire.messages import (
    RIGHTS_TEXT,
    GrantAccess,
    ListShares,
    ListTargets,
    Ok,
    Revoke,
    RightName,
    Shares,
    SubAccountAdd,
    SubAccountRemove,
    SubAccountSet,
    Targets,
)
from neotwist.wire.peer import Peer

RIGHTS = get_args(RightName)

_SHARE_EPILOG = f"""\
REMOTE is [ssh://|tls://]USER@HOST[:PORT] (the account that owns the targets; no /TARGET).

rights: {RIGHTS_TEXT}

examples:
  neo-share alice@nas subaccount add alice.viewer --password-stdin < pw.txt
      create a sub-account (its name starts with your account's name and a dot)
  neo-share alice@nas grant documents/presentations --to alice.viewer --right read --as slides
      alice.viewer sees documents/presentations (and nothing else) as its target "slides", read-only
  neo-share alice@nas subaccount add alice.laptop --ssh-key ~/.ssh/laptop_backup.pub
  neo-share alice@nas grant laptop --to alice.laptop --right append
      a backup key that can add snapshots to "laptop" but never delete, prune or remove anything
  neo-share alice@nas revoke slides --from alice.viewer
  neo-share --json alice@nas list

Changes apply to the sub-account's next request, without a restart.
"""

_TARGET_EPILOG = """\
REMOTE is [ssh://|tls://]USER@HOST[:PORT]/TARGET (no sub-path).

examples:
  neo-target remove alice@nas/old-laptop
      asks for confirmation, then deletes every snapshot and chunk of "old-laptop" and every grant on it
  neo-target remove --yes --json tls://alice@nas/scratch

Removal needs the full right on the whole target and is refused while a push to it is running. On success
this client also forgets its encryption pins of the target (see neo-key forget) for that account at every
port of that host name, ssh's and tls's alike, so a new target of that name may be plaintext. Pins recorded
under another name of the server (an IP address, a longer host name) stay, as do other clients' pins: run
'neo-key forget' with that REMOTE, or on that client.
"""


def _add_options(p: argparse.ArgumentParser) -> None:
    add_connection_options(p)
    add_output_options(p, progress=False)


def share_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="neo-share",
        usage="neo-share [options] REMOTE {subaccount,grant,revoke,list} ...",
        description="Manage your sub-accounts and what they may reach of your targets.",
        epilog=_SHARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_options(p)
    add_version(p)
    p.add_argument("remote", metavar="REMOTE")
    groups = p.add_subparsers(dest="group", metavar="{subaccount,grant,revoke,list}", required=True,
                              parser_class=Parser)  # fmt: skip

    sub = groups.add_parser("subaccount", help="add, change or remove a sub-account")
    sub_cmds = sub.add_subparsers(dest="command", metavar="{add,passwd,key-add,key-remove,remove}", required=True,
                                  parser_class=Parser)  # fmt: skip
    add = sub_cmds.add_parser("add", help="create a sub-account (name: ACCOUNT.something)")
    add.add_argument("name")
    add.add_argument("--password-stdin", dest="new_password_stdin", action="store_true",
                     help="its password from standard input (the line after the login password, when --password-stdin "
                     "is also given before REMOTE)")
    add.add_argument("--no-password", action="store_true", help="no password: SSH keys only")
    add.add_argument("--ssh-key", action="append", default=[], type=Path, metavar="FILE.pub",
                     help="authorize this OpenSSH public key (repeatable)")
    passwd = sub_cmds.add_parser("passwd", help="set a sub-account's password")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", dest="new_password_stdin", action="store_true",
                        help="the new password from standard input")
    passwd.add_argument("--clear", action="store_true", help="remove the password (SSH keys only)")
    key_add = sub_cmds.add_parser("key-add", help="authorize OpenSSH public keys for a sub-account")
    key_add.add_argument("name")
    key_add.add_argument("files", nargs="+", type=Path, metavar="FILE.pub")
    key_remove = sub_cmds.add_parser("key-remove", help="remove a sub-account's key (fingerprint or comment)")
    key_remove.add_argument("name")
    key_remove.add_argument("keys", nargs="+", metavar="FINGERPRINT|COMMENT")
    remove = sub_cmds.add_parser("remove", help="delete a sub-account with its keys and grants")
    remove.add_argument("name")

    grant = groups.add_parser("grant", help="give a sub-account a right on TARGET[/SUBPATH]")
    grant.add_argument("where", metavar="TARGET[/SUBPATH]")
    grant.add_argument("--to", required=True, metavar="NAME", help="the sub-account")
    grant.add_argument("--right", required=True, choices=RIGHTS)
    grant.add_argument("--as", dest="as_name", metavar="NAME",
                       help="the name the sub-account uses for it (default: the target's name)")
    revoke = groups.add_parser("revoke", help="take back a grant")
    revoke.add_argument("name", metavar="GRANT", help="the grant's name (what the sub-account calls it)")
    revoke.add_argument("--from", dest="grantee", required=True, metavar="NAME", help="the sub-account")
    listing = groups.add_parser("list", help="your sub-accounts, the grants you gave and the grants you hold")
    _json_anywhere([add, passwd, key_add, key_remove, remove, grant, revoke, listing])
    return p


def target_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="neo-target",
        usage="neo-target [options] remove REMOTE",
        description="Manage a target as a whole.",
        epilog=_TARGET_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(p)
    p.add_argument("command", choices=["remove"], help="remove: delete a target with all its snapshots and data")
    p.add_argument("remote", metavar="REMOTE")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation (needed without a terminal)")
    _add_options(p)
    return p


def _json_anywhere(parsers: list[argparse.ArgumentParser]) -> None:
    """``--json`` also after the command (it is an option of the whole command line)."""
    for p in parsers:
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def parse_account_remote(text: str) -> Remote:
    """``[ssh://|tls://]USER@HOST[:PORT]``: a remote without a target (a trailing ``/`` is fine)."""
    remote = parse_remote(text, need_target=False)
    if remote.target:
        raise UsageError(f"bad remote {text!r}: give the account only, [ssh://|tls://]USER@HOST[:PORT]")
    return remote


def _read_line(what: str) -> str:
    line = sys.stdin.readline()
    if not line:
        raise UsageError(f"no {what} on standard input")
    return line.rstrip("\r\n")


def _new_password(from_stdin: bool) -> str:
    if from_stdin:
        password = _read_line("new password")
        if not password:
            raise UsageError("the new password on standard input is empty")
        return password
    if not sys.stdin.isatty():
        raise UsageError("no terminal to ask for the new password: use --password-stdin (or --no-password)")
    first = getpass.getpass("New password: ")
    if getpass.getpass("Again: ") != first:
        raise UsageError("the passwords differ; nothing was changed")
    return first


def _key_lines(files: list[Path]) -> list[str]:
    lines: list[str] = []
    for path in files:
        try:
            text = path.expanduser().read_text("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read {path}: {e}") from None
        found = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
        if not found:
            raise UsageError(f"{path} holds no public key: give an OpenSSH .pub file")
        lines += found
    return lines


def _print_json(value: object) -> None:
    write_json(value)


Job = Callable[[Peer], Awaitable[Any]]


def _run(prog: str, args: argparse.Namespace, remote: Remote, options: Any, job: Job) -> int:
    """Connect, run ``job(peer)``, say bye; map failures to exit codes with one line on stderr."""
    start_logging(args.debug)

    async def run(reactor: Any) -> int:
        from neotwist.client.push import describe_error

        client = await open_session(reactor, prog, remote, options)
        if isinstance(client, int):
            return client
        try:
            await job(client.peer)
        except NeoError as e:
            sys.stderr.write(f"{prog}: {describe_error(e)}\n")
            return EXIT_AUTH if e.code in (ErrorCode.AUTH_FAILED, ErrorCode.AUTH_REQUIRED) else EXIT_FAILED
        except (_Declined, StashError) as e:
            sys.stderr.write(f"{prog}: {e}\n")
            return EXIT_FAILED
        finally:
            try:
                await client.close()
            except Exception:  # noqa: S110 - the result is decided; a failing bye changes nothing
                pass
        return 0

    return react(prog, run, tls=remote.scheme == "tls")


class _Declined(Exception):
    """The user said no at a confirmation prompt; nothing was changed."""


def _expect(reply: object, kind: type) -> Any:
    if not isinstance(reply, kind):
        raise NeoError(ErrorCode.PROTOCOL, f"unexpected {type(reply).__name__} reply")
    return reply


def share_main(argv: Sequence[str] | None = None) -> int:
    """neo-share's main: parse, then one request (or a few) on one session."""
    parser = share_parser()
    args = parser.parse_args(argv)
    try:
        remote = parse_account_remote(args.remote)
        options = connect_options(args)  # reads the login password first when it comes from stdin
        request, done = _share_request(args, remote)
    except UsageError as e:
        parser.error(str(e))

    async def job(peer: Peer) -> None:
        reply = await peer.request(request)
        done(reply)

    return _run("neo-share", args, remote, options, job)


def _share_request(args: argparse.Namespace, remote: Remote) -> tuple[Any, Callable[[Any], None]]:
    """The request for the command line, and what to print when it is answered."""
    json_out = args.json

    def ok(text: str, **fields: object) -> Callable[[Any], None]:
        def done(reply: Any) -> None:
            _expect(reply, Ok)
            if json_out:
                _print_json({"ok": True, **fields})
            else:
                print(text)

        return done

    if args.group == "subaccount":
        name = args.name
        if args.command == "add":
            if args.no_password and args.new_password_stdin:
                raise UsageError("--no-password and --password-stdin exclude each other")
            keys = _key_lines(args.ssh_key)
            password = None if args.no_password else _new_password(args.new_password_stdin)
            return SubAccountAdd(rid=0, name=name, password=password, keys=keys), ok(
                f"sub-account {name} added", action="subaccount add", name=name, keys=len(keys)
            )
        if args.command == "passwd":
            if args.clear and args.new_password_stdin:
                raise UsageError("--clear and --password-stdin exclude each other")
            password = None if args.clear else _new_password(args.new_password_stdin)
            message = SubAccountSet(rid=0, name=name, password=password, clear_password=args.clear)
            return message, ok(f"password of {name} {'removed' if args.clear else 'changed'}",
                               action="subaccount passwd", name=name)  # fmt: skip
        if args.command == "key-add":
            keys = _key_lines(args.files)
            return SubAccountSet(rid=0, name=name, add_keys=keys), ok(
                f"{len(keys)} key(s) added to {name}", action="subaccount key-add", name=name, keys=len(keys)
            )
        if args.command == "key-remove":
            return SubAccountSet(rid=0, name=name, remove_keys=list(args.keys)), ok(
                f"{len(args.keys)} key(s) removed from {name}", action="subaccount key-remove", name=name
            )
        return SubAccountRemove(rid=0, name=name), ok(f"sub-account {name} removed", action="subaccount remove",
                                                      name=name)  # fmt: skip
    if args.group == "grant":
        target, _, path = args.where.strip("/").partition("/")
        try:
            where = parse_remote(f"{remote.user}@{remote.bracketed_host}/{target}/{path}")
        except UsageError as e:
            raise UsageError(f"bad TARGET[/SUBPATH] {args.where!r}: {e}") from None
        name = args.as_name or where.target
        grant = GrantAccess(rid=0, grantee=args.to, target=where.target, path=paths.to_wire(where.path),
                            right=args.right, name=args.as_name)  # fmt: skip
        place = where.target + (f"/{where.path}" if where.path else "")
        return grant, ok(
            f"{args.to} has {args.right} on {place} as {name!r}",
            action="grant", grantee=args.to, target=where.target, path=where.path, right=args.right, name=name,
        )  # fmt: skip
    if args.group == "revoke":
        return Revoke(rid=0, grantee=args.grantee, name=args.name), ok(
            f"revoked {args.name!r} from {args.grantee}", action="revoke", grantee=args.grantee, name=args.name
        )

    def listed(reply: Any) -> None:
        shares: Shares = _expect(reply, Shares)
        grants = [
            {
                "grantee": g.grantee,
                "owner": g.owner,
                "target": g.target,
                "path": g.path,
                "right": g.right,
                "name": g.name,
                "created": g.created,
            }
            for g in shares.grants
        ]
        subs = [{"name": s.name, "has_password": s.has_password, "keys": s.keys, "created": s.created}
                for s in shares.sub_accounts]  # fmt: skip
        if json_out:
            _print_json({"sub_accounts": subs, "grants": grants})
            return
        for s in shares.sub_accounts:
            print(f"sub-account  {shown(s.name)}\tpassword={'yes' if s.has_password else 'no'}\tkeys={s.keys}")
        for g in shares.grants:
            where = shown(f"{g.owner}/{g.target}" + (f"/{g.path}" if g.path else ""))
            print(f"grant        {shown(g.grantee)} has {g.right} on {where} as '{shown(g.name)}'")
        if not shares.sub_accounts and not shares.grants:
            print("no sub-accounts and no grants")

    return ListShares(rid=0), listed


def target_main(argv: Sequence[str] | None = None) -> int:
    """neo-target's main: ``remove REMOTE``."""
    parser = target_parser()
    args = parser.parse_args(argv)
    try:
        remote = parse_remote(args.remote)
        if remote.path:
            raise UsageError(f"give the target itself, without a sub-path: {remote.user}@{remote.host}/{remote.target}")
        if not args.yes and not sys.stdin.isatty():
            raise UsageError("removing a target cannot be undone: add --yes (there is no terminal to ask)")
    except UsageError as e:
        parser.error(str(e))
    options = connect_options(args)

    async def job(peer: Peer) -> None:
        listed: Targets = _expect(await peer.request(ListTargets(rid=0)), Targets)
        info = next((t for t in listed.targets if t.name == remote.target), None)
        if info is None:
            raise NeoError(ErrorCode.NO_SUCH_TARGET, f"there is no target {remote.target!r} (neo-ls lists them)")
        whole = await RemoteTarget.open_root(peer, remote.target, need_snapshot=False)
        if not args.yes:
            question = f"remove target {remote.target!r} with {info.snapshots} snapshot(s) and all its data?"
            if not confirm(question):
                raise _Declined("nothing was removed")
        removed = await whole.remove()
        # the target is gone, whichever transport removed it: this client's encryption pins of it (one per
        # address: ssh's port and tls's) would refuse a plaintext target of that name
        try:
            forgotten = TargetPin.for_remote(remote).forget_every_port()
        except PinFileError as e:
            sys.stderr.write(f"neo-target: {e}\n")
            forgotten = []
        if args.json:
            pins = [{"address": p.address, "key_id": p.key_id} for p in forgotten]
            _print_json({"removed": removed.name, "snapshots": removed.snapshots, "stored_bytes": removed.stored_bytes,
                         "pin_forgotten": bool(forgotten), "pins_forgotten": pins})  # fmt: skip
        else:
            said = ", ".join(f"{p.address} key {p.key_id}" for p in forgotten)
            print(f"removed target {removed.name}: {removed.snapshots} snapshot(s), {removed.stored_bytes:,} bytes"
                  + (f"; forgot its encryption pins ({said})" if forgotten else ""))

    return _run("neo-target", args, remote, options, job)


share_entry = entry_point("neo-share", share_main)
target_entry = entry_point("neo-target", target_main)
