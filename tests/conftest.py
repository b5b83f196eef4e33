"""Fixtures shared by the end-to-end tests (the helpers themselves live in support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import RunningServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    """A real twistd -n neophytos on loopback ports, stopped after the test."""
    running = RunningServer(tmp_path)
    try:
        yield running
    finally:
        running.stop()
