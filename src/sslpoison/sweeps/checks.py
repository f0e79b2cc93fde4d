"""What a sweep checks beyond its schema: that the metrics it names are ones its runs can
produce, and that its output folder is its own.

Metric keys are ``<dataset>/...``, ``<defense>[_on_clean]/<dataset>/...`` or
``<detector>/...``. Before any run, every metric a sweep names (``metrics``, ``plot.y``,
``reach.y``, ``heatmap.value``) must start with a dataset, defense or detector of its runs.
Once the first run is done its metrics are known: a name it did not produce is an error
then, unless the grid varies what decides which metrics exist (the attack, the defenses, the
detectors, the evaluation, the pre-training method); then a name no run produced is an error
at the end.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from sslpoison.errors import ConfigError, warn
from sslpoison.eval.rows import ON_CLEAN
from sslpoison.experiment.preflight import claim_folder, run_identity, sweep_grid_identity
from sslpoison.experiment.results import read_results
from sslpoison.train import dist
from sslpoison.utils import stable_hash

#: Grid keys (prefixes) that can change which metrics a run produces.
SHAPING = ("attack", "defenses", "detectors", "eval", "pretrain.method")

__all__ = ["MetricCheck", "claim_sweep_folder", "finished_results"]


def _named_metrics(sweep: Any) -> list[tuple[str, str]]:
    """(key, metric) of every metric the sweep names."""
    named = [(f"metrics.{i}", m) for i, m in enumerate(sweep.metrics)]
    if sweep.plot is not None:
        named += [(f"plot.y.{i}", m) for i, m in enumerate(sweep.plot.y)]
    if sweep.reach is not None:
        named.append(("reach.y", sweep.reach.y))
    if sweep.heatmap is not None:
        named.append(("heatmap.value", sweep.heatmap.value))
    return named


def _heads(cfg: Any) -> set[str]:
    """The first parts a metric key of ``cfg``'s run can start with."""
    heads = set(cfg.eval.datasets) | {d.name for d in cfg.detectors}
    heads |= {d.name for d in cfg.defenses} | {f"{d.name}{ON_CLEAN}" for d in cfg.defenses}
    return heads


class MetricCheck:
    """The metric names of one sweep, checked before any run (:meth:`__init__`), against
    each run's results as they come in (:meth:`seen`) and at the end (:meth:`finish`)."""

    def __init__(self, sweep: Any, configs: list[Any]) -> None:
        self.named = _named_metrics(sweep)
        self.produced: set[str] = set()
        self.runs = 0
        self.defer = any(k.startswith(SHAPING) for k in sweep.grid)
        heads = set().union(*(_heads(cfg) for cfg in configs)) if configs else set()
        for key, metric in self.named:
            if metric.split("/")[0] not in heads or "/" not in metric:
                raise ConfigError(
                    f"sweep {key}: {metric!r} is not a metric of these runs: a metric is "
                    f"<dataset>/..., <defense>/<dataset>/... or <detector>/..., and the runs "
                    f"have {', '.join(sorted(heads))}"
                )

    def _missing(self) -> list[tuple[str, str]]:
        return [(k, m) for k, m in self.named if m not in self.produced]

    def _fail(self, key: str, metric: str, where: str) -> ConfigError:
        close = difflib.get_close_matches(metric, sorted(self.produced), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return ConfigError(f"sweep {key}: {metric!r} is not a metric {where}{hint}")

    def seen(self, metrics: dict[str, Any]) -> None:
        """A run's metrics; after the first, an unknown name fails (see the module doc)."""
        self.produced |= set(metrics)
        self.runs += 1
        missing = self._missing()
        if self.runs == 1 and missing and not self.defer:
            raise self._fail(*missing[0], "the runs produce (checked on the first run)")

    def finish(self) -> None:
        """At the end of the sweep: a name no run produced fails."""
        missing = self._missing()
        if missing and self.runs:
            raise self._fail(*missing[0], "any run produced")


def claim_sweep_folder(out: Path, sweep: Any, names: list[str], configs: list[Any]) -> Path | None:
    """:func:`~sslpoison.experiment.preflight.claim_folder` for a sweep: its identity is its
    runs (folder ``names`` and ``configs``); a folder written before markers is this
    sweep's when its ``sweep.json`` has the same grid."""
    if dist.rank() != 0:
        return None
    runs = zip(names, configs, strict=True)
    identity = stable_hash(
        [(name, run_identity(cfg.model_dump(mode="json"))) for name, cfg in runs], length=24
    )
    return claim_folder(out, "sweep", sweep.name, identity, {sweep_grid_identity(sweep.grid)})


def finished_results(folder: Path) -> dict[str, Any] | None:
    """The ``results.json`` of a sweep's run that finished before, or None: not there, or
    damaged (a warning: the run runs again)."""
    path = folder / "results.json"
    if not path.exists():
        return None
    try:
        results = read_results(path)
        if not isinstance(results.get("metrics"), dict) or "total" not in results["timings"]:
            raise ValueError("no metrics or timings")
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as e:
        warn(f"{path}: damaged ({e}); the run runs again")
        return None
    return results
