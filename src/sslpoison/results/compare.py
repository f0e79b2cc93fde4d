"""Comparing stored runs: runs of one setting over several seeds grouped, the settings that
tell groups apart named, chosen metrics as mean ± std (``sslpoison runs --compare``)."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sslpoison.detectors.base import FLAGGED
from sslpoison.eval.backdoor import ACC, ASR, FP
from sslpoison.eval.controls import ACC_DROP, BASELINES
from sslpoison.eval.downstream import EvalConfig
from sslpoison.eval.rows import Row
from sslpoison.eval.zero_shot import ZERO_SHOT
from sslpoison.results.stats import format_spread, mean_std, spread
from sslpoison.results.store import StoredRun, without_seeds


def first_probe(config: dict[str, Any]) -> str:
    """The run's first probe (whose numbers carry no suffix)."""
    return ((config.get("eval") or {}).get("probes") or EvalConfig().probes)[0]


def is_headline(row: Row, probe: str) -> bool:
    """Whether ``row`` is one of a run's headline numbers: the first ``probe``'s accuracy,
    ASR and FP of each encoder (CA, BA, ASR-B, ASR), the zero-shot numbers, the linear
    victim's accuracy drop, a detector's verdict."""
    if row.target is not None or row.setting is not None:
        return False
    if row.dataset is None:
        return row.metric == FLAGGED.name
    if row.encoder in BASELINES:
        return False
    if row.probe == ZERO_SHOT:
        return True
    if row.metric in (ACC.name, ASR.name, FP.name):
        return row.probe == probe
    return row.metric == ACC_DROP.name and row.probe == "linear"


def headline_keys(runs: Sequence[StoredRun]) -> list[str]:
    """The flat keys of the runs' headline rows, in the order first met."""
    keys: dict[str, None] = {}
    for run in runs:
        probe = first_probe(run.config)
        keys |= dict.fromkeys(r.key for r in run.rows if is_headline(r, probe))
    return list(keys)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested config (items of a list of sections by index:
    ``defenses.0.clean``; a list of plain values stays one value)."""
    if isinstance(config, dict):
        items = config.items()
    elif isinstance(config, list) and any(isinstance(v, (dict, list)) for v in config):
        items = ((str(i), v) for i, v in enumerate(config))
    else:
        return {prefix: config}
    out: dict[str, Any] = {}
    for k, v in items:
        out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
    return out


@dataclass
class Group:
    """The runs of one setting (same config but for seeds), what tells it apart from the
    other groups of the same preset (``differs``: dotted key → value), and where it departs
    from their most common setting (``departs``: the same, for fewer keys)."""

    name: str
    runs: list[StoredRun]
    differs: dict[str, Any]
    departs: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The preset's name and each key in which this group departs from the most common
        setting of its preset, e.g. ``p (attack.lambda2=5)``."""
        shown = ", ".join(f"{k}={_short(v)}" for k, v in self.departs.items())
        return f"{self.name} ({shown})" if shown else self.name

    @property
    def full_label(self) -> str:
        """The preset's name and every differing setting with its dotted key."""
        shown = ", ".join(f"{k}={_short(v)}" for k, v in self.differs.items())
        return f"{self.name} ({shown})" if shown else self.name

    @property
    def seeds(self) -> list[Any]:
        return [r.seed for r in self.runs]

    def values(self, key: str) -> list[float | int]:
        """The metric ``key`` of each run that has it."""
        return [r.metrics[key] for r in self.runs if key in r.metrics]

    def rows(self, select: Any) -> dict[tuple, list[Row]]:
        """The rows ``select(row, run)`` keeps, by (dataset, encoder, probe, metric, target,
        setting), one per run that has it."""
        out: dict[tuple, list[Row]] = {}
        for run in self.runs:
            for r in run.rows:
                if select(r, run):
                    key = (r.dataset, r.encoder, r.probe, r.metric, r.target, r.setting)
                    out.setdefault(key, []).append(r)
        return out


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def group_runs(runs: Sequence[StoredRun]) -> list[Group]:
    """The runs grouped by setting (:func:`~sslpoison.results.store.settings_key`), in the
    order first met; each group's ``differs`` names the settings (seeds aside) in which it
    differs from another group of the same preset, those its value is rarest in first, and
    ``departs`` those of them where its value is not the one most groups of the preset share
    (every group names a key no value of which is shared by more groups than the others)."""
    by_setting: dict[str, list[StoredRun]] = {}
    for run in runs:
        by_setting.setdefault(run.settings, []).append(run)
    flat = {s: flatten(without_seeds(members[0].config)) for s, members in by_setting.items()}
    groups = []
    for setting, members in by_setting.items():
        name = members[0].name
        peers = [flat[s] for s, m in by_setting.items() if m[0].name == name and s != setting]
        mine = flat[setting]
        keys = dict.fromkeys([*mine, *(k for p in peers for k in p)])
        shared = {k: sum(p.get(k, "-") == mine.get(k, "-") for p in peers) for k in keys}
        differs = {
            k: mine.get(k, "-")
            for k in sorted(keys, key=lambda k: shared[k])  # what sets it apart most, first
            if shared[k] < len(peers)
        }
        departs = {
            k: v for k, v in differs.items() if not _most_common(v, [p.get(k, "-") for p in peers])
        }
        groups.append(Group(name, members, differs, departs))
    return groups


def _most_common(value: Any, others: list[Any]) -> bool:
    """Whether ``value``, once more than among ``others``, is more common than any other."""
    count = 1 + sum(o == value for o in others)
    return all(sum(o == u for o in others) < count for u in others if u != value)


@dataclass
class Comparison:
    """Chosen metrics (``columns``) across the groups of runs."""

    columns: list[str]
    groups: list[Group]

    def cell(self, group: Group, key: str) -> tuple[float, float | None, int] | None:
        """(mean, std or None, number of runs) of metric ``key`` over the group's seeds."""
        values = group.values(key)
        return (*mean_std(values), len(values)) if values else None


def compare(runs: Sequence[StoredRun], patterns: Sequence[str] = ()) -> Comparison:
    """The runs' metrics whose keys match any of ``patterns`` (globs, e.g. ``*/asr``; default:
    the headline keys, :func:`is_headline`), per group of runs that differ only in seeds."""
    if patterns:
        known = dict.fromkeys(k for run in runs for k in run.metrics)
        columns = [k for p in patterns for k in known if fnmatch.fnmatchcase(k, p)]
        columns = list(dict.fromkeys(columns))
    else:
        columns = headline_keys(runs)
    return Comparison(columns, group_runs(runs))


def format_cell(values: Sequence[float | int], digits: int = 4) -> str:
    """``mean ± std`` (``mean`` alone for one value, ``-`` for none) to ``digits`` places;
    counts (integers) as integers (one count when all are equal), their mean ± std to one
    place."""
    return format_spread(spread(values), digits) if values else "-"


def format_comparison(table: Comparison) -> str:
    """A Markdown table: one line per group (its label and seeds), one column per metric."""
    if not table.columns:
        return "(no metric matches)"
    head = ["setting", "runs", "seeds", *table.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in table.groups:
        seeds = ",".join(str(s) for s in sorted(set(g.seeds), key=str))
        cells = [g.label, str(len(g.runs)), seeds]
        cells += [format_cell(g.values(k)) for k in table.columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = [
    "Comparison",
    "Group",
    "compare",
    "format_comparison",
    "group_runs",
    "headline_keys",
    "is_headline",
    "mean_std",
]
