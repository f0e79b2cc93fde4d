"""What the HTML report shows, gathered from stored runs as typed records (the page that
renders them: :mod:`.html_report`).

Accessors on one run (:class:`~sslpoison.results.store.StoredRun`) read one kind of number
each — an encoder's numbers by :class:`Line`, the filters' scores, the detectors' numbers by
:class:`Judged`, a defense's :class:`Cost`, the :class:`Classes` — and :func:`over_seeds`
lists them over the runs of a setting (a :class:`~sslpoison.results.compare.Group`); the
functions after it gather what one part of the page needs over several settings.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sslpoison.defenses.base import FILTER
from sslpoison.eval.backdoor import ACC, ASR, FP
from sslpoison.eval.controls import ACC_DROP, BASELINES, null_controls
from sslpoison.eval.rows import ATTACKED, CLEAN, Headline, Metric, Row
from sslpoison.eval.zero_shot import TARGETED_SUCCESS, ZERO_SHOT, ZS_ASR
from sslpoison.experiment.results import CONFUSION, defense_stage_name, inverted_trigger
from sslpoison.results.compare import Group, first_probe, mean_std
from sslpoison.results.names import encoder_metrics
from sslpoison.results.report import defense_seconds
from sslpoison.results.report_figures import Point, Series
from sslpoison.results.stats import Verdict, versus_control
from sslpoison.results.store import StoredRun

#: Metrics drawn against a swept setting.
SWEPT = (ASR, ACC, FP, ZS_ASR, TARGETED_SUCCESS, ACC_DROP)

K = TypeVar("K", bound=Hashable)
#: A run's numbers by metric name.
Numbers = dict[str, float]
#: Numbers over the runs of a setting: by metric name, one value per run that has it.
OverSeeds = dict[str, list[float]]


@dataclass(frozen=True)
class Line:
    """What one set of an encoder's numbers was measured on (a line of the encoders table):
    the dataset, the encoder, the probe (an indiscriminate attack's victim), the target of
    several, the setting (the victim's countermeasure)."""

    dataset: str
    encoder: str
    probe: str
    target: str | None = None
    setting: str | None = None

    def order(self) -> tuple:
        """Sort key: by dataset, then clean, attacked, defenses, baselines, then the rest."""
        roles = {CLEAN: 0, ATTACKED: 1}
        role = roles.get(self.encoder, 3 if self.encoder in BASELINES else 2)
        return (self.dataset, role, self.encoder, self.probe, self.target or "", self.setting or "")

    @property
    def plain(self) -> bool:
        """Whether these are the encoder's own numbers (no one target's, no countermeasure)."""
        return self.target is None and self.setting is None


@dataclass(frozen=True)
class Judged:
    """A detector's verdict on one encoder."""

    detector: str
    encoder: str


@dataclass(frozen=True)
class Cost:
    """What a defense took: the clean images it used and its wall seconds (for a filter of
    the pre-training data with the pre-training again); None where its record has none."""

    clean_images: int | None = None
    wall_s: float | None = None


@dataclass(frozen=True)
class Classes:
    """A run's class names per dataset and its backdoor targets' names per dataset, from its
    confusion matrices (both empty for a run that wrote none: indices are shown then)."""

    names: dict[str, list[str]] = field(default_factory=dict)
    targets: dict[str, list[str]] = field(default_factory=dict)

    def name(self, dataset: str, index: float) -> str:
        """The name of class ``index`` of ``dataset``, or the index when unknown."""
        found = self.names.get(dataset, [])
        i = int(index)
        return found[i] if i == index and 0 <= i < len(found) else f"{index:g}"

    def target(self, line: Line) -> str | None:
        """The target ``line`` measures: its own, else the dataset's one target, else None."""
        if line.target is not None:
            return line.target
        found = self.targets.get(line.dataset, [])
        return found[0] if len(found) == 1 else None


# --- what each run contributes ------------------------------------------------------------


def encoder_numbers(run: StoredRun) -> dict[Line, Numbers]:
    """Every number the run measured on a dataset, by :class:`Line`; for an attacked run only
    the first probe's accuracy, ASR and FP (the attack's own view). ``acc_drop``: the
    attack's own, else the clean encoder's accuracy minus this encoder's (same dataset,
    probe, target and setting)."""
    probe, attacked = first_probe(run.config), run.attack is not None
    own_view = (ACC.name, ASR.name, FP.name)
    found: dict[Line, Numbers] = {}
    for r in run.rows:
        if r.dataset is None or (attacked and r.metric in own_view and r.probe != probe):
            continue
        line = Line(r.dataset, r.encoder, r.probe, r.target, r.setting)
        found.setdefault(line, {})[r.metric] = r.value
    if attacked:
        for line, numbers in found.items():
            clean = found.get(_as(line, CLEAN), {}).get(ACC.name)
            if line.encoder in (CLEAN, *BASELINES) or ACC.name not in numbers or clean is None:
                continue
            numbers.setdefault(ACC_DROP.name, clean - numbers[ACC.name])
    return found


def _as(line: Line, encoder: str) -> Line:
    return Line(line.dataset, encoder, line.probe, line.target, line.setting)


def filter_numbers(run: StoredRun) -> dict[str, Numbers]:
    """The scores of each filter of the pre-training data, by defense name."""
    out: dict[str, Numbers] = {}
    for r in run.rows:
        if r.probe == FILTER and r.dataset is None:
            out.setdefault(r.encoder, {})[r.metric] = r.value
    return out


def detector_numbers(run: StoredRun) -> dict[Judged, Numbers]:
    """Each detector's numbers and verdict (``flagged``) on each encoder it judged."""
    out: dict[Judged, Numbers] = {}
    for r in run.rows:
        if r.dataset is None and r.probe != FILTER:
            out.setdefault(Judged(r.probe, r.encoder), {})[r.metric] = r.value
    return out


def defense_cost(run: StoredRun, name: str) -> Cost:
    """The clean images and wall seconds of defense ``name``'s stage record (the original
    run's when the stage came from the cache)."""
    record = run.stages.get(defense_stage_name(name)) or {}
    clean = record.get("clean_images")
    return Cost(clean if isinstance(clean, int) else None, defense_seconds(record))


def inverted_trigger_path(run: StoredRun, judged: Judged) -> str | None:
    """The picture of the trigger a detector inverted, when the run kept one."""
    return run.artifacts.get(inverted_trigger(judged.detector, judged.encoder))


def classes(run: StoredRun) -> Classes:
    """The run's class names and targets, from its ``confusion.json`` (empty when it has
    none or the file cannot be read)."""
    path = run.artifacts.get(CONFUSION)
    try:
        found = json.loads(Path(path).read_text()) if path else {}
    except (OSError, ValueError):
        found = {}
    names, targets = {}, {}
    for dataset, conf in found.items() if isinstance(found, dict) else ():
        if isinstance(conf, dict) and isinstance(conf.get("classes"), list):
            names[dataset] = [str(c) for c in conf["classes"]]
            targets[dataset] = [str(t) for t in conf.get("triggered") or {}]
    return Classes(names, targets)


def pictures(run: StoredRun) -> list[tuple[str, str]]:
    """The run's PNG figures but the inverted triggers, as (name, path): triggers first,
    then confusion matrices, the defenses' plot and the rest."""
    inverted = {inverted_trigger(j.detector, j.encoder) for j in detector_numbers(run)}
    found = [
        (n, p) for n, p in run.artifacts.items() if str(p).endswith(".png") and n not in inverted
    ]
    return sorted(found, key=lambda item: (_picture_rank(item[0]), item[0]))


def _picture_rank(name: str) -> int:
    for i, prefix in enumerate(("trigger:", f"{CONFUSION}:", "defenses_plot")):
        if name.startswith(prefix):
            return i
    return 3


# --- over the runs of a setting ---------------------------------------------------------------


def over_seeds(
    group: Group, numbers: Callable[[StoredRun], dict[K, Numbers]]
) -> dict[K, OverSeeds]:
    """``numbers(run)`` of every run of ``group``, each value listed over the runs."""
    out: dict[K, OverSeeds] = {}
    for run in group.runs:
        for key, values in numbers(run).items():
            slot = out.setdefault(key, {})
            for metric, value in values.items():
                slot.setdefault(metric, []).append(value)
    return out


def group_classes(group: Group) -> Classes:
    """The class names of the first run of ``group`` that has them."""
    for run in group.runs:
        if (found := classes(run)).names:
            return found
    return Classes()


@dataclass(frozen=True)
class Effect:
    """An effect beside its null control over the seeds of a setting, and the verdict."""

    group: Group
    effect: Row
    effects: list[float]
    control: Row
    controls: list[float]
    what: str
    verdict: Verdict


def effects(groups: Sequence[Group]) -> list[Effect]:
    """Each effect of each setting beside its null control
    (:func:`~sslpoison.eval.controls.null_controls`)."""
    out = []
    for g in groups:
        found = g.rows(lambda row, run: True)
        for pair in null_controls(found):
            effect, control = found[pair.effect], found[pair.control]
            e, c = [r.value for r in effect], [r.value for r in control]
            out.append(Effect(g, effect[0], e, control[0], c, pair.what, versus_control(e, c)))
    return out


@dataclass(frozen=True)
class DefenseLine:
    """One encoder of one setting on one dataset, beside the defenses: its accuracy, ASR,
    FP, zero-shot numbers (CLIP) and cost, over seeds."""

    group: Group
    dataset: str
    encoder: str
    numbers: OverSeeds
    zero_shot: OverSeeds
    clean_images: list[int]
    wall_s: list[float]

    def point(self) -> Point:
        """Accuracy (x) and ASR (y), coloured by encoder, marked by dataset."""
        (acc, acc_s), (asr, asr_s) = (mean_std(self.numbers[m.name]) for m in (ACC, ASR))
        return Point(self.encoder, self.dataset, acc, asr, acc_s, asr_s)


def defense_lines(groups: Sequence[Group]) -> list[DefenseLine]:
    """The clean, attacked and defended encoders of each setting that has a defended one
    (accuracy and ASR measured), on each dataset."""
    lines = []
    for g in groups:
        spread = over_seeds(g, encoder_numbers)
        plain = {k: v for k, v in spread.items() if k.plain and k.probe != ZERO_SHOT}
        defended = {
            (k.dataset, k.encoder) for k, v in plain.items()
            if k.encoder not in (CLEAN, ATTACKED, *BASELINES) and ACC.name in v
        }  # fmt: skip
        if not defended:
            continue
        for k in sorted(plain, key=lambda k: (k.dataset, k.encoder, k.probe)):
            numbers = plain[k]
            if ACC.name not in numbers or ASR.name not in numbers or k.encoder in BASELINES:
                continue
            if k.encoder not in (CLEAN, ATTACKED) and (k.dataset, k.encoder) not in defended:
                continue
            costs = [defense_cost(run, k.encoder) for run in g.runs]
            zs = spread.get(Line(k.dataset, k.encoder, ZERO_SHOT), {})
            clean = [c.clean_images for c in costs if c.clean_images is not None]
            wall = [c.wall_s for c in costs if c.wall_s is not None]
            lines.append(DefenseLine(g, k.dataset, k.encoder, numbers, zs, clean, wall))
    return lines


def headline_points(groups: Sequence[Group], headline: Headline) -> list[Point]:
    """``headline.y`` against ``headline.x`` for each setting (the colour) and each encoder
    line that has both (the marker: the encoder, and the probe, target or countermeasure
    where those vary), mean and std over seeds; baselines left out."""
    x, y = headline.x.name, headline.y.name
    found = []
    for g in groups:
        for line, numbers in over_seeds(g, encoder_numbers).items():
            if x in numbers and y in numbers and line.encoder not in BASELINES:
                found.append((g, line, numbers))
    datasets = len({line.dataset for _, line, _ in found}) > 1
    names = _brief([line for _, line, _ in found])
    points = []
    for g, line, numbers in found:
        (xm, xs), (ym, ys) = mean_std(numbers[x]), mean_std(numbers[y])
        colour = f"{g.label} · {line.dataset}" if datasets else g.label
        points.append(Point(colour, names[line], xm, ym, xs, ys))
    return points


def _brief(lines: Sequence[Line]) -> dict[Line, str]:
    """Each line named by its encoder and whichever of probe, target and setting vary."""
    varying = [f for f in ("probe", "target", "setting") if len({getattr(k, f) for k in lines}) > 1]
    return {
        k: " · ".join([k.encoder, *(str(getattr(k, f) or "none") for f in varying)]) for k in lines
    }


@dataclass(frozen=True)
class Sweep:
    """The headline numbers of the settings of one preset against a numeric key ``x`` they
    differ in: one panel per metric, one line per dataset, encoder and other setting."""

    name: str
    x: str
    panels: dict[Metric, list[Series]]


def sweeps(groups: Sequence[Group]) -> list[Sweep]:
    """A :class:`Sweep` for each numeric key in which the settings of one preset differ."""
    by_name: dict[str, list[Group]] = {}
    for g in groups:
        by_name.setdefault(g.name, []).append(g)
    found = []
    for name, members in by_name.items():
        for x in dict.fromkeys(k for g in members for k in g.differs):
            xs = [g.differs.get(x) for g in members]
            if len(members) < 2 or not all(_number(v) for v in xs) or len(set(xs)) < 2:
                continue
            if panels := sweep_panels(members, x):
                found.append(Sweep(name, x, panels))
    return found


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Swept:
    """A number worth plotting against a swept setting."""

    metric: str
    dataset: str
    encoder: str


def swept_numbers(run: StoredRun) -> dict[Swept, float]:
    """The run's headline numbers (:data:`SWEPT`): the first probe's (the linear victim's
    accuracy drop) and the zero-shot ones, of every encoder but the baselines."""
    out = {}
    probe = first_probe(run.config)
    wanted = [m.name for m in SWEPT]
    for line, numbers in encoder_numbers(run).items():
        if not line.plain or line.encoder in BASELINES:
            continue
        drop = ACC_DROP.name in numbers
        if line.probe not in (probe, ZERO_SHOT) and not (line.probe == "linear" and drop):
            continue
        for metric in wanted:
            clean_drop = metric == ACC_DROP.name and line.encoder == CLEAN and ACC.name in numbers
            if metric in numbers and not clean_drop:
                out[Swept(metric, line.dataset, line.encoder)] = numbers[metric]
    return out


def sweep_panels(members: Sequence[Group], x: str) -> dict[Metric, list[Series]]:
    """The lines of one sweep: for each metric, one line per (dataset, encoder, the other
    settings that differ), over the values of the setting ``x`` (lines of one point left out)."""
    panels: dict[str, dict[str, list]] = {}
    for g in members:
        others = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in g.differs.items() if k != x)
        spread = over_seeds(g, lambda run: {0: swept_numbers(run)}).get(0, {})
        for s, values in spread.items():
            line = f"{s.dataset} · {s.encoder}" + (f" · {others}" if others else "")
            panels.setdefault(s.metric, {}).setdefault(line, []).append(
                (g.differs[x], *mean_std(values))
            )
    known = {m.name: m for m in encoder_metrics()}
    shown = {}
    for metric, lines in panels.items():
        series = [
            Series(k if len(k) <= 60 else k[:57] + "...", tuple(points))
            for k, points in lines.items()
            if len(points) > 1
        ]
        if series:
            shown[known.get(metric, Metric(metric, metric))] = series
    return shown


__all__ = [
    "Classes",
    "Cost",
    "DefenseLine",
    "Effect",
    "Judged",
    "Line",
    "Sweep",
    "classes",
    "defense_cost",
    "defense_lines",
    "detector_numbers",
    "effects",
    "encoder_numbers",
    "filter_numbers",
    "group_classes",
    "headline_points",
    "over_seeds",
    "pictures",
    "sweeps",
]
