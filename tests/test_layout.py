"""The package map of docs/design.md holds: no import circles, and imports only point down the layers.

The imports are read from the source (ast), function-level ones included: a circle that only closes
inside a function still makes two modules that cannot be understood, changed or tested apart.
Imports under ``if TYPE_CHECKING:`` are not executed and are left out.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import repnas

ROOT = Path(repnas.__file__).parent

#: each package's layer: a module may import its own package, the base modules (layer 0) and the
#: packages of lower layers, never a higher one
LAYERS = {
    "(base)": 0,  # repnas/__init__.py, errors, _io, _faults, _procs, _infra, _outputs
    "rescale": 1,
    "spaces": 2,
    "train": 3,
    "runs": 4,
    "analysis": 5,
    "export": 6,
    "search": 7,
    "cli": 8,
    "experiments": 9,
    "__main__": 9,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _typing_only(tree: ast.AST) -> set[int]:
    return {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
            and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING"
            for statement in block.body for node in ast.walk(statement)}


def import_graph() -> dict[str, set[str]]:
    """``module -> the repnas modules it imports`` (``from pkg import name`` counts as importing
    ``pkg.name`` where that is a module, else ``pkg``)."""
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = _typing_only(tree)
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix
                           for alias in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one module: each is an import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(set(graph) | {m for targets in graph.values() for m in targets}):
        if node not in index:
            visit(node)
    return found


def package_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] not in LAYERS:
        return "(base)"
    return parts[1]


def test_the_graph_reader_sees_circles_and_function_level_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    edges = import_graph()
    # a function-level import (inside run_search_config) is an edge
    assert "repnas.search.ray._driver" in edges["repnas.search._api"]
    # ``from repnas.runs import X`` inside a function is an edge to the package
    assert "repnas.runs" in edges["repnas.search._validate"]


def test_no_module_imports_itself_around_a_circle():
    assert strongly_connected(import_graph()) == []


def test_imports_between_packages_point_down_the_layers():
    upward = sorted(f"{a} -> {b}" for a, targets in import_graph().items() for b in targets
                    if LAYERS[package_of(b)] > LAYERS[package_of(a)])
    assert upward == []


def test_every_package_is_on_the_map():
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert packages <= set(LAYERS), packages - set(LAYERS)


def test_importing_the_search_api_does_not_import_ray():
    code = "import sys, repnas.search, repnas.runs, repnas.export; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
