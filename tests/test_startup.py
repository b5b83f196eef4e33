"""Start-up work of the modules every client command imports, checked in memory (the commands' own imports are
checked end to end in test_startup_e2e.py)."""

from __future__ import annotations

import inspect

import msgspec

from neotwist.wire import messages


def test_message_annotations_are_objects_not_strings() -> None:
    """msgspec reads every message struct's annotations to build the decoder at import; strings (postponed
    annotations) would each be evaluated again, about 5 ms of every command's start-up."""
    structs = [c for _, c in inspect.getmembers(messages, inspect.isclass) if issubclass(c, msgspec.Struct)]
    assert len(structs) > 60
    for struct in structs:
        for name, annotation in inspect.get_annotations(struct).items():
            assert not isinstance(annotation, str), f"{struct.__name__}.{name}: {annotation!r}"
