"""A run's results, and ``results.json``, written atomically.

``results.json``: ``{"metrics": {key: number}, "config": the full config, "timings": {stage:
seconds}, "artifacts": {name: path}, "stages": {stage: what it did (cache hit, resumed
epoch, losses)}, "rows": [the typed rows, as dicts], "provenance": {package and torch
version, git commit, device, CPU capability, precision, seed, ...}}``, and ``"warnings": [...]``
when there were any (what the config allowed, a damaged cache entry recomputed, an earlier run
moved aside); ``metrics`` is made from the run's rows. Folders written before ``rows`` and
``provenance`` existed lack them. The aggregate of a run over seeds has a ``results.json`` of
its own form (:func:`is_aggregate`, :mod:`~sslpoison.experiment.seeds`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from sslpoison.eval.rows import Row, metrics_of
from sslpoison.utils import atomic_write_json

#: The artifact holding the confusion matrices (``confusion.json``: per dataset its ``classes``
#: and, per target class name, the matrices of the triggered test images).
CONFUSION = "confusion"


def defense_stage_name(name: str) -> str:
    """The key of defense ``name``'s record in ``stages`` (``name`` may be ``<d>_on_clean``)."""
    return f"defense:{name}"


def detect_stage_name(detector: str, role: str) -> str:
    """The key in ``stages`` of ``detector``'s verdict on the ``role`` encoder."""
    return f"detect:{detector}:{role}"


def inverted_trigger(detector: str, role: str) -> str:
    """The artifact name of ``detector``'s inverted trigger on the ``role`` encoder."""
    return f"trigger_inverted:{detector}/{role}"


@dataclass
class Results:
    """What a run measured (``rows``), ran with, took and wrote, and its ``tables`` (as
    ``sslpoison run`` prints them and ``summary.md`` holds them)."""

    rows: list[Row]
    config: dict[str, Any]
    timings: dict[str, float]
    artifacts: dict[str, str]
    stages: dict[str, Any]
    tables: list[str]
    provenance: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, float | int]:
        """``{key: value}`` of the rows, sorted by key."""
        return dict(sorted(metrics_of(self.rows).items()))

    def as_json(self) -> dict[str, Any]:
        """The content of ``results.json``."""
        return {
            "metrics": self.metrics,
            "config": self.config,
            "timings": self.timings,
            "artifacts": self.artifacts,
            "stages": self.stages,
            "rows": [asdict(row) for row in self.rows],
            "provenance": self.provenance,
        } | ({"warnings": list(self.warnings)} if self.warnings else {})


def write_results(out_dir: str | Path, results: Results) -> Path:
    """Write ``out_dir/results.json``; metric values must be finite numbers."""
    for row in results.rows:
        if not isinstance(row.value, (int, float)) or not math.isfinite(row.value):
            raise ValueError(f"metric {row.key!r} is not a finite number: {row.value!r}")
    path = Path(out_dir) / "results.json"
    atomic_write_json(path, results.as_json())
    return path


def read_results(path: str | Path) -> dict[str, Any]:
    """``results.json`` (in ``path``, a run's folder, or the file itself) as a dict."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    return json.loads(p.read_text())


def is_aggregate(results: dict[str, Any]) -> bool:
    """Whether a ``results.json`` (as a dict) is the aggregate of a run over seeds
    (:mod:`~sslpoison.experiment.seeds`), not a run: its runs are its ``seed-<s>`` folders."""
    return isinstance(results.get("aggregate"), dict) and isinstance(results.get("seeds"), list)


def rows_from_json(items: list[dict[str, Any]]) -> list[Row]:
    """The :class:`Row` objects of ``results.json``'s ``rows``; an unknown or missing field
    raises ``ValueError`` naming it."""
    names = {f.name for f in fields(Row)}
    rows = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"rows.{i}: not a mapping")
        if unknown := sorted(set(item) - names):
            raise ValueError(f"rows.{i}: unknown fields {unknown}")
        try:
            rows.append(Row(**item))
        except TypeError as e:
            raise ValueError(f"rows.{i}: {e}") from None
    return rows
