"""The import graph keeps the layering (docs/internals.md): read from the source with ``ast``.

Nothing is imported: every ``import`` and ``from ... import`` statement of every module under
``src/gossamer`` is an edge, wherever it stands (a function-level import runs when the function
is called), except those under ``if TYPE_CHECKING:``, which only the type checker follows.

The rules:

* the control plane and the sidecar meet only on the wire: ``gossamer.control`` imports nothing
  from ``gossamer.proxy``, and ``gossamer.proxy`` nothing from the control plane, the config
  model, the CLI or the local runner;
* inside the sidecar a module imports only from its own layer or lower ones (``LAYERS``);
* ``gossamer.protocol`` (the sans-IO codecs) never imports ``asyncio``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "gossamer"
SKIPPED_DIRS = {"_compiled"}  # build output of gossamer.build_native

# The sidecar's layers, lowest first: a module may import from its own layer or lower ones.
LAYERS: tuple[tuple[str, ...], ...] = (
    # 0: the sans-IO codecs
    ("gossamer.protocol",),
    # 1: pipeline stages and their data, and small utilities
    (
        "gossamer.proxy.pipeline",
        "gossamer.proxy.resilience",
        "gossamer.proxy.snapshot",
        "gossamer.proxy.observe",
        "gossamer.proxy.tasks",
        "gossamer.proxy.loop_calls",
        "gossamer.proxy.local_peers",
    ),
    # 2: codecs on connections (``accepted``: the interface every accepted connection offers)
    (
        "gossamer.proxy.http1",
        "gossamer.proxy.h2",
        "gossamer.proxy.tcp",
        "gossamer.proxy.state",
        "gossamer.proxy.accepted",
    ),
    # 3: process setup
    ("gossamer.proxy.process", "gossamer.proxy.workers", "gossamer.proxy.__main__"),
)

# What the sidecar must not import: the other side of the wire and the tools around it.
NOT_FROM_SIDECAR = ("gossamer.control", "gossamer.config", "gossamer.cli", "gossamer.local")

# Imports that break the layering today, as (importing module, imported module). Each is to be
# reworked; remove a pair when its import is gone (the test fails while a listed pair no longer
# occurs, so this set only shrinks). Layers 0 and 1 import nothing from layer 2 or 3.
KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset(
    {
        # Layer 2 uses the settings types, which live in layer 3 (proxy/process/settings.py):
        # ``ProxySettings`` (an annotation of ``ProxyState.__init__``), ``Address`` (what the
        # inbound listener is given and returns; ``Address.bound`` for the TCP listeners).
        ("gossamer.proxy.state", "gossamer.proxy.process.settings"),
        ("gossamer.proxy.http1.inbound", "gossamer.proxy.process.settings"),
        ("gossamer.proxy.tcp.proxy", "gossamer.proxy.process.settings"),
    }
)


@dataclass(frozen=True)
class Edge:
    """One imported name: ``module`` (line ``line``) imports ``target``, a module of ``gossamer``
    when the name is one (the most specific module named) or the top-level package otherwise."""

    module: str
    line: int
    target: str
    written: str  # as the statement names it

    def __str__(self) -> str:
        return f"{self.module}:{self.line} -> {self.written}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _sources() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    sources: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if SKIPPED_DIRS.intersection(path.relative_to(PACKAGE).parts):
            continue
        sources[_module_name(path)] = path
    return sources


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` that runs, at import or call time (not type-only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for branch in node.orelse:  # the ``else:`` of ``if TYPE_CHECKING:`` runs
                yield from _runtime_imports(ast.Module(body=[branch], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _runtime_imports(node)


def _from_base(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` statement of ``module`` imports from."""
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if _sources()[module].name != "__init__.py":
        package.pop()
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def _edges_of(module: str) -> list[Edge]:
    known = _sources()
    tree = ast.parse(known[module].read_text(encoding="utf-8"), filename=str(known[module]))
    edges: list[Edge] = []
    for node in _runtime_imports(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name if alias.name.startswith("gossamer") else alias.name.split(".")[0]
                edges.append(Edge(module, node.lineno, top, alias.name))
            continue
        base = _from_base(module, node)
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            target = submodule if submodule in known else base
            if not target.startswith("gossamer"):
                target = target.split(".")[0]
            edges.append(Edge(module, node.lineno, target, f"{base}.{alias.name}"))
    return edges


@cache
def _graph() -> tuple[Edge, ...]:
    return tuple(edge for module in _sources() for edge in _edges_of(module))


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _layer(module: str) -> int | None:
    for level, packages in enumerate(LAYERS):
        if any(_within(module, package) for package in packages):
            return level
    return None


def _layer_violations() -> list[Edge]:
    violations = []
    for edge in _graph():
        own, imported = _layer(edge.module), _layer(edge.target)
        if own is not None and imported is not None and imported > own:
            violations.append(edge)
    return violations


def _listing(edges: list[Edge]) -> str:
    return "\n  ".join(str(edge) for edge in edges)


def test_the_graph_sees_the_package() -> None:
    """A guard for the tests below: the walk finds the modules and their imports."""
    modules = _sources()
    assert "gossamer.proxy.process.main" in modules
    assert "gossamer.control.api" in modules
    assert any(
        edge.module == "gossamer.proxy.process.main" and edge.target == "gossamer.proxy.state"
        for edge in _graph()
    )


def test_control_plane_does_not_import_the_sidecar() -> None:
    offending = [
        edge
        for edge in _graph()
        if _within(edge.module, "gossamer.control") and _within(edge.target, "gossamer.proxy")
    ]
    assert not offending, (
        "the control plane and the sidecar meet only on the wire; gossamer.control imports "
        f"gossamer.proxy:\n  {_listing(offending)}"
    )


def test_sidecar_does_not_import_control_config_cli_or_local() -> None:
    offending = [
        edge
        for edge in _graph()
        if (_within(edge.module, "gossamer.proxy") or _within(edge.module, "gossamer.protocol"))
        and any(_within(edge.target, package) for package in NOT_FROM_SIDECAR)
    ]
    assert not offending, (
        "the sidecar (gossamer.proxy, gossamer.protocol) imports from "
        f"{', '.join(NOT_FROM_SIDECAR)}:\n  {_listing(offending)}"
    )


def test_every_sidecar_module_has_a_layer() -> None:
    unplaced = [
        module
        for module in _sources()
        if _within(module, "gossamer.proxy")
        and module != "gossamer.proxy"  # the package itself: a docstring
        and _layer(module) is None
    ]
    assert not unplaced, f"add these modules to a layer in LAYERS: {unplaced}"


def test_sidecar_layers_import_only_downwards() -> None:
    violations = _layer_violations()
    new = [edge for edge in violations if (edge.module, edge.target) not in KNOWN_VIOLATIONS]
    assert not new, (
        "a module imports from a higher layer (LAYERS: 0 protocol, 1 pipeline stages and "
        f"their data, 2 connections, 3 process setup):\n  {_listing(new)}"
    )


def test_known_violations_still_occur() -> None:
    """``KNOWN_VIOLATIONS`` only shrinks: a pair that is fixed must leave the set."""
    occurring = {(edge.module, edge.target) for edge in _layer_violations()}
    fixed = sorted(KNOWN_VIOLATIONS - occurring)
    assert not fixed, (
        "these imports no longer break the layering: remove them from KNOWN_VIOLATIONS:\n  "
        + "\n  ".join(f"{module} -> {target}" for module, target in fixed)
    )


def test_protocol_never_imports_asyncio() -> None:
    offending = [
        edge
        for edge in _graph()
        if _within(edge.module, "gossamer.protocol") and edge.target == "asyncio"
    ]
    assert not offending, (
        f"gossamer.protocol is sans-IO and must not import asyncio:\n  {_listing(offending)}"
    )
