"""Seeded fuzzing of both ends: mutated frames of every message type, sent to an in-memory server session
(logged in, and not yet logged in) and to a client's Peer.

Every message type is built from its own schema (msgspec.inspect) with random values inside its bounds, then
encoded and mutated: bits flipped, bytes replaced with msgpack markers that announce huge lengths, cut short,
padded, spliced with another frame, or framed with a wrong length. The assertions: nothing is logged as a
failure (a traceback, an unhandled error, a handler that raised something unexpected), no exception escapes
``dataReceived``, and what either end holds stays within its bounds (and memory overall, by tracemalloc). The
seed is fixed, so a failure reproduces; ``NEO_FUZZ_SEED`` and ``NEO_FUZZ_ROUNDS`` explore further.
"""

from __future__ import annotations

import gc
import os
import random
import struct
import tracemalloc
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.test.iosim import connectedServerAndClient

from neotwist.client.connect import ClientHandler as _ClientHandler
from neotwist.server.session import make_server_peer
from neotwist.testing import Client, Kit
from neotwist.wire import limits, messages
from neotwist.wire.messages import Hello, ListTargets, Message, Welcome
from neotwist.wire.peer import Peer

SEED = int(os.environ.get("NEO_FUZZ_SEED", "20261207"))
ROUNDS = int(os.environ.get("NEO_FUZZ_ROUNDS", "300"))
MESSAGE_TYPES: list[type[Message]] = list(typing.get_args(messages.AnyMessage))
MiB = 1024 * 1024

_STRINGS = ["", "t", "a", "a/b", "..", "/x", "alice", "fastcdc2020", "read", "x" * 300, "é/ü", "\x00"]


def _value(t: Any, rng: random.Random, depth: int = 0) -> Any:
    """A random value of msgspec type info ``t``, inside its bounds."""
    mi = msgspec.inspect
    if isinstance(t, mi.IntType):
        lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else -(2**63))
        hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else 2**63 - 1)
        return rng.choice([lo, hi, min(hi, lo + 1), rng.randint(lo, min(hi, lo + 4096))])
    if isinstance(t, mi.StrType):
        lo, hi = t.min_length or 0, t.max_length if t.max_length is not None else 64
        s = rng.choice(_STRINGS)
        if not lo <= len(s) <= hi:
            s = "t" * max(lo, min(hi, 1))
        return s
    if isinstance(t, mi.BytesType):
        lo, hi = t.min_length or 0, t.max_length if t.max_length is not None else 64
        return rng.randbytes(rng.choice([lo, min(hi, lo + rng.randint(0, 96))]))
    if isinstance(t, mi.BoolType):
        return rng.random() < 0.5
    if isinstance(t, mi.FloatType):
        return rng.choice([0.0, 1.5, 1e9, rng.random() * 1e6])
    if isinstance(t, mi.LiteralType):
        return rng.choice(t.values)
    if isinstance(t, mi.NoneType):
        return None
    if isinstance(t, mi.UnionType):
        return _value(rng.choice(t.types), rng, depth)
    if isinstance(t, mi.ListType):
        hi = t.max_length if t.max_length is not None else 4
        n = (t.min_length or 0) if depth > 2 else rng.randint(t.min_length or 0, min(hi, 3))
        return [_value(t.item_type, rng, depth + 1) for _ in range(n)]
    if isinstance(t, mi.TupleType):
        return tuple(_value(item, rng, depth + 1) for item in t.item_types)
    if isinstance(t, mi.StructType):
        return _build(t, rng, depth + 1)
    raise AssertionError(f"no generator for {t!r}")


def _build(info: Any, rng: random.Random, depth: int = 0) -> Any:
    kwargs = {f.name: _value(f.type, rng, depth) for f in info.fields}
    return info.cls(**kwargs)


def sample(kind: type[Message], rng: random.Random, rid: int) -> bytes:
    """The frame body of a random, valid ``kind`` message."""
    message = _build(msgspec.inspect.type_info(kind), rng)
    message.rid = rid
    return messages.encode(message)


_MARKERS = [0x00, 0xFF, 0xC0, 0xC1, 0xCF, 0xD3, 0xDB, 0xDD, 0xDF, 0xC6, 0xCB, 0x9F, 0xBF, 0x7F, 0x80]


def mutate(body: bytes, rng: random.Random, other: bytes) -> bytes:
    data = bytearray(body)
    how = rng.randrange(7)
    if how == 0 and data:  # flip bits
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif how == 1 and data:  # a msgpack marker: huge lengths, nil, reserved bytes
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.choice(_MARKERS)
    elif how == 2:  # cut short
        del data[rng.randrange(len(data) + 1) :]
    elif how == 3:  # padded
        data += rng.randbytes(rng.randint(1, 64))
    elif how == 4:  # spliced with another message
        cut = rng.randrange(len(data) + 1)
        data = data[:cut] + other[rng.randrange(len(other) + 1) :]
    elif how == 5:  # a big length field where a small one was
        if data:
            at = rng.randrange(len(data))
            data[at : at + 1] = bytes([0xDD]) + struct.pack(">I", rng.choice([2**32 - 1, 2**31, 65536]))
    else:
        data = bytearray(rng.randbytes(rng.randint(0, 48)))
    return bytes(data)


def frame(body: bytes, rng: random.Random) -> bytes:
    """``body`` with its length header (sometimes a wrong one: 0, beyond MAX_FRAME, off by some)."""
    length = len(body)
    roll = rng.random()
    if roll < 0.03:
        length = 0
    elif roll < 0.06:
        length = limits.MAX_FRAME + rng.randint(1, 1000)
    elif roll < 0.10:
        length = max(0, length + rng.randint(-8, 8))
    return struct.pack(">I", length) + body


class Failures:
    """Every logged failure or error while fuzzing (a traceback, an unhandled error in a Deferred)."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        if "log_failure" in event or event.get("isError"):
            self.events.append(event)

    def __enter__(self) -> Failures:
        globalLogPublisher.addObserver(cast(ILogObserver, self))
        return self

    def __exit__(self, *exc: object) -> None:
        gc.collect()  # unhandled errors of Deferreds are logged when they are collected
        globalLogPublisher.removeObserver(cast(ILogObserver, self))

    def describe(self) -> str:
        from twisted.logger import formatEvent

        out = []
        for event in self.events[:3]:
            failure = event.get("log_failure")
            out.append(formatEvent(event) + ("\n" + failure.getTraceback() if failure is not None else ""))
        return "\n---\n".join(out)


def _frames(rng: random.Random, kinds: list[type[Message]], rid_parity: int) -> Iterator[bytes]:
    """Mostly mutated messages of random kinds, some left valid (so sessions get past hello and open)."""
    for _ in range(rng.randint(1, 8)):
        kind = rng.choice(kinds)
        rid = rng.choice([0, 1, 2, 3, 2**32 - 1, rng.randrange(2**32)]) | (rid_parity if rng.random() < 0.8 else 0)
        body = sample(kind, rng, rid)
        if rng.random() < 0.7:
            body = mutate(body, rng, sample(rng.choice(kinds), rng, rid))
        yield frame(body, rng)


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = Kit(tmp_path)
    k.account("alice")
    alice = k.connect("alice")
    alice.push({"a/b": b"hello", "c": b"world"}, "t")
    yield k
    k.close()


def test_fuzz_the_server_session(kit: Kit) -> None:
    rng = random.Random(SEED)
    alice = kit.accounts.get("alice")
    tracemalloc.start()
    try:
        with Failures() as failures:
            for round_ in range(ROUNDS):
                logged_in = round_ % 3 != 0  # a third of the sessions are not logged in yet (TLS before login)
                client, server, pump = connectedServerAndClient(
                    lambda: make_server_peer(kit.services, alice if logged_in else None, "fuzz:1"),  # noqa: B023
                    lambda: Peer(Client(), is_client=True),
                )
                if rng.random() < 0.7:  # most sessions say hello first, so the fuzz reaches the handlers
                    hello = Hello(rid=0, version=limits.PROTOCOL_VERSION, software="fuzz", window=client.window)
                    client.request(hello).addErrback(lambda _f: None)
                    pump.flush()
                for data in _frames(rng, MESSAGE_TYPES, 1):
                    client.transport.write(data)
                    pump.flush()
                    assert server.held_bytes <= limits.WINDOW + limits.MAX_FRAME
                client.close()
                pump.flush()
                assert not failures.events, f"round {round_} (seed {SEED}):\n{failures.describe()}"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not failures.events, failures.describe()
    assert peak < 64 * MiB, peak


def test_fuzz_the_clients_peer() -> None:
    """A hostile server's frames, mutated, against a client Peer with requests pending of several kinds."""
    rng = random.Random(SEED + 1)
    tracemalloc.start()
    try:
        with Failures() as failures:
            for round_ in range(ROUNDS):
                peer = Peer(_ClientHandler(), is_client=True)
                transport = StringTransport()
                peer.makeConnection(transport)
                hello = Hello(rid=0, version=limits.PROTOCOL_VERSION, software="fuzz", window=peer.window)
                for request in (hello, ListTargets(rid=0), ListTargets(rid=0)):
                    peer.request(request, more=(lambda m: rng.random() < 0.5) if rng.random() < 0.5 else None
                                 ).addErrback(lambda _f: None)  # fmt: skip
                if rng.random() < 0.5:
                    welcome = Welcome(rid=1, version=1, software="s", window=limits.WINDOW, login_required=False,
                                      account="alice")  # fmt: skip
                    peer.dataReceived(frame(messages.encode(welcome), random.Random(0)))
                for data in _frames(rng, MESSAGE_TYPES, 1):
                    cut = rng.randrange(len(data) + 1)  # delivered in two reads, as TCP may
                    peer.dataReceived(data[:cut])
                    peer.dataReceived(data[cut:])
                    assert peer.held_bytes <= limits.WINDOW + limits.MAX_FRAME
                peer.connectionLost()
                assert not failures.events, f"round {round_} (seed {SEED + 1}):\n{failures.describe()}"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not failures.events, failures.describe()
    assert peak < 64 * MiB, peak
