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
    executor: {name: slurm, partition: gpu, gpus_per_node: 4}       # optional: how cells run

``heatmap``: one row per value of the grid key ``rows``, one column per setting of the other
grid keys, ``value`` in each cell — as a table in ``sweep.md`` and ``OUT/sweep-heatmap.png``.

Each run (a *cell*) writes ``OUT/<i>-<key=value,...>/results.json`` like ``sslpoison run``;
the stage cache shares what the runs have in common (the clean encoder), and the plan
(:mod:`~sslpoison.sweeps.plan`) runs each shared stage once before the other cells. With
``seeds`` (or ``sslpoison sweep --seeds``; or ``seeds`` in the base config) each cell is a run
over seeds (:mod:`~sslpoison.experiment.seeds`: ``seed-<s>/`` folders and their aggregate),
and the table shows each metric as mean ± std. The cells run one after another, as local
processes or as SLURM job arrays (:mod:`~sslpoison.sweeps.executors`), each keeping
``OUT/status/<cell>.json``. ``OUT/sweep.json`` and ``OUT/sweep.md`` — a row per cell, those
without results marked — are rewritten as cells end; a failed cell does not stop the others
(:class:`SweepIncomplete` at the end), and a sweep started again runs only the cells without
results.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, ValidationError

from sslpoison.configbase import Config, format_validation_error
from sslpoison.errors import UserError
from sslpoison.experiment.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    load_config,
)
from sslpoison.experiment.results import Results
from sslpoison.sweeps.cells import Cell
from sslpoison.sweeps.checks import MetricCheck, claim_sweep_folder, finished_results
from sslpoison.sweeps.executors import ExecutorConfig, Outcome
from sslpoison.utils import atomic_write_json, atomic_write_text, resolve_device, safe_name
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
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)


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
    from sslpoison.results.plots import line_plot

    others = [k for k in grid_keys if k != spec.x]
    series: dict[str, list[tuple[Any, Any]]] = {}
    for row in rows:
        group = ", ".join(f"{k.split('.')[-1]}={row[k]}" for k in others)
        for y in spec.y:
            if row.get(y) is not None:
                label = f"{y} ({group})" if group else y
                series.setdefault(label, []).append((row[spec.x], row[y]))
    return line_plot(series, spec.x, "value", path)


class SweepIncomplete(UserError):
    """Some cells of a sweep failed (the others finished): each is named with its log."""

    #: The exit code of ``sslpoison sweep`` then (2 is a config error, before any run).
    exit_code = 3


def with_executor(
    sweep: SweepConfig, name: str | None = None, jobs: int | None = None, sets: list[str] = ()
) -> ExecutorConfig:
    """The sweep's ``executor:`` section with the command line's changes: ``--executor``
    ``name``, ``--jobs`` (local: ``jobs``; slurm: ``array_parallelism``) and
    ``--executor-set KEY=VALUE`` items."""
    raw = apply_overrides(sweep.executor.model_dump(exclude_unset=True), list(sets))
    if name is not None:
        raw["name"] = name
    if jobs is not None:
        raw["array_parallelism" if raw.get("name") == "slurm" else "jobs"] = jobs
    try:
        return ExecutorConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "executor")) from None


def planning_device(cfg: ExperimentConfig, executor: ExecutorConfig) -> torch.device:
    """The device a cell of ``cfg`` will train on under ``executor`` (its stage keys hold
    the precision it trains at): on SLURM the nodes' (CUDA when cells get GPUs), whatever
    this machine has; otherwise this machine's."""
    if executor.name == "slurm":
        if cfg.device == "auto":
            return torch.device("cuda" if executor.gpus_per_node else "cpu")
        return torch.device(cfg.device)
    return resolve_device(cfg.device)


class SweepTable:
    """The sweep's table (``sweep.md``, ``sweep.json``, rewritten as cells end): one row per
    cell in grid order; a cell without results shows ``-`` and its state."""

    def __init__(self, sweep: SweepConfig, out: Path, cells: list[Cell], combos: list[dict]):
        self.sweep, self.out, self.cells, self.combos = sweep, out, cells, combos
        self.check = MetricCheck(sweep, [c.config for c in cells])
        self.states: dict[str, str] = {}
        self.results: dict[str, dict[str, Any]] = {}

    def finished_before(self) -> list[Cell]:
        """The cells whose results are there (each metric-checked, in grid order)."""
        done = []
        for cell in self.cells:
            results = finished_results(cell.folder)
            if results is not None:
                done.append(cell)
                self._add(cell, results)
        return done

    def _add(self, cell: Cell, results: dict[str, Any]) -> None:
        self.check.seen(results["metrics"])
        self.results[cell.name] = results
        self.states[cell.name] = "done"

    def ended(self, cell: Cell, outcome: Outcome) -> None:
        """``cell`` ended with ``outcome``: its row, and the table written again."""
        results = finished_results(cell.folder) if outcome.state == "done" else None
        if results is not None:
            self._add(cell, results)
        else:
            self.states[cell.name] = "failed"
        self.write()

    def rows(self) -> list[dict[str, Any]]:
        shown = self.sweep.metrics or sorted(
            {k for r in self.results.values() for k in r["metrics"]}
        )
        rows = []
        for cell, combo in zip(self.cells, self.combos, strict=True):
            results = self.results.get(cell.name)
            metrics = results["metrics"] if results else {}
            state = self.states.get(cell.name, "pending")
            minutes = round(results["timings"]["total"] / 60, 1) if results else state
            row = {**combo, **{k: metrics.get(k) for k in shown}, "minutes": minutes}
            spreads = (results or {}).get("aggregate") or {}
            if spreads:  # a cell over seeds: its metrics are means
                row["std"] = {k: spreads[k]["std"] for k in shown if k in spreads}
            rows.append(row | {"run": cell.folder.name, "status": state})
        return rows

    def write(self) -> list[dict[str, Any]]:
        sweep, rows = self.sweep, self.rows()
        done = [r for r in rows if r["status"] == "done"]
        shown = [k for k in rows[0] if k not in (*sweep.grid, "minutes", "run", "status")]
        table = format_sweep_table(rows, [*sweep.grid, *shown, "minutes"]) + "\n"
        missing = [r for r in rows if r["status"] != "done"]
        if missing:
            states = ", ".join(f"{r['run']} ({r['status']})" for r in missing)
            table += f"\nno results yet for {len(missing)} of {len(rows)} cells: {states}\n"
        if sweep.reach is not None and done:
            table += "\n" + format_reach(done, sweep.reach, list(sweep.grid)) + "\n"
        if sweep.heatmap is not None:
            grid = heatmap_values(rows, sweep.heatmap, list(sweep.grid))
            table += "\n" + format_heatmap(grid, sweep.heatmap) + "\n"
        atomic_write_json(self.out / "sweep.json", {"grid": sweep.grid, "rows": rows})
        atomic_write_text(self.out / "sweep.md", table)
        return rows

    def finish(self) -> list[dict[str, Any]]:
        """The last table, the metric check over every cell and the pictures."""
        rows = self.write()
        self.check.finish()
        sweep, done = self.sweep, [r for r in rows if r["status"] == "done"]
        if sweep.plot is not None and done:
            plot_sweep(done, sweep.plot, list(sweep.grid), self.out / "sweep.png")
        if sweep.heatmap is not None and done:
            from sslpoison.results.plots import heat_map

            spec = sweep.heatmap
            grid = heatmap_values(rows, spec, list(sweep.grid))
            heat_map(
                grid,
                "setting",
                spec.rows,
                self.out / "sweep-heatmap.png",
                f"{sweep.name}: {spec.value}",
            )
        return rows


def sweep_cells(
    sweep: SweepConfig,
    base: Path,
    out: Path,
    overrides: list[str] = (),
    run: Callable[[ExperimentConfig, Path], Any] | None = None,
) -> tuple[list[Cell], list[dict[str, Any]]]:
    """The sweep's cells (each run with ``run``, default
    :func:`~sslpoison.experiment.runner.run_experiment`, once per seed where it has seeds:
    :func:`~sslpoison.experiment.seeds.run_config`) and their grid values."""
    from sslpoison.experiment.seeds import run_config

    runs = sweep_configs(sweep, base, list(overrides))
    names = [run_name(i, combo) for i, (combo, _) in enumerate(runs)]
    each = partial(run_config, run=run)
    cells = [Cell(n, cfg, out / n, each) for n, (_, cfg) in zip(names, runs, strict=True)]
    return cells, [combo for combo, _ in runs]


def run_sweep(
    sweep: SweepConfig,
    base: Path,
    out_dir: str | Path,
    overrides: list[str] = (),
    run: Callable[[ExperimentConfig, Path], Results | None] | None = None,
    executor: ExecutorConfig | None = None,
) -> list[dict[str, Any]]:
    """Run every cell of the sweep not finished before with ``run(cfg, folder)`` (default
    :func:`~sslpoison.experiment.runner.run_experiment`; the CLI passes its launcher; over the
    cell's seeds where it has them, :func:`~sslpoison.experiment.seeds.run_config`) on
    ``executor`` (default: the sweep's ``executor:``), the stages several cells share first
    (:mod:`sslpoison.sweeps.plan`); write the table; return its rows.

    Raises:
        SweepIncomplete: some cells failed (the others ran; the table marks them).
    """
    from sslpoison.sweeps.executors import make_executor
    from sslpoison.sweeps.plan import plan_sweep

    out, executor = Path(out_dir), executor or sweep.executor
    cells, combos = sweep_cells(sweep, base, out, overrides, run)
    table = SweepTable(sweep, out, cells, combos)  # checks the metrics it names
    claim_sweep_folder(out, sweep, [c.name for c in cells], [c.config for c in cells])
    runner = make_executor(executor, out, safe_name(sweep.name))
    finished = {c.name for c in table.finished_before()}
    pending = [c for c in cells if c.name not in finished]
    plan = plan_sweep(
        {c.name: c.config for c in pending}, lambda cfg: planning_device(cfg, executor)
    )
    for line in plan.describe(len(finished)):
        log.info("%s", line)
    for cell in table.cells:
        if cell.name in finished:
            log.info("sweep: %s finished before, reusing", cell.name)
    outcomes: dict[str, Outcome] = {}

    def ended(cell: Cell, outcome: Outcome) -> None:
        outcomes[cell.name] = outcome
        table.ended(cell, outcome)

    if pending:
        runner.run(pending, plan.phases(), ended)
    if int(os.environ.get("RANK", "0")) != 0:
        return []
    rows = table.finish()
    failed = [(n, o) for n, o in outcomes.items() if o.state != "done"]
    if failed:
        named = "; ".join(f"{n} (log: {o.log or '-'}): {o.error or 'failed'}" for n, o in failed)
        raise SweepIncomplete(
            f"sweep: {len(failed)} of {len(cells)} cells failed — {named}; the table marks "
            f"them; the same command again runs only the missing cells"
        )
    return rows


__all__ = [
    "SweepConfig",
    "SweepIncomplete",
    "combinations",
    "format_reach",
    "load_sweep",
    "run_sweep",
    "sweep_cells",
    "with_executor",
]
