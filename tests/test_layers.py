"""The client's and the wire's imports go one way: no module of neotwist/client or neotwist/wire imports
another that imports it back (directly or around a loop, deferred imports inside functions included), the wire
imports neither client nor server, and the client never imports the server. The server's repository imports
neither the wire nor the server modules that use it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent / "neotwist"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every neotwist module ``path`` imports, at the top or inside a function."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("neotwist"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("neotwist"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _graph(*packages: str) -> dict[str, set[str]]:
    modules = {_module(p): p for package in packages for p in (ROOT / package).rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_import_cycles_in_the_client_or_the_wire() -> None:
    graph = _graph("client", "wire")
    assert len(graph) > 30
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_lower_layers_never_import_upper_ones() -> None:
    for path in (ROOT / "wire").rglob("*.py"):
        upper = {m for m in _imports(path) if m.startswith(("neotwist.client", "neotwist.server"))}
        assert not upper, f"{path.name} imports {upper}"
    for path in (ROOT / "client").rglob("*.py"):
        server = {m for m in _imports(path) if m.startswith("neotwist.server")}
        assert not server, f"client/{path.name} imports {server}"


def _above_the_repository() -> set[str]:
    """The server's modules outside the repository that import it, directly or through others (the leaf
    services it may use, such as ``changes`` and ``descriptors``, import nothing of it)."""
    graph = _graph("server")
    inside = {m for m in graph if m.startswith("neotwist.server.repository")}
    above: set[str] = set()
    grew = True
    while grew:
        grew = False
        for name, deps in graph.items():
            if name not in inside and name not in above and deps & (inside | above):
                above.add(name)
                grew = True
    return above


def test_the_repository_imports_neither_the_wire_nor_the_layers_above_it() -> None:
    """The repository has its own errors and records (the session maps them onto the wire, see
    server/errormap.py): it imports nothing of neotwist.wire, nothing of the server above it, nothing of the
    client."""
    package = ROOT / "server" / "repository"
    modules = sorted(package.rglob("*.py"))
    assert len(modules) > 10
    above = _above_the_repository()
    assert {"neotwist.server.session", "neotwist.server.context"} <= above
    for path in modules:
        imported = _imports(path)
        upper = {m for m in imported if m.startswith("neotwist.client") or m in above}
        assert not upper, f"repository/{path.name} imports {upper}"
        wire = {m for m in imported if m == "neotwist.wire" or m.startswith("neotwist.wire.")}
        assert not wire, f"repository/{path.name} imports {wire}"
