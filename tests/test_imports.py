"""No module of the package imports itself back through others (no import cycles, at run time
nor with the type-level imports of ``if TYPE_CHECKING:``), attacks, defenses and detectors
never reach the experiment above them, the results below it read it only as data, nothing
below the sweeps imports them, and importing the library changes nothing outside it."""

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


def imported(tree: ast.AST, module: str, is_package: bool, type_level: bool = False) -> set[str]:
    """Every ``sslpoison`` module ``module`` imports, at any depth (inside functions too),
    leaving out ``if TYPE_CHECKING:`` blocks unless ``type_level``. ``from a import b``
    counts ``a.b`` when that is a module, else ``a``."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node) and not type_level:
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


def import_graph(type_level: bool = False) -> dict[str, set[str]]:
    """Module → the package's modules it makes Python import (with ``type_level``, also
    those it imports for type checkers only). Importing ``a.b.c`` also runs the ``__init__``
    of ``a.b``; a module's own parent packages are left out (Python has begun importing them
    before the module itself, whoever asked for it)."""
    files = {module_name(p): p for p in SRC.joinpath(PACKAGE).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text())
        names = imported(tree, module, path.name == "__init__.py", type_level)
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


def reaching(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """A path of imports from ``start`` to a module named ``goal`` or below it, or None."""
    seen, todo = {start}, [[start]]
    while todo:
        path = todo.pop()
        for nxt in sorted(graph[path[-1]]):
            if nxt == goal or nxt.startswith(goal + "."):
                return [*path, nxt]
            if nxt not in seen:
                seen.add(nxt)
                todo.append([*path, nxt])
    return None


def test_the_graph_sees_imports():
    graph = import_graph()
    assert "sslpoison.ssl.clip" in graph["sslpoison.ssl.pretrain"]
    assert "sslpoison.poisoning" in graph["sslpoison.eval.zero_shot"]
    # ``from sslpoison.attacks.base import X`` runs ``sslpoison.attacks`` (its __init__) too.
    assert "sslpoison.attacks" in graph["sslpoison.experiment.stages"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    # ``if TYPE_CHECKING:`` imports count only at the type level.
    assert "sslpoison.ssl.pretrain" not in graph["sslpoison.defenses.base"]
    assert "sslpoison.ssl.pretrain" in import_graph(type_level=True)["sslpoison.defenses.base"]
    assert reaching({"a": {"b"}, "b": {"c.d"}, "c.d": set()}, "a", "c") == ["a", "b", "c.d"]
    assert reaching({"a": {"b"}, "b": set(), "c": set()}, "a", "c") is None


def test_no_module_imports_itself_back():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_no_module_imports_itself_back_even_for_type_checkers():
    cycle = find_cycle(import_graph(type_level=True))
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("package", ["attacks", "defenses", "detectors"])
def test_attacks_defenses_and_detectors_never_reach_the_experiment(package):
    """Not even for type checkers: ``check`` sees a :class:`~sslpoison.hooks.CheckContext`,
    not the experiment's config."""
    graph = import_graph(type_level=True)
    below = [
        m for m in graph if m == f"{PACKAGE}.{package}" or m.startswith(f"{PACKAGE}.{package}.")
    ]
    assert len(below) > 1
    for module in below:
        path = reaching(graph, module, f"{PACKAGE}.experiment")
        assert path is None, " -> ".join(path)


def test_nothing_below_the_sweeps_reaches_them():
    """``sweeps/`` runs the experiment over a grid: only the command line imports it, not
    even ``experiment/`` for type checkers."""
    graph = import_graph(type_level=True)
    sweeps = f"{PACKAGE}.sweeps"
    assert "sslpoison.experiment.runner" in graph["sslpoison.sweeps.plan"]
    for module in graph:
        if module.startswith((sweeps, f"{PACKAGE}.cli")):
            continue
        path = reaching(graph, module, sweeps)
        assert path is None, " -> ".join(path)


#: What ``results/`` may read of ``experiment/``: a finished run's folder, as data
#: (``results.json``'s rows, the precision of its stage records).
RUN_FOLDER_DATA = {"sslpoison.experiment.results", "sslpoison.experiment.provenance"}


def test_results_read_the_experiment_only_as_data():
    """The store, comparisons and reports sit below the run: ``experiment/`` imports
    ``results/``, never the reverse, except the data modules of a run's folder, which import
    nothing else of ``experiment/`` (nor of ``results/``), not even for type checkers."""
    graph = import_graph(type_level=True)
    experiment = f"{PACKAGE}.experiment"
    assert "sslpoison.results.store" in graph["sslpoison.experiment.runner"]
    for module in RUN_FOLDER_DATA | {experiment}:  # the package's __init__ runs with them
        for goal in (experiment, f"{PACKAGE}.results"):
            path = reaching(graph, module, goal)
            assert path is None, " -> ".join(path)
    allowed = RUN_FOLDER_DATA | {experiment}
    pruned = {m: e - allowed if m.startswith(f"{PACKAGE}.results") else e for m, e in graph.items()}
    below = [m for m in graph if m == f"{PACKAGE}.results" or m.startswith(f"{PACKAGE}.results.")]
    assert len(below) > 1 and graph["sslpoison.results.store"] >= RUN_FOLDER_DATA
    for module in below:
        path = reaching(pruned, module, experiment)
        assert path is None, " -> ".join(path)


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
