"""The statistics every figure is reported with (docs/results.md, ALGORITHMS "Noise floors").

A number measured over several seeds is its mean ± sample standard deviation (n − 1) over
them, with n (:func:`spread`, :func:`format_spread`). A difference is called an **effect**
only when it clears its null control by more than ``k`` standard deviations of the two
(:func:`versus_control`)::

    effect − control > k · √(s²_effect + s²_control)      (one-sided; k = 2 by default)

and is "within noise" otherwise; with fewer than two seeds on either side it is not tested.
The acceptance bars of the indiscriminate presets use k = 3 (:data:`K_INDISCRIMINATE`).
:data:`TEST` names the test wherever a verdict is shown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: The default number of standard deviations an effect must clear its control by.
K_DEFAULT = 2.0
#: ... for the acceptance bars of the indiscriminate presets.
K_INDISCRIMINATE = 3.0


def describe_test(k: float = K_DEFAULT) -> str:
    """The test, as printed beside a verdict."""
    return f"effect − control > {k:g}·√(s²ₑ + s²꜀) (one-sided; s: sample std over seeds, n − 1)"


#: The default test's name.
TEST = describe_test()


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n − 1; None for a single value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


@dataclass(frozen=True)
class Spread:
    """A number over seeds: ``mean``, sample ``std`` (None for one value), ``n`` and the
    ``values`` themselves (in seed order)."""

    mean: float
    std: float | None
    n: int
    values: tuple[float | int, ...]

    def as_json(self) -> dict:
        """``{"mean", "std", "n", "values"}`` (the aggregate ``results.json``'s form)."""
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": list(self.values)}


def spread(values: Sequence[float | int]) -> Spread:
    """The :class:`Spread` of ``values`` (at least one)."""
    if not values:
        raise ValueError("spread: no values")
    m, s = mean_std(values)
    return Spread(m, s, len(values), tuple(values))


def format_spread(s: Spread, digits: int = 4) -> str:
    """``mean ± std`` to ``digits`` places (``mean`` alone for one value); counts (all values
    integers) to one place, or as an integer when every seed gave the same count."""
    integer = all(isinstance(v, int) and not isinstance(v, bool) for v in s.values)
    if s.std is None or (integer and s.std == 0):
        return f"{s.mean:.0f}" if integer else f"{s.mean:.{digits}f}"
    d = 1 if integer else digits
    return f"{s.mean:.{d}f} ± {s.std:.{d}f}"


@dataclass(frozen=True)
class Verdict:
    """An effect against its null control: the two spreads, ``k``, the difference of the
    means, the threshold k·√(s²ₑ + s²꜀) (None when either side has fewer than two seeds)
    and whether the difference clears it (None: not tested)."""

    effect: Spread
    control: Spread
    k: float
    difference: float
    threshold: float | None
    is_effect: bool | None

    @property
    def word(self) -> str:
        """``effect``, ``within noise`` or ``untested (n < 2)``."""
        if self.is_effect is None:
            return "untested (n < 2)"
        return "effect" if self.is_effect else "within noise"

    def text(self, digits: int = 4) -> str:
        """The verdict with its numbers, e.g. ``effect: Δ 0.4100 > 2·σ 0.0500``."""
        delta = f"Δ {self.difference:.{digits}f}"
        if self.threshold is None:
            return f"{self.word}: {delta}"
        sign = ">" if self.is_effect else "≤"
        return f"{self.word}: {delta} {sign} {self.k:g}·σ {self.threshold:.{digits}f}"


def versus_control(
    effect: Sequence[float | int], control: Sequence[float | int], k: float = K_DEFAULT
) -> Verdict:
    """The verdict on ``effect`` (values over seeds) against its null ``control`` (values
    over seeds): an effect when mean(effect) − mean(control) > k·√(s²ₑ + s²꜀)."""
    e, c = spread(effect), spread(control)
    difference = e.mean - c.mean
    if e.std is None or c.std is None:
        return Verdict(e, c, k, difference, None, None)
    threshold = k * math.sqrt(e.std**2 + c.std**2)
    return Verdict(e, c, k, difference, threshold, difference > threshold)


__all__ = [
    "K_DEFAULT",
    "K_INDISCRIMINATE",
    "TEST",
    "Spread",
    "Verdict",
    "describe_test",
    "format_spread",
    "mean_std",
    "spread",
    "versus_control",
]
