"""``neo-admin``: the entry point and the dispatch of its commands; the account and key commands and ``init``."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from twisted.python.usage import UsageError

from neotwist.server.accounts import AccountError, AccountStore, parse_public_key
from neotwist.server.admin.check import check
from neotwist.server.admin.common import EXIT_FAILED, EXIT_OK, Failed, key_lines, print_json, read_password
from neotwist.server.admin.parser import parser
from neotwist.server.admin.sharing import run_sharing
from neotwist.server.repository.errors import RepositoryError
from neotwist.tap import prepare_data_dir
from neotwist.wire.errors import NeoError


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
        print_json(report)
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
        lines = key_lines(args.ssh_key) if args.ssh_key else []
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
            print_json(
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
        for line in key_lines(args.file):
            print(f"{args.name}: key {store.add_key(args.name, line)} added")
    elif cmd == ("key", "remove"):
        print(f"{args.name}: key {store.remove_key(args.name, args.key)} removed")
    elif cmd == ("key", "list"):
        records = store.keys(args.name)
        if args.json:
            print_json(
                [
                    {"fingerprint": k.fingerprint, "type": k.key_type, "comment": k.comment, "added": k.added}
                    for k in records
                ]
            )
        else:
            for k in records:
                print(f"{k.fingerprint}\t{k.key_type}\t{k.comment}")
    elif cmd[0] in ("grant", "target") or cmd in (("account", "show"), ("account", "set"), ("account", "remove")):
        run_sharing(data, store, cmd, args)
    else:  # pragma: no cover - argparse only lets the commands above through
        raise AssertionError(cmd)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = parser().parse_args(argv)  # exits 2 on usage errors
    try:
        status = run(args)
    except (Failed, AccountError, ValueError) as e:
        print(f"neo-admin: {e}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    except (NeoError, RepositoryError) as e:
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
