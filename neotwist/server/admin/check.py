"""``neo-admin check``: every target of the repository checked read-only, beside a running server (``--repair``
writes only the index rows that mark damaged chunks)."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

from neotwist.server.admin.common import EXIT_FAILED, EXIT_OK, Failed, print_json, size
from neotwist.server.repository import CheckReport, Repository, Target, TargetMeta
from neotwist.server.repository.index import connect_read_only
from neotwist.server.repository.space import Ballast, human


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
        print_json(
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
        print(f"{where}: {r.chunks_checked} chunks, {size(r.bytes_checked)} checked: {state}")
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
    summary = f"checked {len(results)} target{'s' if len(results) != 1 else ''}, {chunks} chunks, {size(stored)}" + (
        " (data verified)" if args.verify_data else ""
    )
    if ok:
        print(f"{summary}: no damage found")
    else:
        print(f"{summary}: {files} damaged files in {snapshots} snapshots, {problems} problems")
    return EXIT_OK if ok else EXIT_FAILED
