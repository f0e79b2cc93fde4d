"""Hand-made run folders for the results store and the report: real ``results.json`` files
(written by :func:`~sslpoison.experiment.results.write_results`) with chosen rows, no training.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from sslpoison.eval.backdoor import backdoor_row
from sslpoison.eval.rows import Row
from sslpoison.experiment.results import CONFUSION, Results, write_results

#: The config of a hand-made BadEncoder run (its ``results.json`` form, trimmed).
CONFIG = {
    "name": "hand-badencoder",
    "seed": 0,
    "data": {"dataset": "synthetic", "subset": None},
    "attack": {
        "name": "badencoder",
        "lambda2": 1.0,
        "targets": [{"dataset": "synthetic", "target_class": "vertical"}],
    },
    "defenses": [],
    "detectors": [],
    "eval": {"datasets": ["synthetic"], "probes": ["mlp", "linear"]},
}


def png(path: Path, shade: int = 128) -> Path:
    """A small grey PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (24, 16), shade).save(path)
    return path


def backdoor_rows(values: dict[str, dict[str, float]], probe: str = "mlp") -> list[Row]:
    """Rows of ``{encoder: {"acc": …, "asr": …}}`` on the synthetic set."""
    return [
        backdoor_row(encoder, "synthetic", probe, metric, value)
        for encoder, cells in values.items()
        for metric, value in cells.items()
    ]


def write_run(
    root: Path, folder: str, rows: list[Row], seed: int = 0, wall: float = 60.0,
    classes: list[str] | None = None, **changes: Any,
) -> Path:  # fmt: skip
    """A run folder ``root/folder`` whose ``results.json`` holds ``rows``, the :data:`CONFIG`
    (with ``changes``), a trigger picture and a defense stage record per defense; with
    ``classes``, the synthetic set's class names in ``confusion.json`` (target ``vertical``)."""
    config = copy.deepcopy(CONFIG) | {"seed": seed} | changes
    out = root / folder
    trigger = png(out / "trigger-synthetic-vertical.png")
    artifacts = {"trigger:synthetic/vertical": str(trigger), "encoder": "elsewhere"}
    if classes is not None:
        confusion = {"classes": classes, "clean": {}, "triggered": {"vertical": {}}}
        artifacts[CONFUSION] = str(out / "confusion.json")
        (out / "confusion.json").write_text(json.dumps({"synthetic": confusion}))
    stages: dict[str, Any] = {
        "pretrain": {"key": "k", "precision": "fp32", "cached": False, "losses": [2.0, 1.5]}
    }
    for d in config["defenses"]:
        stages[f"defense:{d['name']}"] = {"clean_images": 100, "wall_s": wall}
    results = Results(
        rows=rows,
        config=config,
        timings={"pretrain": wall, "total": 2 * wall},
        artifacts=artifacts,
        stages=stages,
        tables=[],
        provenance={"seed": seed, "precision": "fp32", "torch": "2.x"},
    )
    write_results(out, results)
    return out
