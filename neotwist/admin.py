"""``neo-admin``: manage the server's accounts, SSH keys, sub-accounts, grants, quotas and targets, and check its
repository, also while the server runs.

It works on the same SQLite account store as the server (``DATA/accounts.sqlite``); the server reads it on
every login and every open, so changes take effect at once. ``target`` and ``account show`` also read the
repository (``DATA/repo``); ``neo-admin check`` reads it without writing anything (``--repair`` writes only the
index rows that mark damaged chunks). Exit status: 0 done (check: nothing damaged or lost), 1 the operation
failed or check found damage (one line on stderr says why and what to do), 2 usage error.
"""

from __future__ import annotations

import argparse
import getpass
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from twisted.python.usage import UsageError

from neotwist import __version__
from neotwist.display import write_json
from neotwist.server.accounts import BCRYPT_ROUNDS, Account, AccountError, AccountStore, Grant, parse_public_key
from neotwist.server.repository import CheckReport, Repository, Target, TargetMeta
from neotwist.server.repository.index import connect_read_only
from neotwist.server.repository.space import Ballast, human
from neotwist.server.rights import RIGHTS_TEXT, Right
from neotwist.sizes import parse_size
from neotwist.tap import DEFAULT_DATA, prepare_data_dir
from neotwist.wire.errors import NeoError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

STDIN_HELP = "read the password from the first line of stdin (no prompt)"


class Failed(Exception):
    """The operation could not be done; the message is printed as is."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neo-admin",
        description="Manage Neophytos server accounts, SSH keys, sub-accounts, grants, quotas and targets, and "
        "check the stored backups. Safe to run while the server runs: changes apply to the next login or "
        "operation; check only reads.",
        epilog="Examples:\n"
        "  neo-admin --data /srv/neophytos account add alice --ssh-key ~alice/.ssh/id_ed25519.pub\n"
        "  printf '%s\\n' \"$PW\" | neo-admin --data /srv/neophytos account passwd alice --password-stdin\n"
        "  neo-admin --data /srv/neophytos key list alice --json\n"
        "  neo-admin --data /srv/neophytos account set alice --quota 100GB --per-file 4KiB --per-dir 4KiB\n"
        "  neo-admin --data /srv/neophytos account add alice.viewer --parent alice --password-stdin\n"
        "  neo-admin --data /srv/neophytos grant add alice.viewer alice/documents/presentations --right read\n"
        "  neo-admin --data /srv/neophytos account show alice\n"
        "  neo-admin --data /srv/neophytos target remove alice old-laptop --yes\n"
        "  neo-admin --data /srv/neophytos check alice home --verify-data\n"
        "See docs/admin.md for the operator's guide.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s (Neophytos) {__version__}")
    parser.add_argument(
        "--data",
        default=DEFAULT_DATA,
        metavar="DIR",
        help=f"the server's data directory, as given to twistd neophytos --data (default: {DEFAULT_DATA})",
    )
    parser.add_argument("--bcrypt-rounds", type=int, default=BCRYPT_ROUNDS, help=argparse.SUPPRESS)
    groups = parser.add_subparsers(dest="group", metavar="{init,account,key,grant,target,check}", required=True)

    init = groups.add_parser(
        "init",
        help="prepare the data directory and a first account; print how to connect",
        description="Create the data directory, the SSH host key and the TLS certificate now (the server "
        "would on its first start), and, when there is no account yet, a first account with a generated "
        "password shown once on this terminal. Prints the fingerprints to check and a neo-push line to try.",
    )
    init.add_argument("--account", default="demo", help="name of the first account (default: demo)")
    init.add_argument("--host", default="localhost", help="host name to show in the example (default: localhost)")
    init.add_argument("--ssh-port", type=int, default=4322, help="SSH port to show in the example")
    init.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    account = groups.add_parser("account", help="add, list, show, set, remove accounts; change passwords")
    account_cmds = account.add_subparsers(
        dest="command", metavar="{add,list,show,set,passwd,remove}", required=True
    )

    add = account_cmds.add_parser(
        "add",
        help="create an account",
        description="Create an account. It gets a password (prompted twice, or --password-stdin) unless "
        "--no-password is given; --ssh-key authorizes a public key at once.",
    )
    add.add_argument("name", help="account name: letters, digits, '.', '_', '-'")
    how = add.add_mutually_exclusive_group()
    how.add_argument("--password-stdin", action="store_true", help=STDIN_HELP)
    how.add_argument("--no-password", action="store_true", help="no password: log in with SSH keys only")
    add.add_argument("--ssh-key", metavar="FILE.pub", type=Path, help="authorize this OpenSSH public key")
    add.add_argument("--parent", metavar="OWNER",
                     help="make it a sub-account of OWNER: no targets of its own, reaches what OWNER grants it, "
                     "managed by OWNER (neo-share)")  # fmt: skip

    listing = account_cmds.add_parser("list", help="list accounts")
    listing.add_argument("--json", action="store_true", help="print a JSON array")

    show = account_cmds.add_parser("show", help="an account: quota and usage, keys, sub-accounts, grants")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print one JSON object")

    setq = account_cmds.add_parser(
        "set",
        help="set an account's quota and per-entry charges",
        description="Set SpaceQuota (--quota), SpacePerFile (--per-file) and SpacePerDir (--per-dir): usage is "
        "the bytes stored for all the account's targets and kept history, plus the per-file and per-dir charge "
        "for every file and directory version kept. Sizes are bytes or 100MB, 1GiB, 4KiB...; --quota none "
        "removes the limit. Applies to the next push at once.",
    )
    setq.add_argument("name")
    setq.add_argument("--quota", "--space-quota", "--SpaceQuota", dest="quota", metavar="SIZE|none")
    setq.add_argument("--per-file", "--space-per-file", "--SpacePerFile", dest="per_file", metavar="SIZE")
    setq.add_argument("--per-dir", "--space-per-dir", "--SpacePerDir", dest="per_dir", metavar="SIZE")

    remove = account_cmds.add_parser(
        "remove", help="delete an account (with its keys, sub-accounts and grants; it must own no targets)"
    )
    remove.add_argument("name")

    passwd = account_cmds.add_parser("passwd", help="set an account's password")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true", help=STDIN_HELP)

    key = groups.add_parser("key", help="add, remove, list an account's SSH public keys")
    key_cmds = key.add_subparsers(dest="command", metavar="{add,remove,list}", required=True)
    key_add = key_cmds.add_parser("add", help="authorize the public key(s) in an OpenSSH .pub file")
    key_add.add_argument("name")
    key_add.add_argument("file", metavar="FILE.pub", type=Path)
    key_remove = key_cmds.add_parser("remove", help="remove a key by fingerprint (SHA256:...) or comment")
    key_remove.add_argument("name")
    key_remove.add_argument("key", metavar="FINGERPRINT|COMMENT")
    key_list = key_cmds.add_parser("list", help="list an account's keys")
    key_list.add_argument("name")
    key_list.add_argument("--json", action="store_true", help="print a JSON array")

    grant = groups.add_parser("grant", help="give, take back and list rights on other accounts' targets")
    grant_cmds = grant.add_subparsers(dest="command", metavar="{add,remove,list}", required=True)
    grant_add = grant_cmds.add_parser(
        "add",
        help="give GRANTEE a right on OWNER/TARGET[/SUBPATH]",
        description="Give GRANTEE a right on a sub-path of OWNER's target; the sub-path becomes GRANTEE's root "
        f"there. Rights: {RIGHTS_TEXT}. GRANTEE reaches it as --as NAME (default: the target's name), which must "
        "not be one of GRANTEE's own targets. Granting the same place under the same name again changes the "
        "right. The target need not exist yet (an append grant can create it with the first push).",
    )
    grant_add.add_argument("grantee")
    grant_add.add_argument("where", metavar="OWNER/TARGET[/SUBPATH]")
    grant_add.add_argument("--right", required=True, choices=[r.label for r in Right])
    grant_add.add_argument("--as", dest="as_name", metavar="NAME", help="the name GRANTEE uses for it")
    grant_remove = grant_cmds.add_parser("remove", help="take back GRANTEE's grant NAME")
    grant_remove.add_argument("grantee")
    grant_remove.add_argument("name")
    grant_list = grant_cmds.add_parser("list", help="list grants (all, or those given or held by ACCOUNT)")
    grant_list.add_argument("account", nargs="?")
    grant_list.add_argument("--json", action="store_true", help="print a JSON array")

    target = groups.add_parser("target", help="list or remove an account's targets")
    target_cmds = target.add_subparsers(dest="command", metavar="{list,remove}", required=True)
    target_list = target_cmds.add_parser("list", help="an account's targets with snapshots and stored bytes")
    target_list.add_argument("account")
    target_list.add_argument("--json", action="store_true", help="print a JSON array")
    target_remove = target_cmds.add_parser(
        "remove",
        help="delete a target with all its snapshots and data",
        description="Delete ACCOUNT's target TARGET: every snapshot and chunk, and every grant on it. Cannot be "
        "undone. Asks for confirmation on a terminal; --yes skips that (needed without a terminal). On a "
        "running server, prefer the client's neo-target remove (refused while a push runs); a push committing "
        "at the moment neo-admin removes the target is lost with it.",
    )
    target_remove.add_argument("account")
    target_remove.add_argument("target")
    target_remove.add_argument("--yes", action="store_true", help="do not ask")
    target_remove.add_argument("--json", action="store_true", help="print one JSON object")

    check = groups.add_parser(
        "check",
        help="check that stored backups are whole (read-only unless --repair; safe while the server runs)",
        description="Check every target (or one account's, or one target): the index and the pack files agree "
        "and every stored record reads back with a good checksum; with --verify-data every chunk is also "
        "decompressed and hashed against its id (plaintext targets; encrypted ones can only be verified by a "
        "restore). Prints each damaged file with the snapshots that hold it, and any problem. Exit status 0 "
        "when nothing is damaged or lost, 1 otherwise. Nothing is written, unless --repair: then the damaged "
        "chunks found are marked, so the next push of the intact files sends them again and heals every "
        "snapshot; until then they are listed as lost.",
        epilog="Examples:\n"
        "  neo-admin --data /srv/neophytos check\n"
        "  neo-admin --data /srv/neophytos check alice home --verify-data --json\n"
        "  neo-admin --data /srv/neophytos check alice home --verify-data --repair",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("account", nargs="?", help="only this account's targets")
    check.add_argument("target", nargs="?", help="only this target of the account")
    check.add_argument("--verify-data", action="store_true", help="also decompress and hash every chunk (slower)")
    check.add_argument("--repair", action="store_true", help="mark the damaged chunks found, so the next push of the "
                       "intact files heals them (writes those index rows only)")  # fmt: skip
    check.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def read_password(from_stdin: bool) -> str:
    """The new password: the first line of stdin, or typed twice at a prompt."""
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
        if not password:
            raise Failed("no password on stdin: pipe it in as the first line (printf '%s\\n' \"$PW\" | ...)")
        return password
    if not sys.stdin.isatty():
        raise Failed("no terminal to ask for a password: use --password-stdin (or --no-password)")
    first = getpass.getpass("New password: ")
    if getpass.getpass("Again: ") != first:
        raise Failed("the passwords differ; nothing was changed: run the command again")
    return first


def _key_lines(path: Path) -> list[bytes]:
    try:
        text = path.expanduser().read_bytes()
    except OSError as e:
        raise Failed(f"cannot read {path}: {e.strerror}") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith(b"#")]
    if not lines:
        raise Failed(f"{path} holds no public key: give an OpenSSH .pub file (ssh-keygen makes one)")
    return lines


def _print_json(value: object) -> None:
    write_json(value)


def init(data: Path, args: argparse.Namespace) -> None:
    """``neo-admin init``: everything the server needs to start, and a first account if there is none."""
    import secrets

    from neotwist.server import hostkeys
    from neotwist.server.accounts import fingerprint

    try:
        data = prepare_data_dir(data)
    except (OSError, UsageError) as e:
        raise Failed(str(e)) from None
    host_key = hostkeys.load_or_create_host_key(data)
    cert, _key = hostkeys.load_or_create_tls(data)
    store = AccountStore(data / "accounts.sqlite", bcrypt_rounds=args.bcrypt_rounds)
    password = None
    existing = [a.name for a in store.list()]
    if not existing:
        password = secrets.token_urlsafe(12)
        store.add(args.account, password)
    account = args.account if not existing else existing[0]
    port = "" if args.ssh_port == 4322 else f":{args.ssh_port}"
    remote = f"{account}@{args.host}{port}/try"
    report = {
        "data": str(data),
        "account": account,
        "password": password,
        "ssh_host_key": fingerprint(host_key),
        "tls_certificate_sha256": hostkeys.tls_fingerprint(cert),
        "tls_public_key": hostkeys.tls_public_key_fingerprint(cert),
        "remote": remote,
    }
    if args.json:
        _print_json(report)
        return
    print(f"data directory   {data}")
    print(f"SSH host key     {report['ssh_host_key']}")
    print(f"TLS public key   {report['tls_public_key']}   (what tls:// clients pin and show)")
    if password is not None:
        print(f"account          {account}   password {password}   (shown only now; stored as a bcrypt hash)")
        print("try, in another terminal:")
        print(f"  NEO_PASSWORD='{password}' .venv/bin/neo-push --accept-new-host-key docs {remote}")
        print(f"  NEO_PASSWORD='{password}' .venv/bin/neo-pull {remote} /tmp/neo-restore")
    else:
        print(f"accounts         {', '.join(existing)} (new password: neo-admin --data {data} account passwd NAME)")
        print(f"try:  .venv/bin/neo-push --accept-new-host-key docs {remote}")


def _account_names(data: Path) -> dict[int, str]:
    """Account id -> name, read without writing (the account store's own constructor creates its schema)."""
    path = data / "accounts.sqlite"
    if not path.exists():
        return {}
    db = connect_read_only(path)
    try:
        return dict(db.execute("SELECT id, name FROM accounts").fetchall())
    finally:
        db.close()


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError  # pragma: no cover


def _check_one(target: Target, verify_data: bool, show_progress: bool, repair: bool) -> CheckReport:
    if not show_progress:
        return target.check(verify_data, repair=repair)
    from tqdm import tqdm

    with tqdm(desc=target.meta.name, unit="B", unit_scale=True, unit_divisor=1024, leave=False) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        return target.check(verify_data, progress, repair=repair)


def check(data: Path, args: argparse.Namespace) -> int:
    """``neo-admin check``: check targets read-only (``--repair``: mark the damaged chunks found); return the exit
    status (1 if anything is damaged or lost).

    On a full disk with no server running, SQLite cannot open the databases (it needs room for their
    shared-memory files): the check then releases the emergency space the server keeps for exactly this (see
    ``repository/space.py``; the server makes it again once there is room) and tries once more."""
    try:
        return _check(data, args)
    except sqlite3.OperationalError:
        freed = Ballast(data / "repo").release()
        if not freed:
            raise
        print(
            f"neo-admin: the disk is full: released the {human(freed)} of emergency space to read the repository; "
            "free space or prune soon",
            file=sys.stderr,
        )
        return _check(data, args)


def _check(data: Path, args: argparse.Namespace) -> int:
    if args.target is not None and args.account is None:  # pragma: no cover - argparse fills account first
        raise Failed("name the account before the target")
    names = _account_names(data)
    root = data / "repo"
    if args.account is not None and args.account not in names.values():
        raise Failed(f"no such account: {args.account!r} (see: neo-admin account list)")
    if not (root / "catalog.sqlite").exists():
        if args.target is not None:
            raise Failed(f"no target {args.target!r} in account {args.account!r}: nothing is stored yet")
        targets: list[TargetMeta] = []
        repo = None
    else:
        repo = Repository(root, read_only=True)
        targets = repo.target_metas()
    try:
        if args.account is not None:
            wanted = {i for i, n in names.items() if n == args.account}
            targets = [t for t in targets if t.account_id in wanted]
        if args.target is not None:
            targets = [t for t in targets if t.name == args.target]
            if not targets:
                raise Failed(
                    f"no target {args.target!r} in account {args.account!r} (neo-admin check "
                    f"{args.account} lists them all)"
                )
        show_progress = not args.json and sys.stderr.isatty()
        results = []
        for meta in targets:
            assert repo is not None
            target = repo.hold(meta)  # one at a time: many targets never hold many files open
            if target is None:  # removed by the server meanwhile
                continue
            try:
                account = names.get(meta.account_id, f"#{meta.account_id}")
                report = _check_one(target, args.verify_data, show_progress, args.repair)
                results.append((account, meta.name, report))
            finally:
                repo.release(target)
    finally:
        if repo is not None:
            repo.close()
    ok = all(report.ok for _, _, report in results)
    chunks = sum(r.chunks_checked for _, _, r in results)
    stored = sum(r.bytes_checked for _, _, r in results)
    files = sum(len(r.damaged_files) for _, _, r in results)
    if args.json:
        _print_json(
            {
                "ok": ok,
                "verify_data": args.verify_data,
                "repair": args.repair,
                "targets_checked": len(results),
                "chunks_checked": chunks,
                "bytes_checked": stored,
                "damaged_files": files,
                "targets": [
                    {
                        "account": account,
                        "target": name,
                        "ok": r.ok,
                        "chunks_checked": r.chunks_checked,
                        "bytes_checked": r.bytes_checked,
                        "damaged_chunks": [{"id": cid, "why": why} for cid, why in r.damaged_chunks],
                        "damaged_files": [
                            {
                                "path": f.path,
                                "snapshots": f.snapshots,
                                "chunk": f.chunk,
                                "why": f.why,
                                "marked": f.marked,
                            }
                            for f in r.damaged_files
                        ],
                        "damaged_snapshots": r.damaged_snapshots,
                        "marked_chunks": r.marked_chunks,
                        "lost_chunks": r.lost_chunks,
                        "problems": r.problems,
                        "unreferenced_chunks": r.unreferenced_chunks,
                        "notes": r.notes,
                    }
                    for account, name, r in results
                ],
            }
        )
        return EXIT_OK if ok else EXIT_FAILED
    for account, name, r in results:
        where = f"{account}/{name}"
        state = "ok" if r.ok else "DAMAGED"
        print(f"{where}: {r.chunks_checked} chunks, {_size(r.bytes_checked)} checked: {state}")
        for f in r.damaged_files:
            snaps = ", ".join(map(str, f.snapshots)) or "none kept"
            if f.marked:
                print(f"{where}:{f.path}  lost in snapshots {snaps}: {f.why}; push the intact file again to heal it")
            else:
                print(f"{where}:{f.path}  damaged in snapshots {snaps}: {f.why}")
        referenced = {f.chunk for f in r.damaged_files}
        for cid, why in r.damaged_chunks:
            if cid not in referenced:
                print(f"{where}: unreferenced chunk {cid}: {why}")
        for problem in r.problems:
            print(f"{where}: problem: {problem}")
        for note in r.notes:
            print(f"{where}: note: {note}")
        if r.repaired:
            print(f"{where}: repair: marked {r.marked_chunks} chunks; {r.lost_chunks} lost until a push sends them")
    snapshots = sum(len(r.damaged_snapshots) for _, _, r in results)
    problems = sum(len(r.problems) for _, _, r in results)
    summary = f"checked {len(results)} target{'s' if len(results) != 1 else ''}, {chunks} chunks, {_size(stored)}" + (
        " (data verified)" if args.verify_data else ""
    )
    if ok:
        print(f"{summary}: no damage found")
    else:
        print(f"{summary}: {files} damaged files in {snapshots} snapshots, {problems} problems")
    return EXIT_OK if ok else EXIT_FAILED


def run(args: argparse.Namespace) -> int:
    data = Path(args.data).expanduser()
    cmd = (args.group, getattr(args, "command", None))
    if cmd == ("init", None):
        init(data, args)
        return EXIT_OK
    if cmd == ("check", None):
        if not data.is_dir():
            raise Failed(f"no data directory {data}: fix --data (the server's twistd neophytos --data DIR)")
        return check(data, args)
    if cmd == ("account", "add"):
        try:
            data = prepare_data_dir(data)  # the first account may come before the server's first start
        except (OSError, UsageError) as e:
            raise Failed(str(e)) from None
    elif not data.is_dir():
        raise Failed(f"no data directory {data}: fix --data (the server's twistd neophytos --data DIR)")
    store = AccountStore(data / "accounts.sqlite", bcrypt_rounds=args.bcrypt_rounds)

    if cmd == ("account", "add"):
        lines = _key_lines(args.ssh_key) if args.ssh_key else []
        for line in lines:
            parse_public_key(line)  # refuse a bad key file before anything is created
        if args.parent is not None and store.get(args.parent) is None:
            raise Failed(f"no such account: {args.parent!r} (the --parent must exist; see: neo-admin account list)")
        password = None if args.no_password else read_password(args.password_stdin)
        account = store.add(args.name, password, parent=args.parent)
        for line in lines:
            fp = store.add_key(account.name, line)
            print(f"{account.name}: key {fp} added")
        print(
            f"account {account.name} added"
            + ("" if password else " (no password: SSH keys only)")
            + (f" as a sub-account of {account.parent}" if account.parent else "")
        )
    elif cmd == ("account", "list"):
        accounts = store.list()
        if args.json:
            _print_json(
                [
                    {
                        "name": a.name,
                        "created": a.created,
                        "has_password": a.has_password,
                        "keys": len(store.keys(a.name)),
                        "parent": a.parent,
                        "quota": a.quota_bytes,
                        "per_file": a.space_per_file,
                        "per_dir": a.space_per_dir,
                    }
                    for a in accounts
                ]
            )
        else:
            for a in accounts:
                keys = len(store.keys(a.name))
                extra = f"\tparent={a.parent}" if a.parent else ""
                print(f"{a.name}\tpassword={'yes' if a.has_password else 'no'}\tkeys={keys}{extra}")
    elif cmd == ("account", "passwd"):
        if store.get(args.name) is None:
            raise Failed(f"no such account: {args.name!r} (see: neo-admin account list)")
        store.set_password(args.name, read_password(args.password_stdin))
        print(f"password of {args.name} changed")
    elif cmd == ("key", "add"):
        for line in _key_lines(args.file):
            print(f"{args.name}: key {store.add_key(args.name, line)} added")
    elif cmd == ("key", "remove"):
        print(f"{args.name}: key {store.remove_key(args.name, args.key)} removed")
    elif cmd == ("key", "list"):
        records = store.keys(args.name)
        if args.json:
            _print_json(
                [
                    {"fingerprint": k.fingerprint, "type": k.key_type, "comment": k.comment, "added": k.added}
                    for k in records
                ]
            )
        else:
            for k in records:
                print(f"{k.fingerprint}\t{k.key_type}\t{k.comment}")
    elif cmd[0] in ("grant", "target") or cmd in (("account", "show"), ("account", "set"), ("account", "remove")):
        _run_sharing(data, store, cmd, args)
    else:  # pragma: no cover - argparse only lets the commands above through
        raise AssertionError(cmd)
    return EXIT_OK


# --- quotas, sub-accounts, grants, targets ------------------------------------------------------------------


def _grant_json(g: Grant) -> dict[str, object]:
    return {
        "grantee": g.grantee,
        "owner": g.owner,
        "target": g.target,
        "path": g.path,
        "right": g.right.label,
        "name": g.name,
        "created": g.created,
    }


def _open_repository(data: Path) -> Repository:
    return Repository(data / "repo")


def _require_account(store: AccountStore, name: str) -> Account:
    account = store.get(name)
    if account is None:
        raise Failed(f"no such account: {name!r} (see: neo-admin account list)")
    return account


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise Failed("refusing to delete without confirmation: add --yes")
    if input(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise Failed("nothing was removed")


def _run_sharing(data: Path, store: AccountStore, cmd: tuple[str, str | None], args: argparse.Namespace) -> None:
    from neotwist.server.quota import account_usage, human

    if cmd == ("account", "set"):
        changes: dict[str, int | None] = {}
        if args.quota is not None:
            changes["quota"] = parse_size(args.quota, allow_unlimited=True)
        if args.per_file is not None:
            changes["per_file"] = parse_size(args.per_file)
        if args.per_dir is not None:
            changes["per_dir"] = parse_size(args.per_dir)
        if not changes:
            raise Failed("nothing to set: give --quota, --per-file and/or --per-dir")
        a = store.set_quota(args.name, **changes)
        quota = "unlimited" if a.quota_bytes is None else f"{a.quota_bytes:,} bytes"
        print(f"{a.name}: quota {quota}, per file {a.space_per_file:,} bytes, per dir {a.space_per_dir:,} bytes")
    elif cmd == ("account", "show"):
        a = _require_account(store, args.name)
        repository = _open_repository(data)
        try:
            usage = account_usage(repository, a, count_versions=True)
        finally:
            repository.close()
        subs = store.sub_accounts(a.name)
        given, held = store.grants_given(a.id), store.grants_held(a.id)
        keys = store.keys(a.name)
        if args.json:
            _print_json(
                {
                    "name": a.name,
                    "parent": a.parent,
                    "created": a.created,
                    "has_password": a.has_password,
                    "keys": [k.fingerprint for k in keys],
                    "usage": usage.as_json(),
                    "sub_accounts": [s.name for s in subs],
                    "grants_given": [_grant_json(g) for g in given],
                    "grants_held": [_grant_json(g) for g in held],
                }
            )
            return
        print(f"account       {a.name}" + (f" (sub-account of {a.parent})" if a.parent else ""))
        print(f"login         password {'yes' if a.has_password else 'no'}, {len(keys)} SSH key(s)")
        if a.parent:
            print(f"usage         none of its own: what it pushes is charged to {a.parent}")
        else:
            limit = "unlimited" if usage.quota is None else human(usage.quota)
            share = "" if not usage.quota else f" ({100 * usage.used / usage.quota:.1f} %)"
            print(f"usage         {human(usage.used)} of {limit}{share}")
            print(
                f"              stored {human(usage.stored_bytes)}; {usage.file_versions:,} file versions x "
                f"{usage.per_file:,} B; {usage.dir_versions:,} dir versions x {usage.per_dir:,} B"
            )
            for t in usage.targets:
                print(f"  target      {t.name}: {human(t.stored_bytes)}, {t.file_versions:,} file and "
                      f"{t.dir_versions:,} dir versions")  # fmt: skip
        for sub in subs:
            print(f"sub-account   {sub.name}")
        for g in given:
            print(f"grant given   {g.describe()}")
        for g in held:
            print(f"grant held    {g.describe()}")
    elif cmd == ("account", "remove"):
        a = _require_account(store, args.name)
        repository = _open_repository(data)
        try:
            owned = [t.name for t in repository.target_metas(a.id)]
        finally:
            repository.close()
        if owned:
            raise Failed(
                f"{a.name} owns {len(owned)} target(s) ({', '.join(owned[:5])}): remove them first "
                f"(neo-admin target remove {a.name} TARGET)"
            )
        sub_names = [sub.name for sub in store.sub_accounts(a.name)]
        store.remove(a.name)
        print(f"account {a.name} removed" + (f", with its sub-accounts {', '.join(sub_names)}" if sub_names else ""))
    elif cmd == ("grant", "add"):
        owner, _, rest = args.where.partition("/")
        target, _, path = rest.partition("/")
        if not owner or not target:
            raise Failed(f"give the place as OWNER/TARGET[/SUBPATH], not {args.where!r}")
        path = path.rstrip("/")
        name = args.as_name or target
        grantee = _require_account(store, args.grantee)
        owner_account = _require_account(store, owner)
        if not grantee.is_sub_account:
            repository = _open_repository(data)
            try:
                clash = any(t.name == name for t in repository.target_metas(grantee.id))
            finally:
                repository.close()
            if clash:
                raise Failed(f"{grantee.name} has a target called {name!r} itself: choose another name with --as")
        grant, new = store.grant(grantee.name, owner_account.name, target, path, Right.parse(args.right), name)
        print(("granted: " if new else "changed: ") + grant.describe())
    elif cmd == ("grant", "remove"):
        print("revoked: " + store.revoke(args.grantee, args.name).describe())
    elif cmd == ("grant", "list"):
        if args.account:
            a = _require_account(store, args.account)
            grants = store.grants_given(a.id) + store.grants_held(a.id)
        else:
            grants = store.all_grants()
        if args.json:
            _print_json([_grant_json(g) for g in grants])
        else:
            for g in grants:
                print(g.describe())
    elif cmd == ("target", "list"):
        a = _require_account(store, args.account)
        repository = _open_repository(data)
        try:
            rows: list[dict[str, object]] = [
                {
                    "name": t.meta.name,
                    "snapshots": t.snapshot_count(),
                    "stored_bytes": t.usage().stored_bytes,
                    "encrypted": t.meta.encrypted,
                }
                for t in repository.each_target(a.id)
            ]
        finally:
            repository.close()
        if args.json:
            _print_json(rows)
        else:
            for row in rows:
                stored_bytes = row["stored_bytes"]
                assert isinstance(stored_bytes, int)
                print(f"{row['name']}\tsnapshots={row['snapshots']}\tstored={human(stored_bytes)}")
    elif cmd == ("target", "remove"):
        a = _require_account(store, args.account)
        repository = _open_repository(data)
        try:
            target = repository.find_target(a.id, args.target)
            if target is None:
                raise Failed(f"{a.name} has no target {args.target!r} (see: neo-admin target list {a.name})")
            snapshots, stored = target.snapshot_count(), target.usage().stored_bytes
            _confirm(
                f"remove target {args.target!r} of {a.name} with {snapshots} snapshot(s) and {human(stored)}?",
                args.yes,
            )
            dropped = store.drop_target_grants(a.id, args.target)
            repository.remove_target(target)
        finally:
            repository.close()
        if args.json:
            _print_json({"account": a.name, "target": args.target, "snapshots": snapshots, "stored_bytes": stored,
                         "grants_removed": dropped})  # fmt: skip
        else:
            print(f"removed target {args.target} of {a.name}: {snapshots} snapshot(s), {human(stored)}, "
                  f"{dropped} grant(s)")  # fmt: skip
    else:  # pragma: no cover
        raise AssertionError(cmd)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = _parser().parse_args(argv)  # exits 2 on usage errors
    try:
        status = run(args)
    except (Failed, AccountError, ValueError) as e:
        print(f"neo-admin: {e}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    except NeoError as e:
        print(f"neo-admin: {e.message}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    except sqlite3.Error as e:
        what = "the repository" if args.group == "check" else "the account store"
        print(f"neo-admin: {what} in {args.data} cannot be used: {e}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        print("neo-admin: interrupted; nothing more was changed", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    sys.exit(status)
