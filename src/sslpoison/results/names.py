"""How reports name things: attacks, defenses and detectors by their classes' ``title``,
metrics by their :class:`~sslpoison.eval.rows.Metric` — read from the registries and from
the evaluation's own metrics, never listed here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sslpoison.attacks import ATTACKS
from sslpoison.defenses import DEFENSES
from sslpoison.detectors import DETECTORS
from sslpoison.eval.backdoor import ACC, BACKDOOR_METRICS, TARGET_METRICS
from sslpoison.eval.controls import ACC_DROP
from sslpoison.eval.rows import Metric
from sslpoison.eval.zero_shot import ZERO_SHOT_METRICS

#: The title of the runs without an attack.
NO_ATTACK = "No attack: pre-training and evaluation"


def _title(registry: dict[str, Any], name: str) -> str:
    kind = registry.get(name)
    return (kind.title if kind is not None else "") or name


def attack_title(name: str | None) -> str:
    """An attack's title (its class's), its ``name`` when it has none; None: no attack."""
    return NO_ATTACK if name is None else _title(ATTACKS, name)


def defense_title(name: str) -> str:
    """A defense's title (its class's), or ``name`` (none, or not registered)."""
    return _title(DEFENSES, name)


def detector_title(name: str) -> str:
    """A detector's title (its class's), or ``name`` (none, or not registered)."""
    return _title(DETECTORS, name)


def _once(metrics: Iterable[Metric]) -> tuple[Metric, ...]:
    return tuple(dict.fromkeys(metrics))


def attack_metrics() -> tuple[Metric, ...]:
    """The metrics every registered attack adds, in table order."""
    return _once(m for kind in ATTACKS.values() for m in kind.metrics)


def encoder_metrics() -> tuple[Metric, ...]:
    """The metrics of an encoder's numbers, in table order: the backdoor evaluation's (the
    accuracy drop after the accuracy), the zero-shot ones, every attack's own, then the
    numbers of one target of several."""
    rest = [m for m in BACKDOOR_METRICS if m != ACC]
    return _once((ACC, ACC_DROP, *rest, *ZERO_SHOT_METRICS, *attack_metrics(), *TARGET_METRICS))


def defense_metrics() -> tuple[Metric, ...]:
    """The metrics every registered defense adds, in table order."""
    return _once(m for kind in DEFENSES.values() for m in kind.metrics)


def detector_metrics() -> tuple[Metric, ...]:
    """The metrics every registered detector adds, in table order (the verdict aside)."""
    return _once(m for kind in DETECTORS.values() for m in kind.metrics)


def columns(used: Iterable[str], known: Iterable[Metric]) -> list[Metric]:
    """The metrics named ``used``: the ``known`` ones in their order, then the others (by
    name, headed by their name)."""
    used = set(used)
    found = [m for m in known if m.name in used]
    return found + [Metric(n, n) for n in sorted(used - {m.name for m in found})]


__all__ = [
    "NO_ATTACK",
    "attack_metrics",
    "attack_title",
    "columns",
    "defense_metrics",
    "defense_title",
    "detector_metrics",
    "detector_title",
    "encoder_metrics",
]
