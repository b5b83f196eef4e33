"""Worker threads are shared in turn between accounts: one account with many jobs queued (a flood of puts to
verify) delays another's next job by at most one of its own, not by the whole queue (an unrelated login, open
and list took 40 s instead of 0.85 s behind 2 MB of puts of compressed zeros)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.test.iosim import connectedServerAndClient

from neotwist.server.fairness import FairRunner
from neotwist.server.session import make_server_peer
from neotwist.testing import PASSWORD, Client, Kit, Workers, call, chunk
from neotwist.wire import limits
from neotwist.wire.messages import Hello, LoggedIn, Login, Ok, PushBegin, Put
from neotwist.wire.peer import Peer


def test_keys_take_turns() -> None:
    workers = Workers()
    runner = FairRunner(workers.submit, limit=2)
    done: list[str] = []
    for i in range(10):
        runner.run("flood", lambda i=i: f"flood {i}").addCallback(done.append)
    runner.run("other", lambda: "other").addCallback(done.append)
    runner.run(None, lambda: "login").addCallback(done.append)
    assert len(workers.jobs) == 2 and runner.waiting == 10
    for _ in range(5):
        workers.finish_one()
    # the two running went on; then one flood job (its turn came first), "other", the login: not all ten
    assert done == ["flood 0", "flood 1", "flood 2", "other", "login"]
    while workers.jobs:
        workers.finish_one()
    assert len(done) == 12 and runner.running == 0


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = Kit(tmp_path)
    k.account("alice")
    k.account("bob")
    yield k
    k.close()


def test_a_login_waits_for_one_job_of_a_flooding_account_not_all_of_them(kit: Kit) -> None:
    floods = [kit.connect("alice") for _ in range(3)]
    handles = []
    for conn in floods:
        h = conn.open("t", mode="push", create=True).handle
        assert isinstance(conn.call(PushBegin(rid=0, handle=h)), Ok)
        handles.append(h)
    workers = Workers()
    kit.services.run_blocking = FairRunner(workers.submit, limit=1)
    for conn, h in zip(floods, handles, strict=True):
        for _ in range(2):
            for _ in range(4):  # a full batch (PUT_BATCH_BYTES): it goes at once, whatever is being stored
                cid, data = chunk(os.urandom(1024 * 1024))
                conn.post(Put(rid=0, handle=h, id=cid, codec=0, size=len(data), data=data))
            conn.pump.flush()
            kit.clock.advance(0)
    queued = len(workers.jobs) + kit.services.run_blocking.waiting
    assert queued >= 6  # alice's put batches wait for the one worker
    client, _server, pump = connectedServerAndClient(
        lambda: make_server_peer(kit.services, None, "10.0.0.9:5000"), lambda: Peer(Client(), is_client=True)
    )
    call(client, pump, Hello(rid=0, version=limits.PROTOCOL_VERSION, software="t", window=client.window))
    login = client.request(Login(rid=0, account="bob", password=PASSWORD))
    pump.flush()
    # The batch running, alice's turn already due, then bob's: not after the rest of alice's queue.
    assert [workers.finish_one() for _ in range(3)] == ["store_batch", "store_batch", "verify_password"]
    got: list[Any] = []
    login.addBoth(got.append)
    pump.flush()
    assert isinstance(got[0], LoggedIn)
    while workers.jobs:
        workers.finish_one()
        for conn in floods:
            conn.pump.flush()
        kit.clock.advance(0)
