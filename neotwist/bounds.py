"""What one snapshot may hold and how a chunk is named: bounds of the stored data itself.

The repository enforces them whoever calls it; the protocol (:mod:`neotwist.wire.limits`, which takes them from
here) refuses more before it is sent, so both speak of the same numbers.
"""

ID_SIZE = 32
"""Chunk ids are 32-byte BLAKE3 digests (keyed for encrypted targets)."""

MAX_CHUNKS_PER_FILE = 1 << 24
"""Chunk ids for one file over all its continuation records (16 Mi chunks, about 512 GiB at 32 KiB)."""

MAX_PUSH_ENTRIES = 20_000_000
"""Entries in one push."""
