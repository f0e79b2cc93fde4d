"""Sweeps: one experiment, a grid of overrides, one run per combination, one table.

A sweep file (YAML)::

    base: cpu-sslbackdoor-fmnist.yaml      # an experiment config (relative to this file)
    set: [pretrain.train.progress=false]   # overrides for every run (optional)
    grid:                                  # every combination runs, in this order
      attack.poison: [0.1, 0.25, 0.5]
      attack.trigger.size: [4, 6]
    metrics: [fashion-mnist/fp_clean, fashion-mnist/fp_poisoned]   # table columns
    seeds: [0, 1, 2]                       # optional: every run over these seeds
    plot: {x: attack.poison, y: [fashion-mnist/fp_poisoned]}       # optional PNG
    reach: {x: attack.poison, y: fashion-mnist/fp_poisoned, at: 50}  # optional: smallest x
    heatmap: {rows: attack.trigger.size, value: fashion-mnist/fp_poisoned}  # optional

``heatmap``: one row per value of the grid key ``rows``, one column per setting of the other
grid keys, ``value`` in each cell — as a table in ``sweep.md`` and ``OUT/sweep-heatmap.png``.

Each run writes ``OUT/<i>-<key=value,...>/results.json`` like ``sslpoison run``; the stage
cache shares what the runs have in common (the clean encoder). With ``seeds`` (or
``sslpoison sweep --seeds``; or ``seeds`` in the base config) each run is a run over seeds
(:mod:`~sslpoison.experiment.seeds`: ``seed-<s>/`` folders and their aggregate), and the
table shows each metric as mean ± std. ``OUT/sweep.json`` and
``OUT/sweep.md`` are rewritten after every run, and a sweep started again skips the runs
that finished.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from sslpoison.configbase import Config, format_validation_error
from sslpoison.experiment.config import ConfigError, ExperimentConfig, load_config
from sslpoison.experiment.results import Results
from sslpoison.experiment.sweep_checks import MetricCheck, claim_sweep_folder, finished_results
from sslpoison.utils import atomic_write_json, atomic_write_text
from sslpoison.yamlio import read_yaml

log = logging.getLogger(__name__)


class PlotSpec(Config):
    """A line plot: ``y`` metrics against the grid key ``x`` (one line per other setting)."""

    x: str
    y: list[str] = Field(min_length=1)


class ReachSpec(Config):
    """The smallest grid value ``x`` whose run has metric ``y`` ≥ ``at`` (per other setting)."""

    x: str
    y: str
    at: float


class HeatmapSpec(Config):
    """A table and a picture of metric ``value``: rows = values of grid key ``rows``, columns
    = settings of the other grid keys."""

    rows: str
    value: str


class SweepConfig(Config):
    """A sweep file (see the module doc)."""

    name: str = "sweep"
    base: str
    set: list[str] = Field(default_factory=list)
    grid: dict[str, list[Any]] = Field(min_length=1)
    metrics: list[str] = Field(default_factory=list)
    plot: PlotSpec | None = None
    reach: ReachSpec | None = None
    heatmap: HeatmapSpec | None = None
    seeds: list[int] | None = Field(None, min_length=1)


def load_sweep(path: str | Path) -> tuple[SweepConfig, Path]:
    """The sweep file and its base config's path (relative paths: from the sweep file)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"sweep file not found: {p}")
    raw = read_yaml(p)
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{p}: a sweep is a mapping of keys (base, grid, ...)")
    try:
        sweep = SweepConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{p}: {format_validation_error(e)}") from None
    for key, values in sweep.grid.items():
        if not values:
            raise ConfigError(f"{p}: grid.{key}: no values")
    for section, field in (("plot", "x"), ("reach", "x"), ("heatmap", "rows")):
        spec = getattr(sweep, section)
        if spec is not None and getattr(spec, field) not in sweep.grid:
            key = getattr(spec, field)
            raise ConfigError(f"{p}: {section}.{field}: {key!r} is not a grid key")
    base = Path(sweep.base)
    return sweep, base if base.is_absolute() else p.parent / base


def combinations(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the first key varying slowest."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def run_name(index: int, combo: dict[str, Any]) -> str:
    """A folder name for one run: ``<index>-<last key part>=<value>,...`` (filesystem-safe)."""
    parts = ",".join(
        f"{k.split('.')[-1]}={v if isinstance(v, str) else json.dumps(v)}" for k, v in combo.items()
    )
    return re.sub(r"[^\w.=,+-]+", "_", f"{index:02d}-{parts}")


def sweep_configs(
    sweep: SweepConfig, base: Path, overrides: list[str] = ()
) -> list[tuple[dict[str, Any], ExperimentConfig]]:
    """Every run's validated config, before anything runs (a bad value fails at once)."""
    runs = []
    seeds = [f"seeds={json.dumps(sweep.seeds)}"] if sweep.seeds else []
    for combo in combinations(sweep.grid):
        sets = [
            *sweep.set, *seeds, *overrides, *(f"{k}={json.dumps(v)}" for k, v in combo.items())
        ]  # fmt: skip
        try:
            runs.append((combo, load_config(base, sets)))
        except ConfigError as e:
            raise ConfigError(f"sweep run {combo}: {e}") from None
    return runs


def format_sweep_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A Markdown table: one row per run, the grid values then ``columns``; a run over seeds
    gives each metric as mean ± std (its ``std``: ``{metric: std}``)."""
    head = "| " + " | ".join(columns) + " |"
    lines = [head, "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for c in columns:
            v, std = row.get(c), (row.get("std") or {}).get(c)
            if v is None:
                cells.append("-")
            elif std is not None:
                cells.append(f"{v:.4f} ± {std:.4f}")
            elif isinstance(v, float):
                cells.append(f"{v:.1f}" if c == "minutes" else f"{v:.4f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_reach(rows: list[dict[str, Any]], spec: ReachSpec, grid_keys: list[str]) -> str:
    """One line per setting of the other grid keys: the smallest ``spec.x`` whose ``spec.y``
    reached ``spec.at`` (or that none did, up to the largest value run)."""
    others = [k for k in grid_keys if k != spec.x]
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(", ".join(f"{k}={row[k]}" for k in others), []).append(row)
    lines = []
    for group, members in groups.items():
        reached = [r[spec.x] for r in members if r.get(spec.y) is not None and r[spec.y] >= spec.at]
        where = f" ({group})" if group else ""
        if reached:
            lines.append(f"smallest {spec.x} with {spec.y} ≥ {spec.at:g}{where}: {min(reached)}")
        else:
            tried = max(r[spec.x] for r in members)
            lines.append(f"{spec.y} stayed below {spec.at:g} up to {spec.x} = {tried}{where}")
    return "\n".join(lines)


def cell_label(value: Any) -> str:
    """A grid value as a short label (strings as they are, the rest as compact JSON)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def heatmap_values(
    rows: list[dict[str, Any]], spec: HeatmapSpec, grid_keys: list[str]
) -> dict[str, dict[str, float | None]]:
    """``{row label: {column label: value}}``: rows = values of ``spec.rows``, columns = the
    other grid keys' settings (``key=value, ...``, last key part only)."""
    others = [k for k in grid_keys if k != spec.rows]
    values: dict[str, dict[str, float | None]] = {}
    for row in rows:
        column = ", ".join(f"{k.split('.')[-1]}={cell_label(row[k])}" for k in others)
        values.setdefault(cell_label(row[spec.rows]), {})[column or spec.value] = row.get(
            spec.value
        )
    return values


def format_heatmap(values: dict[str, dict[str, float | None]], spec: HeatmapSpec) -> str:
    """The heat map as a Markdown table (columns numbered, their settings listed below)."""
    cols = list(dict.fromkeys(c for r in values.values() for c in r))
    lines = [
        f"{spec.value} by {spec.rows} (rows) and setting (columns):",
        "",
        "| "
        + " | ".join([spec.rows.split(".")[-1], *(f"({i + 1})" for i in range(len(cols)))])
        + " |",
        "|" + "---|" * (len(cols) + 1),
    ]
    for label, cells in values.items():
        shown = ["-" if cells.get(c) is None else f"{cells[c]:.4f}" for c in cols]
        lines.append("| " + " | ".join([label, *shown]) + " |")
    lines += ["", *(f"({i + 1}) {c}" for i, c in enumerate(cols))]
    return "\n".join(lines)


def plot_sweep(rows: list[dict[str, Any]], spec: PlotSpec, grid_keys: list[str], path: Path):
    from sslpoison.experiment.plots import line_plot

    others = [k for k in grid_keys if k != spec.x]
    series: dict[str, list[tuple[Any, Any]]] = {}
    for row in rows:
        group = ", ".join(f"{k.split('.')[-1]}={row[k]}" for k in others)
        for y in spec.y:
            if row.get(y) is not None:
                label = f"{y} ({group})" if group else y
                series.setdefault(label, []).append((row[spec.x], row[y]))
    return line_plot(series, spec.x, "value", path)


def run_sweep(
    sweep: SweepConfig,
    base: Path,
    out_dir: str | Path,
    overrides: list[str] = (),
    run: Callable[[ExperimentConfig, Path], Results | None] | None = None,
) -> list[dict[str, Any]]:
    """Run every combination (skipping finished ones) with ``run(cfg, folder)`` (default
    :func:`~sslpoison.experiment.runner.run_experiment`; the CLI passes its launcher), over
    its seeds where it has them (:func:`~sslpoison.experiment.seeds.run_config`); write the
    table; return its rows."""
    from sslpoison.experiment.seeds import run_config

    out = Path(out_dir)
    runs = sweep_configs(sweep, base, list(overrides))
    configs = [cfg for _, cfg in runs]
    check = MetricCheck(sweep, configs)  # the metrics named are ones the runs can produce
    claim_sweep_folder(out, sweep, [run_name(i, c) for i, (c, _) in enumerate(runs)], configs)
    rows: list[dict[str, Any]] = []
    for i, (combo, cfg) in enumerate(runs):
        folder = out / run_name(i, combo)
        results = finished_results(folder)
        if results is not None:
            log.info("sweep %d/%d %s: finished before, reusing", i + 1, len(runs), combo)
        else:
            log.info("sweep %d/%d %s", i + 1, len(runs), combo)
            finished = run_config(cfg, folder, run)
            if finished is None:  # a DDP rank other than 0
                continue
            results = finished.as_json()
        metrics = results["metrics"]
        check.seen(metrics)
        shown = sweep.metrics or sorted(metrics)
        spreads = results.get("aggregate") or {}
        rows.append(
            {
                **combo,
                **{k: metrics.get(k) for k in shown},
                "minutes": round(results["timings"]["total"] / 60, 1),
                "run": folder.name,
                **(
                    {"std": {k: spreads[k]["std"] for k in shown if k in spreads}}
                    if spreads
                    else {}
                ),
            }
        )
        columns = [*sweep.grid, *shown, "minutes"]
        table = format_sweep_table(rows, columns) + "\n"
        if sweep.reach is not None:
            table += "\n" + format_reach(rows, sweep.reach, list(sweep.grid)) + "\n"
        if sweep.heatmap is not None:
            grid = heatmap_values(rows, sweep.heatmap, list(sweep.grid))
            table += "\n" + format_heatmap(grid, sweep.heatmap) + "\n"
        atomic_write_json(out / "sweep.json", {"grid": sweep.grid, "rows": rows})
        atomic_write_text(out / "sweep.md", table)
    check.finish()
    if sweep.plot is not None and rows:
        plot_sweep(rows, sweep.plot, list(sweep.grid), out / "sweep.png")
    if sweep.heatmap is not None and rows:
        from sslpoison.experiment.plots import heat_map

        spec = sweep.heatmap
        grid = heatmap_values(rows, spec, list(sweep.grid))
        heat_map(
            grid, "setting", spec.rows, out / "sweep-heatmap.png", f"{sweep.name}: {spec.value}"
        )
    return rows


__all__ = ["SweepConfig", "combinations", "format_reach", "load_sweep", "run_sweep"]
