"""``results.json``, written atomically.

``{"metrics": {key: number}, "config": the full config, "timings": {stage: seconds},
"artifacts": {name: path}, "stages": {stage: what it did (cache hit, resumed epoch, losses)}}``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sslpoison.utils import atomic_write_json


def write_results(
    out_dir: str | Path,
    metrics: dict[str, float | int],
    config: dict[str, Any],
    timings: dict[str, float],
    artifacts: dict[str, str],
    stages: dict[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/results.json``; metric values must be finite numbers."""
    for key, value in metrics.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"metric {key!r} is not a finite number: {value!r}")
    path = Path(out_dir) / "results.json"
    atomic_write_json(
        path,
        {
            "metrics": dict(sorted(metrics.items())),
            "config": config,
            "timings": timings,
            "artifacts": artifacts,
            "stages": stages or {},
        },
    )
    return path


def read_results(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    return json.loads(p.read_text())
