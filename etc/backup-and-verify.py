#!/usr/bin/env python3
"""Push a directory, check the new snapshot on the server, restore it elsewhere and compare: a nightly backup
with its own proof, written against the public API (docs/api.md).

    backup-and-verify.py [-i KEY] [--known-hosts FILE] [--accept-new-host-key] LOCAL_DIR REMOTE RESTORE_DIR

REMOTE is [ssh://|tls://]USER@HOST[:PORT]/TARGET (a password comes from NEO_PASSWORD when the server asks).
Prints one JSON line; exits 0 when the restored tree matches LOCAL_DIR byte for byte, 1 otherwise.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import sys
from pathlib import Path
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react

from neotwist.client import api


def differences(left: str, right: str) -> list[str]:
    """Paths whose content or presence differs between two trees."""
    out: list[str] = []
    cmp = filecmp.dircmp(left, right)
    out += [os.path.join(left, p) for p in cmp.left_only + cmp.right_only + cmp.funny_files]
    for name in cmp.common_files:
        if not filecmp.cmp(os.path.join(left, name), os.path.join(right, name), shallow=False):
            out.append(os.path.join(left, name))
    for name in cmp.common_dirs:
        out += differences(os.path.join(left, name), os.path.join(right, name))
    return out


async def backup_and_verify(client: api.Client, local: str, target: str, restore: str) -> dict[str, Any]:
    """The work itself, on any connected client (a real server's, or neotwist.testing's in-memory one)."""
    pushed = await client.push(local, target)
    report = await client.check(target)
    pulled = await client.pull(target, restore)
    snapshots = await client.snapshots(target)
    return {
        "snapshot": pushed.snapshot,
        "files": pushed.files,
        "new_bytes": pushed.new_bytes,
        "check_ok": report.ok,
        "restored": pulled.files_changed + pulled.files_unchanged,
        "snapshots": [s.id for s in snapshots],
        "differences": differences(local, restore),
    }


async def main(reactor: Any, argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("local")
    p.add_argument("remote")
    p.add_argument("restore")
    p.add_argument("-i", "--identity", action="append", default=[])
    p.add_argument("--known-hosts")
    p.add_argument("--accept-new-host-key", action="store_true")
    args = p.parse_args(argv)
    options = api.ConnectOptions(
        identity_files=args.identity,
        known_hosts=Path(args.known_hosts) if args.known_hosts else None,
        accept_new_host_key=args.accept_new_host_key,
        get_password=lambda: os.environ.get("NEO_PASSWORD"),
    )
    try:
        client = await api.connect(reactor, args.remote, options)
    except api.ConnectError as e:
        print(f"backup-and-verify: {e}", file=sys.stderr)
        raise SystemExit(3 if isinstance(e, api.AccessRefused) else 1) from None
    try:
        result = await backup_and_verify(client, args.local, client.remote.target, args.restore)
    finally:
        await client.close()
    print(json.dumps(result))
    raise SystemExit(0 if result["check_ok"] and not result["differences"] else 1)


if __name__ == "__main__":
    react(lambda reactor: ensureDeferred(main(reactor, sys.argv[1:])))
