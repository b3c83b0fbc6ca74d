"""The house's plan, checked by walking fedcore's own imports (AST, no import runs):

- no two files import each other, directly or round a loop (imports under ``if TYPE_CHECKING:`` aside);
- at most 8 loose modules directly under ``fedcore/`` and no module over 450 lines;
- a hospital's node never imports the one-machine harness, the command line's simulation parts or
  the simulated attacks;
- no module imports another module's ``_private`` names (a package's own ``_kernel`` module, e.g.
  ``aggregators/_math.py``, is for that package's modules only);
- the old import paths of 0.1 fail with one line that names the new place.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "fedcore"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, lazy ones inside functions included, TYPE_CHECKING blocks excluded."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def _resolve(name: str) -> str | None:
    """The fedcore module a dotted name lands in (a name imported from a package may be a module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _edges(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    out: set[str] = set()
    for node in _imports(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif node.module is not None and node.level == 0:  # `from P import m` of a submodule m: P.m
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                for a in node.names
            ]
        else:
            continue
        for n in names:
            target = _resolve(n) if n.startswith("fedcore") else None
            if target is not None and target != module:
                out.add(target)
    return out


GRAPH = {m: _edges(m) for m in MODULES}


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components: every component is a single file."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in sorted(GRAPH):
        if m not in index:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


def test_few_loose_modules_and_none_too_long() -> None:
    loose = sorted(p.name for p in PKG.glob("*.py"))
    assert len(loose) <= 8, f"{len(loose)} loose modules under fedcore/: {loose}"
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 450}
    assert not long, f"modules over 450 lines: {long}"


def _closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(GRAPH[m])
    return seen


@pytest.mark.parametrize("entry", ["fedcore.flower.client_app", "fedcore.flower.gate", "fedcore.cli.deploy"])
def test_a_node_never_imports_the_harness(entry: str) -> None:
    """What `fedcore node` runs (the gate, the ClientApp, the node command) reaches neither the
    one-machine harness, the simulation engine, nor the simulated attacks (``fedcore.attacks``)."""
    reached = _closure(entry)
    simulation_only = ("fedcore.harness", "fedcore.flower.simulation", "fedcore.attacks")
    harness = sorted(m for m in reached if m.startswith(simulation_only))
    assert not harness, f"{entry} reaches {harness}"
    assert "fedcore.algorithms" in reached  # the node runs the job's client algorithm


def test_no_private_names_imported_across_modules() -> None:
    found = []
    for module, path in MODULES.items():
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fedcore"):
                private = [a.name for a in node.names if a.name.startswith("_") and a.name != "__all__"]
                package, _, last = (node.module or "").rpartition(".")
                inner = last.startswith("_") and module.startswith(package + ".")  # a package's own kernel
                hidden = any(p.startswith("_") for p in package.split(".")) or (
                    last.startswith("_") and not inner
                )
                if private or hidden:
                    found.append(f"{module}: from {node.module} import {[a.name for a in node.names]}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("fedcore.runner", "fedcore.harness.runner"),
        ("fedcore.privacy.ledger", "fedcore.site.ledger"),
        ("fedcore.clients.guard", "fedcore.site.guard"),
        ("fedcore.cli_admin", "fedcore.cli.admin"),
    ],
)
def test_an_old_import_path_names_the_new_one(old: str, new: str) -> None:
    with pytest.raises(ModuleNotFoundError, match=f"{old} moved to {new}"):
        importlib.import_module(old)
    assert importlib.import_module(new) is not None
