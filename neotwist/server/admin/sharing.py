"""``neo-admin``'s sharing commands: quotas (``account set``), ``account show`` and ``account remove``, grants and
targets."""

from __future__ import annotations

import argparse
from pathlib import Path

from neotwist.server.accounts import AccountStore, Grant
from neotwist.server.admin.common import Failed, confirm, print_json, require_account
from neotwist.server.repository import Repository
from neotwist.server.rights import Right
from neotwist.sizes import parse_size


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


def run_sharing(data: Path, store: AccountStore, cmd: tuple[str, str | None], args: argparse.Namespace) -> None:
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
        a = require_account(store, args.name)
        repository = _open_repository(data)
        try:
            usage = account_usage(repository, a, count_versions=True)
        finally:
            repository.close()
        subs = store.sub_accounts(a.name)
        given, held = store.grants_given(a.id), store.grants_held(a.id)
        keys = store.keys(a.name)
        if args.json:
            print_json(
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
        a = require_account(store, args.name)
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
        grantee = require_account(store, args.grantee)
        owner_account = require_account(store, owner)
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
            a = require_account(store, args.account)
            grants = store.grants_given(a.id) + store.grants_held(a.id)
        else:
            grants = store.all_grants()
        if args.json:
            print_json([_grant_json(g) for g in grants])
        else:
            for g in grants:
                print(g.describe())
    elif cmd == ("target", "list"):
        a = require_account(store, args.account)
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
            print_json(rows)
        else:
            for row in rows:
                stored_bytes = row["stored_bytes"]
                assert isinstance(stored_bytes, int)
                print(f"{row['name']}\tsnapshots={row['snapshots']}\tstored={human(stored_bytes)}")
    elif cmd == ("target", "remove"):
        a = require_account(store, args.account)
        repository = _open_repository(data)
        try:
            target = repository.find_target(a.id, args.target)
            if target is None:
                raise Failed(f"{a.name} has no target {args.target!r} (see: neo-admin target list {a.name})")
            snapshots, stored = target.snapshot_count(), target.usage().stored_bytes
            confirm(
                f"remove target {args.target!r} of {a.name} with {snapshots} snapshot(s) and {human(stored)}?",
                args.yes,
            )
            dropped = store.drop_target_grants(a.id, args.target)
            repository.remove_target(target)
        finally:
            repository.close()
        if args.json:
            print_json({"account": a.name, "target": args.target, "snapshots": snapshots, "stored_bytes": stored,
                         "grants_removed": dropped})  # fmt: skip
        else:
            print(f"removed target {args.target} of {a.name}: {snapshots} snapshot(s), {human(stored)}, "
                  f"{dropped} grant(s)")  # fmt: skip
    else:  # pragma: no cover
        raise AssertionError(cmd)
