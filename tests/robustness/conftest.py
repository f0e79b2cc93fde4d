"""The robustness suite's fixtures: a tiny run config, the CLI run in-process, and the
assertions every hostile-input case makes (exit 2, one line naming the file or key, no
results written, no code executed).

Each test module is one class of input; ``pytest tests/robustness`` ends with the count of
cases per class (see :func:`pytest_terminal_summary`).
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from pathlib import Path

import pytest
import yaml
from user_errors import TINY_RUN

from sslpoison.cli import main

#: The class of input each module covers, for the counts table.
CLASSES = {
    "test_data_files": "data files",
    "test_model_files": "model files",
    "test_encoder_sources": "encoder sources",
    "test_configs": "configs",
    "test_sweeps": "sweeps",
    "test_outputs": "output folder",
    "test_cache": "cache",
    "test_concurrency": "concurrency and kills",
}


@pytest.fixture
def tiny_run() -> dict:
    """A fresh copy of :data:`TINY_RUN` to modify."""
    return copy.deepcopy(TINY_RUN)


@pytest.fixture
def write_yaml(tmp_path):
    """``write_yaml(obj, name="cfg.yaml") -> path``: ``obj`` (or a string, verbatim)."""

    def write(obj, name: str = "cfg.yaml") -> Path:
        path = tmp_path / name
        path.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj, sort_keys=False))
        return path

    return write


@pytest.fixture
def sentinel(tmp_path) -> Path:
    """A file a hostile payload would create; each test asserts it never exists."""
    path = tmp_path / "PAYLOAD-RAN"
    yield path
    assert not path.exists(), "a hostile payload executed"


@pytest.fixture
def cli(capsys):
    """``cli(*argv) -> (exit code, stdout, stderr)`` of ``sslpoison`` run in-process."""

    def run(*argv) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def cache_dir() -> Path:
    """The stage cache of this test (conftest's isolated ``$SSLPOISON_CACHE``)."""
    return Path(os.environ["SSLPOISON_CACHE"])


def _case_class(nodeid: str) -> str | None:
    module = Path(nodeid.split("::")[0]).stem
    return CLASSES.get(module)


def pytest_terminal_summary(terminalreporter) -> None:
    """The number of robustness cases per class of input, with their outcomes."""
    counts: dict[str, Counter] = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", "call") not in ("call", "setup"):
                continue
            if outcome == "passed" and report.when != "call":
                continue
            cls = _case_class(getattr(report, "nodeid", ""))
            if cls is not None:
                counts.setdefault(cls, Counter())[outcome] += 1
    if not counts:
        return
    terminalreporter.section("robustness cases by class")
    total: Counter = Counter()
    for cls in CLASSES.values():
        if cls in counts:
            c = counts[cls]
            total += c
            detail = ", ".join(f"{n} {k}" for k, n in sorted(c.items()))
            terminalreporter.write_line(f"{cls:<24} {sum(c.values()):>4}  ({detail})")
    terminalreporter.write_line(f"{'total':<24} {sum(total.values()):>4}")
