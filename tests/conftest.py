"""Fixtures shared by the end-to-end tests (the helpers themselves live in support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sessionkit import Kit
from support import RunningServer

from neotwist.chunking import DEFAULT_PARAMS
from neotwist.server.repository import Repository, Target


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    """A real twistd -n neophytos on loopback ports, stopped after the test."""
    running = RunningServer(tmp_path)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for a module's tests that use targets and files of their own: the suite stays fast."""
    running = RunningServer(tmp_path_factory.mktemp("server"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    """An in-memory server session kit (sessionkit.py) with the account alice."""
    k = Kit(tmp_path)
    k.account("alice")
    yield k
    k.close()


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    """A repository on disk, closed after the test."""
    r = Repository(tmp_path / "repo")
    yield r
    r.close()


@pytest.fixture
def target(repo: Repository) -> Target:
    """A plaintext target of account 7 with the default chunker."""
    return repo.create_target(7, "home", encrypted=False, chunker=DEFAULT_PARAMS)
