"""The state of pushes on one handle: an explicit state machine, kept apart from the work it steers.

A handle opened for pushing runs one push at a time. Its :class:`PushSlot` is either :attr:`Phase.IDLE` (no
push: ``push_begin`` may start one), :attr:`Phase.BEGINNING` (``push_begin``'s work is running: nothing else may
begin) or :attr:`Phase.ACTIVE` (a :class:`PushRun` exists: ``have``, ``put``, ``entries``, ``commit`` and
``abort`` act on it). A commit or an abort ends the run and the slot is idle again. Requests that need a push
and find none are refused here, with the reason, rather than by a check scattered over each handler.

Sans-IO: no thread, reactor or disk. The upload jobs still running on the handle are tracked here too, because
a commit or abort must wait for them, whatever push they belonged to.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock

from neotwist.server.quota import PushCharge
from neotwist.server.repository import Push
from neotwist.wire.errors import ErrorCode, NeoError
from neotwist.wire.messages import Put

PUT_BATCH_BYTES = 4 * 1024 * 1024
"""Chunk bytes collected from consecutive ``put`` messages before one worker job verifies and stores them."""

PUT_BATCH_COUNT = 512
"""Puts collected at most per batch (small chunks)."""

PUT_BATCH_RAW_BYTES = 8 * 1024 * 1024
"""Content bytes (the sizes puts declare) per batch: a 145-byte put of compressed zeros declares 4 MiB, and
verifying it decompresses all of it."""


PUT_JOBS = 1
"""Batches of one handle being stored at once before a partial batch waits: the puts that arrive meanwhile join
it, and it goes when that job is done (a full batch goes at once, as ever). Over SSH an upload arrives a packet
at a time: with a job per read, a 256 MiB first push was stored in 1,800 jobs of 8 chunks, each a thread hop,
two locks and an index look-up per chunk, and thread switches took a quarter of the server's cycles."""


class Phase(enum.Enum):
    IDLE = "idle"
    BEGINNING = "beginning"
    ACTIVE = "active"


@dataclass
class PushRun:
    """One push on a handle, from ``push_begin`` to its commit or abort."""

    push: Push
    charge: PushCharge  # what the push is charged against its owner's quota
    failure: NeoError | None = None  # an upload or staging failed: the push may not commit
    reclaim: bool = False  # a quota refused this push: collect its unreferenced chunks when it ends

    def failed(self, error: NeoError) -> None:
        """Note the first failure of the push's uploads; a quota refusal also marks its chunks for reclaim."""
        if self.failure is None:
            self.failure = error
        if error.code == ErrorCode.QUOTA_EXCEEDED:
            self.reclaim = True


@dataclass(frozen=True)
class BatchLimits:
    """When collected puts go to a worker as one batch: whichever of the three is reached first."""

    data_bytes: int  # put data collected
    raw_bytes: int  # content the puts declare (what verifying them decompresses)
    count: int  # puts


PUT_BATCH = BatchLimits(PUT_BATCH_BYTES, PUT_BATCH_RAW_BYTES, PUT_BATCH_COUNT)


@dataclass
class PutBatch:
    """The puts collected for the next batch, the timer that sends a partial one, and how many of the handle's
    batches are being stored (see :data:`PUT_JOBS`)."""

    puts: list[Put] = field(default_factory=list)
    data_bytes: int = 0
    raw_bytes: int = 0
    timer: Any = None  # the pending callLater that submits a partial batch
    storing: int = 0  # batches taken and not yet stored (or failed)

    def add(self, put: Put) -> None:
        self.puts.append(put)
        self.data_bytes += len(put.data)
        self.raw_bytes += put.size

    def full(self, limits: BatchLimits) -> bool:
        return (
            self.data_bytes >= limits.data_bytes or self.raw_bytes >= limits.raw_bytes or len(self.puts) >= limits.count
        )

    @property
    def may_go_partial(self) -> bool:
        """Whether a partial batch goes now rather than after one of the batches being stored."""
        return self.storing < PUT_JOBS

    def take(self) -> tuple[list[Put], int, int]:
        """(puts, their data bytes, their declared bytes), leaving the batch empty; the timer is cancelled."""
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None
        taken = (self.puts, self.data_bytes, self.raw_bytes)
        self.puts, self.data_bytes, self.raw_bytes = [], 0, 0
        return taken


@dataclass
class PushSlot:
    """Where a handle stands with pushes (see the module's docstring)."""

    phase: Phase = Phase.IDLE
    run: PushRun | None = None
    batch: PutBatch = field(default_factory=PutBatch)
    jobs: set[Deferred[None]] = field(default_factory=set)  # uploads of this handle still running
    admitting: set[Deferred[None]] = field(default_factory=set)  # batches taken, waiting for memory or a job slot
    entries_lock: DeferredLock = field(default_factory=DeferredLock)  # entries are staged in order

    @property
    def in_progress(self) -> bool:
        """A push is beginning or begun (the target cannot be removed meanwhile)."""
        return self.phase is not Phase.IDLE

    def begin(self) -> None:
        """IDLE -> BEGINNING; PROTOCOL when a push is already beginning or begun."""
        if self.phase is not Phase.IDLE:
            raise NeoError(ErrorCode.PROTOCOL, "a push is already in progress on this handle")
        self.phase = Phase.BEGINNING

    def begun(self, run: PushRun) -> None:
        """BEGINNING -> ACTIVE with ``run``."""
        assert self.phase is Phase.BEGINNING, self.phase
        self.phase, self.run = Phase.ACTIVE, run

    def not_begun(self) -> None:
        """BEGINNING -> IDLE: the begin failed or was undone."""
        assert self.phase is Phase.BEGINNING, self.phase
        self.phase = Phase.IDLE

    def active(self, request: str, why: str = "") -> PushRun:
        """The run a ``request`` acts on; PROTOCOL naming the request (and ``why`` it needs one) when no push
        has begun."""
        if self.run is None:
            raise NeoError(ErrorCode.PROTOCOL, f"{request} before push_begin" + (f" ({why})" if why else ""))
        return self.run

    def end(self) -> PushRun | None:
        """ACTIVE -> IDLE (commit or abort); the run that ended, or None when there was none. A push still
        beginning keeps its phase: its own begin settles it."""
        run, self.run = self.run, None
        if self.phase is Phase.ACTIVE:
            self.phase = Phase.IDLE
        return run

    def running_jobs(self) -> Iterator[Deferred[None]]:
        return iter(list(self.jobs))
