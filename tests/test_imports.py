"""No module of the package imports itself back through others (no import cycles), and
importing the library changes nothing outside it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"
PACKAGE = "sslpoison"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(node: ast.If) -> bool:
    """``if TYPE_CHECKING:`` (such imports never run)."""
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every ``sslpoison`` module ``module`` imports, at any depth (inside functions too),
    leaving out ``if TYPE_CHECKING:`` blocks. ``from a import b`` counts ``a.b`` when that
    is a module, else ``a``."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the package's modules it makes Python import. Importing ``a.b.c`` also runs
    the ``__init__`` of ``a.b``; a module's own parent packages are left out (Python has
    begun importing them before the module itself, whoever asked for it)."""
    files = {module_name(p): p for p in SRC.joinpath(PACKAGE).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        names = imported(ast.parse(path.read_text()), module, path.name == "__init__.py")
        own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        edges: set[str] = set()
        for name in names:
            parts = name.split(".")
            for i in range(2, len(parts) + 1):  # the module and the packages above it
                target = ".".join(parts[:i])
                if target in files and target not in own and target != module:
                    edges.add(target)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := walk(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)) is not None:
            return cycle
    return None


def test_the_graph_sees_imports():
    graph = import_graph()
    assert "sslpoison.ssl.clip" in graph["sslpoison.ssl.pretrain"]
    assert "sslpoison.poisoning" in graph["sslpoison.eval.zero_shot"]
    # ``from sslpoison.attacks.base import X`` runs ``sslpoison.attacks`` (its __init__) too.
    assert "sslpoison.attacks" in graph["sslpoison.experiment.stages"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_itself_back():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("module", ["sslpoison.experiment.runner", "sslpoison.attacks"])
def test_importing_the_library_leaves_the_process_alone(module):
    """No seeding, thread counts or environment changes at import time."""
    code = (
        "import os, torch; env = dict(os.environ); threads = torch.get_num_threads(); "
        "state = torch.random.get_rng_state(); "
        f"import {module}; "
        "assert dict(os.environ) == env and torch.get_num_threads() == threads; "
        "assert torch.equal(torch.random.get_rng_state(), state)"
    )
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
