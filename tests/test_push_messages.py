"""How a push cuts its entries into ``entries`` messages: every message must fit a frame, whatever the files."""

from __future__ import annotations

from neotwist.client.push import take_entry_messages
from neotwist.wire import limits, messages
from neotwist.wire.messages import Entry, PushEntries


def _encoded(part: list[Entry]) -> int:
    return len(messages.encode(PushEntries(rid=1, handle=1, entries=part)))


def test_files_with_long_chunk_lists_never_overflow_a_frame() -> None:
    ids = bytes(range(32)) * limits.MAX_FILE_CHUNK_IDS  # the most one record may carry (2 MiB)
    entries = [Entry(f"big-{i}", "f", 0o644, 0, 1, ids) for i in range(6)]
    entries += [Entry("ü" * 1000 + str(i), "l", 0o777, 0, 0, b"", "ü" * 4000) for i in range(400)]
    expected = [e.path for e in entries]
    parts = take_entry_messages(entries, force=True)
    assert entries == []
    assert [e.path for part in parts for e in part] == expected
    for part in parts:
        assert 0 < len(part) <= limits.MAX_ENTRIES
        assert _encoded(part) <= limits.MAX_FRAME


def test_small_entries_wait_for_a_full_message_unless_forced() -> None:
    entries = [Entry(f"f{i}", "f", 0o644, 0, 0) for i in range(limits.MAX_ENTRIES + 10)]
    parts = take_entry_messages(entries, force=False)
    assert [len(p) for p in parts] == [limits.MAX_ENTRIES]
    assert len(entries) == 10  # kept for the next call
    assert [len(p) for p in take_entry_messages(entries, force=True)] == [10]
    assert entries == []
