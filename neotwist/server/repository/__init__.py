"""Where pushed data is kept: a content-addressed chunk store and an index of snapshots, per target.

Layout under the repository root (see docs/storage.md)::

    catalog.sqlite                 targets: (account, name) -> numeric id, encryption, chunker parameters
    t<id>/index.sqlite             chunk index, snapshots, file versions (interval model)
    t<id>/packs/<NN>/<NNNNNNNN>.pack   append-only chunk records

Modules, one job each: :mod:`.packs` (pack file format), :mod:`.index` (SQLite
schemas and connections), :mod:`.chunkstore` (one target's packs and chunk rows), :mod:`.target` (one target:
its chunk store and its snapshots), :mod:`.push` (staging and
committing a snapshot), :mod:`.history` (listing snapshots, versions, deleted paths; pruning),
:mod:`.retention` (which snapshots a policy keeps), :mod:`.gc` (garbage collection and pack compaction),
:mod:`.check` (index and store agree), :mod:`.damage` (marking damaged chunks so a push heals them),
:mod:`.space` (free-space reserve and emergency space), :mod:`.filechunks` (whether chunk ids belong to a stored
file, read in windows), :mod:`.view` (a target as a grant's sub-path sees it),
:mod:`.catalog` (the catalog of targets, and the targets open now), :mod:`.records` (the records it hands out and
takes), :mod:`.errors` (what it raises; the session maps them onto the protocol's codes in
:mod:`neotwist.server.errormap`). It imports nothing of the protocol (``tests/test_layers.py``).
"""

from neotwist.server.repository.catalog import Repository
from neotwist.server.repository.chunkstore import Location, StoreSizes
from neotwist.server.repository.push import Push
from neotwist.server.repository.records import (
    CheckReport,
    CommitResult,
    DamagedFile,
    DeletedInfo,
    GcResult,
    PruneResult,
    SnapshotInfo,
    TargetMeta,
    Usage,
    VersionInfo,
)
from neotwist.server.repository.retention import RetentionDecision, RetentionPolicy, decide
from neotwist.server.repository.target import Target

__all__ = [
    "CheckReport",
    "CommitResult",
    "DamagedFile",
    "DeletedInfo",
    "GcResult",
    "Location",
    "PruneResult",
    "Push",
    "Repository",
    "RetentionDecision",
    "RetentionPolicy",
    "SnapshotInfo",
    "StoreSizes",
    "Target",
    "TargetMeta",
    "Usage",
    "VersionInfo",
    "decide",
]
