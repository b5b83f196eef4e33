"""Fixtures shared by the tests (the end-to-end helpers themselves live in support.py), and the ``process``
marker: every test that starts a real process (twistd, OpenSSH, a CLI, a Python child) is marked here, from
what it uses, so ``pytest -m "not process"`` (``make test-fast``) runs the in-memory set alone."""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import RunningServer

from neotwist.chunking import DEFAULT_PARAMS
from neotwist.server.repository import Repository, Target
from neotwist.testing import Kit

PROCESS_FIXTURES = frozenset({"server", "module_server"})
"""Fixtures that start twistd."""
PROCESS_NAMES = frozenset({"subprocess", "RunningServer", "Popen", "spawnProcess", "os.fork", "fork"})
"""Names whose use in a test (or in a helper of its module that it calls) means a real process is started."""


def _names(code: types.CodeType) -> Iterator[str]:
    """Every global or attribute name ``code`` and the functions nested in it use."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)


TESTS = Path(__file__).parent


def _in_tests(module: types.ModuleType) -> bool:
    """A module of this test suite (its helpers are followed; the project's and libraries' are not)."""
    return Path(getattr(module, "__file__", None) or "/").parent == TESTS


def _starts_processes(obj: object, module: types.ModuleType, seen: set[int]) -> bool:
    """Whether ``obj`` (a test function, or a helper or class of its module) names a process starter, directly
    or through the module's own functions and classes that it calls."""
    if id(obj) in seen:
        return False
    seen.add(id(obj))
    codes: list[types.CodeType] = []
    if inspect.isclass(obj):
        codes = [f.__code__ for f in vars(obj).values() if inspect.isfunction(f)]
    elif inspect.isfunction(obj) or inspect.ismethod(obj):
        codes = [inspect.unwrap(obj).__code__]  # type: ignore[union-attr]
    for code in codes:
        for name in _names(code):
            if name in PROCESS_NAMES:
                return True
            found = getattr(module, name, None)
            home = inspect.getmodule(found) if found is not None else None
            if home is not None and _in_tests(home) and _starts_processes(found, home, seen):
                return True
    return False


def _what_runs(item: pytest.Item) -> Iterator[object]:
    """What runs for ``item``: its function, its class's set-up, and the suite's fixtures it uses."""
    function = getattr(item, "function", None)
    if function is not None:
        yield function
    cls = getattr(item, "cls", None)
    for name in ("setUp", "setUpClass", "setup_method", "setup_class"):
        if cls is not None and name in vars(cls):
            yield vars(cls)[name]
    info = getattr(item, "_fixtureinfo", None)
    for defs in (info.name2fixturedefs.values() if info is not None else ()):
        for fixture in defs:
            yield fixture.func


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())) or (
            module is not None
            and any(
                _starts_processes(obj, inspect.getmodule(obj) or module, set())
                for obj in _what_runs(item)
                if _in_tests(inspect.getmodule(obj) or module)
            )
        ):
            item.add_marker(pytest.mark.process)


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
    """An in-memory server session kit (neotwist.testing) with the account alice."""
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
