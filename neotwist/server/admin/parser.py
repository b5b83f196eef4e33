"""``neo-admin``'s command line: every group, command and option, with its help."""

from __future__ import annotations

import argparse
from pathlib import Path

from neotwist import __version__
from neotwist.server.accounts import BCRYPT_ROUNDS
from neotwist.server.admin.common import STDIN_HELP
from neotwist.server.rights import RIGHTS_TEXT, Right
from neotwist.tap import DEFAULT_DATA


def parser() -> argparse.ArgumentParser:
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
