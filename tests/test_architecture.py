"""ARCHITECTURE.md's import rules, checked on the source: no import runs up (or across) a layer,
and no module comes back to itself through its imports.

Every import counts: at the top of a module, inside a function, under ``if TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterable, Sequence

import pytest

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "recsys_spark"

# ARCHITECTURE.md's layers, lowest first: (name, the top-level modules and packages in it, whether
# they may import each other). A module may import its own package, anything in a lower layer and,
# in a layer marked True, the other members of its layer.
Layers = Sequence[tuple[str, Sequence[str], bool]]
LAYERS: Layers = (
    ("base", ("__init__", "errors", "schema", "metrics", "config", "io", "product_ids", "packaging", "waits",
              "spark", "stages", "tracking"), True),
    ("models", ("models",), False),
    ("data preparation", ("etl", "features"), False),
    ("scoring", ("scoring",), False),
    ("evaluation and serving", ("evaluation", "serving"), False),
    ("training and simulation", ("train", "data"), False),
    ("entry points", ("pipeline", "cli", "__main__", "analysis"), True),
)


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Returns: every module of ``package`` under ``root`` (dotted name -> file)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(root: Path, package: str) -> list[tuple[str, str, int]]:
    """Returns: (importer, imported, line) for each import of one of ``package``'s modules by
    another, at any depth of the file; ``from package.x import y`` counts as importing the module
    ``package.x.y`` when there is one, else ``package.x``."""
    modules = module_files(root, package)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges = []
    for importer, path in modules.items():
        here = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            else:
                continue
            for name in names:
                target = known(name) if name == package or name.startswith(package + ".") else None
                if target is not None and target != importer:
                    edges.append((importer, target, node.lineno))
    return sorted(set(edges))


def unit(module: str) -> str:
    """The top-level module or package a module belongs to: ``recsys_spark.etl.clean`` -> ``etl``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_index(layers: Layers) -> dict[str, int]:
    return {member: i for i, (_, members, _) in enumerate(layers) for member in members}


def unplaced(modules: Iterable[str], layers: Layers) -> list[str]:
    """Returns: the modules whose top-level module or package has no layer."""
    index = layer_index(layers)
    return sorted(m for m in modules if unit(m) not in index)


def violations(edges: Iterable[tuple[str, str, int]], layers: Layers) -> list[str]:
    """Returns: one line per import that runs up a layer, or across one whose members must not
    import each other."""
    index = layer_index(layers)
    out = []
    for importer, imported, line in edges:
        a, b = unit(importer), unit(imported)
        if a == b or a not in index or b not in index:
            continue
        low, high = index[a], index[b]
        if high > low:
            out.append(f"{importer} (line {line}) imports {imported}: {a} (layer '{layers[low][0]}') may not "
                       f"import {b} (layer '{layers[high][0]}', above it)")
        elif high == low and not layers[low][2]:
            out.append(f"{importer} (line {line}) imports {imported}: {a} and {b} share the layer "
                       f"'{layers[low][0]}' and may not import each other")
    return out


def cycles(edges: Iterable[tuple[str, str, int]]) -> list[list[str]]:
    """Returns: the import circles, each as the sorted modules of a strongly connected component
    of more than one module (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for importer, imported, _ in edges:
        graph.setdefault(importer, set()).add(imported)
        graph.setdefault(imported, set())
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        order[node] = low[node] = len(order)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in order:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], order[nxt])
        if low[node] == order[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return sorted(found)


# ----------------------------------------------------------------------------- the package


def test_every_module_sits_in_a_layer():
    missing = unplaced(module_files(ROOT, PACKAGE), LAYERS)
    assert not missing, ("no layer in ARCHITECTURE.md (and LAYERS here) for: " + ", ".join(missing))


def test_no_import_runs_up_or_across_a_layer():
    found = violations(imports(ROOT, PACKAGE), LAYERS)
    assert not found, "imports against ARCHITECTURE.md's layers:\n" + "\n".join(found)


def test_no_import_circle():
    found = cycles(imports(ROOT, PACKAGE))
    assert not found, "import circles, each among:\n" + "\n".join(", ".join(c) for c in found)


# ----------------------------------------------------------------------------- the checks themselves


def write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


TOY_LAYERS: Layers = (("base", ("__init__", "low"), True), ("mid", ("left", "right"), False),
                      ("top", ("high",), False))


def test_the_checks_find_an_upward_a_sideways_and_a_circular_import(tmp_path):
    write_package(tmp_path, {
        "toy/__init__.py": "",
        "toy/low.py": "def f():\n    from toy.high import g  # up, inside a function\n",
        "toy/left/__init__.py": "",
        "toy/left/a.py": "from toy.right import b  # across\nfrom toy import low\n",
        "toy/right/__init__.py": "",
        "toy/right/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import C\n",
        "toy/right/c.py": "from toy.right import b\n",
        "toy/high.py": "import toy.low\nfrom . import low\n",
        "toy/stray.py": "",
    })
    edges = imports(tmp_path, "toy")
    assert ("toy.low", "toy.high", 2) in edges and ("toy.right.b", "toy.right.c", 3) in edges
    assert violations(edges, TOY_LAYERS) == [
        "toy.left.a (line 1) imports toy.right.b: left and right share the layer 'mid' and may not import each other",
        "toy.low (line 2) imports toy.high: low (layer 'base') may not import high (layer 'top', above it)",
    ]
    assert cycles(edges) == [["toy.high", "toy.low"], ["toy.right.b", "toy.right.c"]]
    assert unplaced(module_files(tmp_path, "toy"), TOY_LAYERS) == ["toy.stray"]
