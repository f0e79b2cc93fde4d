"""Results as typed rows: one measured number each, with the flat key it is stored under.

``results.json``'s ``metrics`` (``{key: value}``), ``summary.md`` and the printed tables are
all made from rows; nothing reads a key string back into its parts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

#: The encoders a backdoor evaluation starts with; any others are defenses (or baselines).
CLEAN, ATTACKED = "clean", "attacked"
#: Suffix of a defense applied to the clean encoder as a control (``defenses.N.control``).
ON_CLEAN = "_on_clean"


@dataclass(frozen=True)
class Metric:
    """What a row measures (``Row.metric`` is its ``name``), how a report heads its column
    (``digits``: the decimal places of a value; 0 for counts and seconds) and explains it
    (``about``, when the header does not say it all). Each metric is defined once, beside
    what measures it; attacks, defenses and detectors list theirs as class attributes
    (``metrics``), and reports iterate over those."""

    name: str
    header: str
    digits: int = 4
    about: str = ""


@dataclass(frozen=True)
class Headline:
    """The numbers an attack is judged by, drawn as its headline figure: ``y`` against ``x``
    per setting and encoder; ``diagonal``: ``x`` is ``y``'s null control, so y = x is "no
    effect"."""

    x: Metric
    y: Metric
    diagonal: bool = False


@dataclass(frozen=True)
class Row:
    """One measured number.

    Attributes:
        dataset: the downstream dataset it was measured on (None for a verdict on the
            pre-training data, e.g. a detector's).
        encoder: whose number: ``clean``, ``attacked``, a defense's name, a baseline
            (``random_init``, ``pixels``).
        probe: what read the encoder: ``linear``, ``mlp``, ``knn``, ``zero_shot`` or a
            detector's name.
        metric: what was measured: ``acc``, ``asr``, ``fp``, ``zs_acc``, ``score``, ...
        value: the number (an int for counts).
        key: its flat ``results.json`` key, made from the fields above by the function that
            made the row (e.g. :func:`sslpoison.eval.backdoor.metric_key`).
        target: the backdoor target's class name when the number is one target's of several.
        setting: what else the number was measured under, e.g. the countermeasure a victim
            ran on its training set (``sphere``, ``slab``, ``knn``), or None.
    """

    dataset: str | None
    encoder: str
    probe: str
    metric: str
    value: float | int
    key: str
    target: str | None = None
    setting: str | None = None


@dataclass
class Evaluation:
    """An evaluation's rows; per dataset, the first probe's confusion matrices (backdoor
    evaluations): ``confusion[dataset]`` = ``{"classes": [...], "clean": {encoder: C×C},
    "triggered": {class_name: {encoder: C×C}}}`` (nested lists of counts); and ``notes``,
    one line each, that the summary shows (e.g. a backdoor that missed its target)."""

    rows: list[Row] = field(default_factory=list)
    confusion: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def metrics_of(rows: Iterable[Row]) -> dict[str, float | int]:
    """``{row.key: row.value}``; two rows under one key are a bug and raise."""
    metrics: dict[str, float | int] = {}
    for row in rows:
        if row.key in metrics:
            raise ValueError(f"two results under the key {row.key!r}")
        metrics[row.key] = row.value
    return metrics


__all__ = [
    "ATTACKED",
    "CLEAN",
    "ON_CLEAN",
    "Evaluation",
    "Headline",
    "Metric",
    "Row",
    "metrics_of",
]
