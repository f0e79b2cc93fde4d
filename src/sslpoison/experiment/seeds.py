"""Repetitions over seeds: one experiment run once per seed, and the aggregate of the runs.

``seeds: [0, 1, 2]`` in a config (or ``sslpoison run CONFIG --seeds 0,1,2``) runs the
experiment once per seed ``s`` into ``OUT/seed-<s>/`` — each a plain one-seed run
(:func:`~sslpoison.experiment.runner.run_experiment`) of :func:`repetition_config`, stored in
the results store like any run — then writes the aggregate into ``OUT``:

* ``results.json``: ``metrics`` (the mean of each key over the seeds that have it),
  ``aggregate`` (``{key: {"mean", "std", "n", "values"}}``, std the sample standard deviation,
  n − 1; ``values`` in seed order), ``seeds``, ``vary``, ``runs`` (seed → folder),
  ``missing`` (keys some seeds lack, and which), ``controls`` (each effect beside its null
  control: keys, spreads, difference, threshold, ``verdict`` — ``effect``, ``within noise``
  or ``untested (n < 2)`` — of :func:`~sslpoison.results.stats.versus_control`), ``test``
  (that verdict's test), ``config`` and ``timings`` (``total``: the seeds' run times summed);
* ``summary.md``: the effects against their null controls, then every metric as mean ± std.

``vary`` (default: all three) names the stage groups a repetition's seed drives
(:class:`~sslpoison.experiment.config.StageSeeds`); the others keep the config's ``seed``, so
with ``vary: [attack, eval]`` every repetition reuses the one cached clean encoder. A run
started again reuses the seeds that finished.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslpoison.eval.backdoor import CATEGORICAL
from sslpoison.eval.controls import RowId, null_controls, row_id
from sslpoison.eval.rows import Row
from sslpoison.experiment.config import GROUPS, ExperimentConfig, StageSeeds
from sslpoison.experiment.preflight import claim_folder, run_identity
from sslpoison.experiment.results import Results, read_results, rows_from_json
from sslpoison.results.stats import TEST, format_spread, spread, versus_control
from sslpoison.train import dist
from sslpoison.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

#: A one-seed run: ``run(cfg, folder)`` writes ``folder/results.json`` and returns the
#: results (None on a ``torchrun`` rank other than 0).
RunOne = Callable[[ExperimentConfig, Path], Results | None]


def seed_folder(seed: int) -> str:
    """The folder name of one repetition: ``seed-<s>``."""
    return f"seed-{seed}"


def repetition_config(cfg: ExperimentConfig, seed: int) -> ExperimentConfig:
    """The one-seed config of repetition ``seed``: ``seed: <seed>``, no ``seeds``, and the
    stage groups not in ``vary`` pinned to the config's own ``seed`` in ``stage_seeds``
    (with those the config pins itself)."""
    pins = {g: cfg.seed for g in GROUPS if g not in cfg.vary}
    if cfg.stage_seeds is not None:
        pins |= cfg.stage_seeds.model_dump(exclude_none=True)
    stage_seeds = StageSeeds(**pins) if pins else None
    return cfg.model_copy(update={"seed": seed, "seeds": None, "stage_seeds": stage_seeds})


def aggregate(per_seed: Mapping[int, Mapping[str, float | int]]) -> dict[str, dict[str, Any]]:
    """``{key: {"mean", "std", "n", "values"}}`` of the metrics of each seed (``{seed:
    {key: value}}``), over the seeds that have the key, in seed order; ``std`` is the sample
    standard deviation (n − 1), None for a key only one seed has. Keys sorted."""
    keys = sorted({k for metrics in per_seed.values() for k in metrics})
    seeds = list(per_seed)
    return {k: spread([per_seed[s][k] for s in seeds if k in per_seed[s]]).as_json() for k in keys}


def missing_keys(per_seed: Mapping[int, Mapping[str, Any]]) -> dict[str, list[int]]:
    """``{key: [seeds without it]}`` for every key some seed lacks."""
    keys = sorted({k for metrics in per_seed.values() for k in metrics})
    found = {k: [s for s, m in per_seed.items() if k not in m] for k in keys}
    return {k: seeds for k, seeds in found.items() if seeds}


def rows_by_id(per_seed: Mapping[int, Sequence[Row]]) -> dict[RowId, list[Row]]:
    """Each row identity (:func:`~sslpoison.eval.controls.row_id`) with its row of every
    seed that has it, in seed order."""
    out: dict[RowId, list[Row]] = {}
    for rows in per_seed.values():
        for row in rows:
            out.setdefault(row_id(row), []).append(row)
    return out


def control_verdicts(per_seed: Mapping[int, Sequence[Row]]) -> list[dict[str, Any]]:
    """Every effect beside its null control (:func:`~sslpoison.eval.controls.null_controls`)
    over the seeds: keys, spreads and the verdict (:func:`versus_control`)."""
    found = rows_by_id(per_seed)
    out = []
    for pair in null_controls(found):
        effect, control = found[pair.effect], found[pair.control]
        verdict = versus_control([r.value for r in effect], [r.value for r in control])
        out.append(
            {
                "effect": effect[0].key,
                "control": control[0].key,
                "what": pair.what,
                "effect_spread": verdict.effect.as_json(),
                "control_spread": verdict.control.as_json(),
                "difference": verdict.difference,
                "threshold": verdict.threshold,
                "k": verdict.k,
                "verdict": verdict.word,
                "text": verdict.text(),
            }
        )
    return out


def format_controls(controls: Sequence[dict[str, Any]]) -> str | None:
    """The effects against their null controls, a Markdown table (None when there are none)."""
    if not controls:
        return None
    lines = [
        f"Effects against their null controls; test: {TEST}.",
        "",
        "| effect | mean ± std | null control | mean ± std | control is | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for c in controls:
        e, k = _shown(c["effect_spread"]), _shown(c["control_spread"])
        lines.append(f"| {c['effect']} | {e} | {c['control']} | {k} | {c['what']} | {c['text']} |")
    return "\n".join(lines)


def _shown(s: dict[str, Any]) -> str:
    return format_spread(spread(s["values"])) + f" (n={s['n']})"


def format_aggregate(
    agg: Mapping[str, dict[str, Any]],
    missing: Mapping[str, list[int]],
    categorical: frozenset[str] = frozenset(),
) -> str:
    """Every metric as mean ± std, n and the values, a Markdown table (the keys in
    ``categorical``, class indices, without a mean)."""
    lines = ["| metric | mean ± std | n | values |", "|---|---|---|---|"]
    for key, a in agg.items():
        values = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in a["values"])
        shown = "-" if key in categorical else format_spread(spread(a["values"]))
        lines.append(f"| {key} | {shown} | {a['n']} | {values} |")
    if missing:
        lines += ["", "Missing in some seeds: " + "; ".join(
            f"{k} (seeds {', '.join(map(str, s))})" for k, s in missing.items()
        )]  # fmt: skip
    return "\n".join(lines)


@dataclass
class SeedResults:
    """The aggregate of a run over seeds: what ``OUT/results.json`` holds (:meth:`as_json`),
    the ``tables`` of ``summary.md`` and the ``artifacts`` (each seed's folder, below
    ``out``)."""

    config: dict[str, Any]
    seeds: list[int]
    vary: list[str]
    aggregate: dict[str, dict[str, Any]]
    missing: dict[str, list[int]]
    controls: list[dict[str, Any]]
    timings: dict[str, Any]
    runs: dict[str, str]
    tables: list[str] = field(default_factory=list)
    out: Path = Path()

    @property
    def metrics(self) -> dict[str, float]:
        """The mean of every key."""
        return {k: a["mean"] for k, a in self.aggregate.items()}

    @property
    def artifacts(self) -> dict[str, str]:
        return {f"seed {s}": str(self.out / folder) for s, folder in self.runs.items()}

    def as_json(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "aggregate": self.aggregate,
            "seeds": self.seeds,
            "vary": self.vary,
            "runs": self.runs,
            **({"missing": self.missing} if self.missing else {}),
            "controls": self.controls,
            "test": TEST,
            "config": self.config,
            "timings": self.timings,
        }


def aggregate_folder(
    cfg: ExperimentConfig, out: Path, per_seed: Mapping[int, dict[str, Any]]
) -> SeedResults:
    """Write ``out/results.json`` and ``out/summary.md`` from each seed's ``results.json``
    (``{seed: its content}``); returns the aggregate."""
    metrics = {s: r["metrics"] for s, r in per_seed.items()}
    rows = {s: rows_from_json(r.get("rows") or []) for s, r in per_seed.items()}
    totals = {str(s): r["timings"].get("total", 0.0) for s, r in per_seed.items()}
    result = SeedResults(
        config=cfg.model_dump(mode="json"),
        seeds=list(per_seed),
        vary=list(cfg.vary),
        aggregate=aggregate(metrics),
        missing=missing_keys(metrics),
        controls=control_verdicts(rows),
        timings={"total": round(sum(totals.values()), 3), "seeds": totals},
        runs={str(s): seed_folder(s) for s in per_seed},
        out=out,
    )
    seeds = ", ".join(map(str, result.seeds))
    head = f"{len(result.seeds)} seeds ({seeds}); vary: {', '.join(result.vary)}"
    categorical = frozenset(r.key for rs in rows.values() for r in rs if r.metric in CATEGORICAL)
    every = format_aggregate(result.aggregate, result.missing, categorical)
    result.tables = [head, *filter(None, [format_controls(result.controls)]), every]
    summary = f"# {cfg.name}\n\n" + "\n\n".join(result.tables) + "\n"
    atomic_write_json(out / "results.json", result.as_json())
    atomic_write_text(out / "summary.md", summary)
    return result


def finished_repetition(folder: Path, cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The ``results.json`` of a repetition that finished before with this config, or None."""
    try:
        results = read_results(folder)
    except (OSError, ValueError):
        return None
    config = results.get("config")
    if not isinstance(config, dict) or "total" not in (results.get("timings") or {}):
        return None
    same = run_identity(config) == run_identity(cfg.model_dump(mode="json"))
    return results if same and isinstance(results.get("metrics"), dict) else None


def run_seeds(
    cfg: ExperimentConfig, out: str | Path, run: RunOne | None = None
) -> SeedResults | None:
    """Run ``cfg`` once per seed of ``cfg.seeds`` with ``run(cfg, folder)`` (default
    :func:`~sslpoison.experiment.runner.run_experiment`; the CLI passes its launcher) into
    ``out/seed-<s>/``, skipping the seeds that finished before, then write the aggregate
    (see the module doc). Returns it (None on a ``torchrun`` rank other than 0)."""
    if not cfg.seeds:
        raise ValueError("seeds: no seeds to run")
    if run is None:
        from sslpoison.experiment.runner import run_experiment as run

    out = Path(out)
    if dist.rank() == 0:
        identity = run_identity(cfg.model_dump(mode="json", exclude={"seeds"}))
        claim_folder(out, "seeds", cfg.name, identity)
    per_seed: dict[int, dict[str, Any]] = {}
    for i, seed in enumerate(cfg.seeds):
        one, folder = repetition_config(cfg, seed), out / seed_folder(seed)
        done = finished_repetition(folder, one)
        if done is not None:
            log.info("seed %d (%d/%d): finished before, reusing", seed, i + 1, len(cfg.seeds))
            per_seed[seed] = done
            continue
        log.info("seed %d (%d/%d) → %s", seed, i + 1, len(cfg.seeds), folder)
        t0 = time.perf_counter()
        results = run(one, folder)
        if results is None:  # a torchrun rank other than 0
            continue
        per_seed[seed] = results.as_json()
        log.info("seed %d done in %.0f s", seed, time.perf_counter() - t0)
    if dist.rank() != 0 or not per_seed:
        return None
    return aggregate_folder(cfg, out, per_seed)


def run_config(cfg: ExperimentConfig, out: str | Path, run: RunOne | None = None) -> Any:
    """Run ``cfg`` into ``out``: over its ``seeds`` (:func:`run_seeds`) when it has them,
    else once with ``run`` (default :func:`~sslpoison.experiment.runner.run_experiment`).
    Returns the results (:class:`SeedResults` or :class:`Results`; both have ``as_json``,
    ``tables`` and ``artifacts``), or None on a ``torchrun`` rank other than 0."""
    if cfg.seeds:
        return run_seeds(cfg, out, run)
    if run is None:
        from sslpoison.experiment.runner import run_experiment as run
    return run(cfg, Path(out))


__all__ = [
    "SeedResults",
    "aggregate",
    "aggregate_folder",
    "control_verdicts",
    "missing_keys",
    "repetition_config",
    "run_config",
    "run_seeds",
    "seed_folder",
]
