"""No import cycles hidden by in-function imports, and a CLI that lists commands without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import napari_dgseg

PACKAGE = Path(napari_dgseg.__file__).parent

#: Cycles owned by another refactor (the codebook <-> sqvae family split); nothing else may appear.
KNOWN = {frozenset({"napari_dgseg.core.codebook", "napari_dgseg.core.models.sqvae"})}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("napari_dgseg",) + path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(tree: ast.AST, name: str, mods: dict[str, Path]) -> set[str]:
    """Package modules imported anywhere in ``tree`` (functions included, TYPE_CHECKING not)."""
    deps: set[str] = set()
    todo = [tree]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                targets = [child.module] + [f"{child.module}.{a.name}" for a in child.names]
                deps.update(t for t in targets if t in mods and t != name)
            elif isinstance(child, ast.Import):
                deps.update(a.name for a in child.names if a.name in mods and a.name != name)
            todo.append(child)
    return deps


def _graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    return {n: _imports(ast.parse(p.read_text(encoding="utf-8")), n, mods) for n, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[frozenset[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(frozenset(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return found


def test_cycle_finder_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


def test_no_import_cycles_even_through_function_level_imports():
    cycles = [sorted(c) for c in _cycles(_graph(_modules())) if c not in KNOWN]
    assert cycles == []


def test_listing_cli_commands_does_not_import_torch():
    code = (
        "import sys, napari_dgseg.cli as c; c.build_parser(); "
        "print('torch' in sys.modules, 'napari' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
