"""The rights matrix against a real ``twistd``, over SSH and TLS, through the real client library.

Every right (read, append, write, full) x every operation (list, pull, push, push --delete, prune, check,
target removal) x inside and outside the grant. Inside is the grant ``slides`` = alice's
``documents/presentations`` (and for prune and removal, which need the whole target, the grant ``scratch`` =
alice's whole target ``scratch-RIGHT``); outside is ``..`` out of the grant, alice's target by its own name,
and a target of the sub-account's "own". An allowed operation must work; a refused one must fail with a
message naming the missing right (or, outside, the target/path that does not exist for it) and leave the
server exactly as it was: the same snapshots, the same stored bytes, the same files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from support import PASSWORD, RunningServer, assert_clean
from test_admin import admin
from twisted.internet import reactor
from twisted.trial import unittest

from neotwist.client import stash
from neotwist.client.connect import ConnectOptions, Session, connect
from neotwist.client.pull import PullError, PullOptions, pull
from neotwist.client.push import PushError, PushOptions, push
from neotwist.client.remote import Remote
from neotwist.wire.errors import NeoError
from neotwist.wire.messages import Close, List, Listing, ListTargets, Open, Opened, RemoveTarget, TargetRemoved

RIGHTS = ["read", "append", "write", "full"]
LEVEL = {r: i for i, r in enumerate(RIGHTS)}


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def collect(pages: list[Listing]) -> Callable[[Any], bool]:
    """A ``more`` callback for ``list``: keep every page, want more until the one marked done."""

    def more(page: Any) -> bool:
        pages.append(page)
        return not page.done

    return more


class RightsMatrix(unittest.TestCase):
    timeout = 240

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="neo-matrix-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.server = RunningServer(self.tmp)
        self.addCleanup(self.server.stop)
        for right in RIGHTS:
            r = admin(self.server.data, "account", "add", f"alice.{right}", "--parent", "alice", "--password-stdin",
                      stdin=PASSWORD + "\n")  # fmt: skip
            assert r.returncode == 0, r.stderr

    def grant(self, right: str) -> None:
        for where, name in (("alice/documents/presentations", "slides"), (f"alice/scratch-{right}", "scratch")):
            r = admin(self.server.data, "grant", "add", f"alice.{right}", where, "--right", right, "--as", name)
            assert r.returncode == 0, r.stderr

    async def session(self, scheme: str, user: str) -> Session:
        port = self.server.ssh_port if scheme == "ssh" else self.server.tls_port
        remote = Remote(scheme, user, "127.0.0.1", port, "x", "")  # type: ignore[arg-type]
        options = ConnectOptions(
            identity_files=[str(self.server.key)] if user == "alice" else [],
            get_password=lambda: PASSWORD,
            known_hosts=self.tmp / "known_hosts",
            tls_known_hosts=self.tmp / "tls_known_hosts",
            accept_new_host_key=True,
            use_agent=False,
        )
        return await connect(reactor, remote, options)

    async def state(self, alice: Session) -> Any:
        """Everything a refused operation must leave alone: alice's targets, and every file of each."""
        targets = (await alice.peer.request(ListTargets(rid=0))).targets
        out: dict[str, Any] = {}
        for t in targets:
            files: dict[str, tuple[str, int]] = {}
            if t.latest is not None:
                opened = await alice.peer.request(Open(rid=0, target=t.name, path="", mode="read"))
                pages: list[Listing] = []
                await alice.peer.request(List(rid=0, handle=opened.handle, snapshot=None, path=""), collect(pages))
                await alice.peer.request(Close(rid=0, handle=opened.handle))
                files = {e.path: (e.kind, e.size) for p in pages for e in p.entries}
            out[t.name] = (t.snapshots, t.latest, t.stored_bytes, files)
        return out

    async def refused(self, alice: Session, before: Any, op: Awaitable[Any], *words: str) -> None:
        """``op`` (already started) must fail with a text holding every one of ``words``, changing nothing."""
        try:
            await op
        except (NeoError, PushError, PullError, stash.StashError) as e:
            text = getattr(e, "message", None) or str(e)
            for word in words:
                assert word in text, (word, text)
        else:
            raise AssertionError(f"not refused (expected {words})")
        assert await self.state(alice) == before

    async def listing(self, session: Session, target: str) -> set[str]:
        opened = await session.peer.request(Open(rid=0, target=target, path="", mode="read"))
        pages: list[Listing] = []
        await session.peer.request(List(rid=0, handle=opened.handle, snapshot=None, path=""), collect(pages))
        await session.peer.request(Close(rid=0, handle=opened.handle))
        return {e.path for p in pages for e in p.entries}

    async def one_right(self, scheme: str, right: str, alice: Session, docs: Path) -> None:
        who = f"alice.{right}"
        me = await self.session(scheme, who)
        level = LEVEL[right]

        # list and pull, inside: every right
        seen = await self.listing(me, "slides")
        first = {"", "deck.odp", "notes.txt"}
        assert first <= seen and all(x.startswith("by-") for x in seen - first)  # earlier rights' pushes
        out = self.tmp / f"pulled-{scheme}-{right}"
        await pull(reactor, me.peer, "slides", "", str(out), PullOptions())
        assert (out / "deck.odp").read_bytes() == (docs / "presentations/deck.odp").read_bytes()
        assert {"deck.odp", "notes.txt"} <= {p.name for p in out.iterdir()}
        assert not (out / "private").exists() and not (out.parent / "private").exists()

        # check, inside: every right (and it speaks of the grant's files only)
        report = await self.open_then(me, "slides", "", "check")
        # it reads the chunks below the grant's root only (deck, notes, what earlier rights pushed there; the exact
        # count is checked in test_grants_session): never all of the target
        assert report.ok and 2 <= report.chunks_checked and report.files == []

        # list, pull, push, push --delete, check, prune, outside the grant: refused for every right
        before = await self.state(alice)
        local = write_tree(self.tmp / f"new-{scheme}-{right}", {"new.txt": f"by {who}".encode()})
        nowhere = str(self.tmp / "nowhere")
        for target, path, words in [
            ("slides", "../private", ("'..'",)),
            ("documents", "", ("no grant called 'documents'",)),
            ("mine", "", ("no targets of its own",)),
        ]:
            await self.refused(alice, before, me.peer.request(Open(rid=0, target=target, path=path, mode="read")),
                               *words)  # fmt: skip
            await self.refused(alice, before, pull(reactor, me.peer, target, path, nowhere, PullOptions()), *words)
            await self.refused(alice, before, push(reactor, me.peer, str(local), target, path, PushOptions()), *words)
            sync = PushOptions(delete=True)
            await self.refused(alice, before, push(reactor, me.peer, str(local), target, path, sync), *words)
            await self.refused(alice, before, self.open_then(me, target, path, "check"), *words)
            await self.refused(alice, before, self.open_then(me, target, path, "prune"), *words)

        # push inside: append and up
        if level >= LEVEL["append"]:
            done = await push(reactor, me.peer, str(local), "slides", f"by-{right}", PushOptions())
            assert done.snapshot > 0
        else:
            await self.refused(alice, before, push(reactor, me.peer, str(local), "slides", "", PushOptions()),
                               f"push needs the append right on slides; {who} has {right}")  # fmt: skip
        # push --delete inside: write and up
        before = await self.state(alice)
        if level >= LEVEL["write"]:
            await push(reactor, me.peer, str(local), "slides", f"by-{right}", PushOptions(delete=True))
        else:
            missing = "append" if level < LEVEL["append"] else "write"
            await self.refused(alice, before,
                               push(reactor, me.peer, str(local), "slides", "", PushOptions(delete=True)),
                               f"needs the {missing} right on slides; {who} has {right}")  # fmt: skip
        # prune: never through a sub-path grant, even full; on the whole target only with full
        before = await self.state(alice)
        await self.refused(alice, before, self.open_then(me, "slides", "", "prune"),
                           "prune applies to a whole target" if level == LEVEL["full"] else
                           f"prune needs the full right on slides; {who} has {right}")  # fmt: skip
        if right == "full":
            kept = await self.open_then(me, "scratch", "", "prune")
            assert kept.kept == 1 and kept.removed == 1
        else:
            await self.refused(alice, before, self.open_then(me, "scratch", "", "prune"),
                               f"prune needs the full right on scratch; {who} has {right}")  # fmt: skip
        # target removal: never through a sub-path grant, even full; on the whole target only with full
        before = await self.state(alice)
        sub = await me.peer.request(Open(rid=0, target="slides", path="", mode="read"))
        await self.refused(alice, before, me.peer.request(RemoveTarget(rid=0, handle=sub.handle)),
                           "removing a target needs the full right on all of it")  # fmt: skip
        whole = await me.peer.request(Open(rid=0, target="scratch", path="", mode="read"))
        assert isinstance(whole, Opened)
        if right == "full":
            removed = await me.peer.request(RemoveTarget(rid=0, handle=whole.handle))
            assert isinstance(removed, TargetRemoved) and removed.name == "scratch"
            assert f"scratch-{right}" not in await self.state(alice)
        else:
            await self.refused(alice, before, me.peer.request(RemoveTarget(rid=0, handle=whole.handle)),
                               f"removing the target needs the full right on scratch; {who} has {right}")  # fmt: skip
        await me.close()

    async def open_then(self, me: Session, target: str, path: str, what: str) -> Any:
        """Open ``target``/``path`` for reading, then run ``check`` or ``prune`` (keep the newest only) on it."""
        opened = await me.peer.request(Open(rid=0, target=target, path=path, mode="read"))
        if what == "check":
            return await stash.check(me.peer, opened.handle, False)
        return await stash.prune(me.peer, opened.handle, {"keep_last": 1}, False)

    async def matrix(self, scheme: str) -> None:
        alice = await self.session(scheme, "alice")
        docs = write_tree(self.tmp / "docs", {
            "presentations/deck.odp": os.urandom(40_000), "presentations/notes.txt": b"notes\n" * 100,
            "private/salary.txt": b"a secret number\n",
        })  # fmt: skip
        await push(reactor, alice.peer, str(docs), "documents", "", PushOptions())
        for right in RIGHTS:
            scratch = write_tree(self.tmp / f"scratch-{right}", {"s.txt": right.encode()})
            await push(reactor, alice.peer, str(scratch), f"scratch-{right}", "", PushOptions())
            (scratch / "s.txt").write_bytes(b"second " + right.encode())
            await push(reactor, alice.peer, str(scratch), f"scratch-{right}", "", PushOptions())
            self.grant(right)
        for right in RIGHTS:
            await self.one_right(scheme, right, alice, docs)

        # what the allowed pushes did, seen by the owner: each below its own sub-path of presentations
        final = (await self.state(alice))["documents"][3]
        assert {p for p in final if "by-" in p} == {
            "presentations/by-append", "presentations/by-append/new.txt",
            "presentations/by-write", "presentations/by-write/new.txt",
            "presentations/by-full", "presentations/by-full/new.txt",
        }  # fmt: skip
        assert "private/salary.txt" in final
        await alice.close()
        assert_clean(self.server.log_text())

    async def test_over_ssh(self) -> None:
        await self.matrix("ssh")

    async def test_over_tls(self) -> None:
        await self.matrix("tls")
