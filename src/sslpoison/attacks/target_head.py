"""Stage 1 of the attacks that aim at a head (``gc``, ``feature_targeted``): the target head
parameters θ* (GradPC: Sun et al., AAAI 2021; Lu, Kamath, Yu, ICML 2023), at a given radius
around the clean head or at the largest radius that gradient canceling in feature space
reaches — the target's "poisonability" — and gradient canceling in feature space itself.

Everything works on features standardised with the clean set's statistics (the attacker's
coordinates, :class:`~sslpoison.attacks.linear_victim.LinearVictim`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from sslpoison.attacks.linear_victim import (
    LinearVictim,
    clean_sums,
    gc_objective,
    gradpc,
    refit_bias,
)
from sslpoison.attacks.newton import NewtonDistance
from sslpoison.attacks.optimise import optimise_poisons
from sslpoison.configbase import Config

log = logging.getLogger(__name__)

#: What gradient canceling minimises: ``newton`` — the Newton distance ‖H⁻¹g‖² (ours, the
#: default); ``gradient`` — the gradient's squared norm ‖g‖² (the authors').
GCObjective = Literal["newton", "gradient"]

#: A poison objective: (standardised P×D poisons, their labels) → scalar.
PoisonObjective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class RadiusSearch(Config):
    """How ``radius: auto`` picks the GradPC radius: the largest that gradient canceling in
    feature space reaches — the target's "poisonability" (Lu, Kamath, Yu, ICML 2023: a
    target is reachable only when ε is above its threshold). Bisection on a log scale
    between ``low`` and ``high`` (``steps`` halvings); each candidate target is attacked by
    ``gc_steps`` Adam steps of peak size ``lr`` on the poisoned features (Newton distance,
    within the range of the real features) and counts as reached when the head retrained
    on clean ∪ those features has covered all but ``reach`` of the clean head's distance to
    it. When no candidate is reached, ``low`` is used."""

    low: PositiveFloat = 0.01
    high: PositiveFloat = 0.5
    steps: PositiveInt = 4
    reach: float = Field(0.25, gt=0.0, lt=1.0)
    gc_steps: PositiveInt = 100
    lr: PositiveFloat = 0.1

    @model_validator(mode="after")
    def _ordered(self) -> RadiusSearch:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class TargetHeadConfig(Config):
    """The target head θ* by GradPC: ``radius`` (the L2 ball's, as a share of ‖θ‖ of
    the clean head; ``auto``: the largest that feature-space gradient canceling reaches, by
    ``search``) and GradPC's ``batch_size``. ``reachable`` (our addition, on by default):
    then re-fit θ*'s bias on the clean set, so that the poisons need not shift the predicted
    class counts, which ε·N poisons cannot do by more than ε·N (see
    :func:`~sslpoison.attacks.linear_victim.refit_bias`)."""

    radius: PositiveFloat | Literal["auto"] = 0.05
    batch_size: PositiveInt = 64
    reachable: bool = True
    search: RadiusSearch = Field(default_factory=RadiusSearch)


@dataclass
class TargetHead:
    """Stage 1's result: the clean ``head`` and the ``target`` θ* (both on standardised
    features), its GradPC ``radius``, facts for the record, and — when the radius was
    searched — the feature-space GC poisons (standardised P×D) that reached it."""

    head: nn.Linear
    target: nn.Linear
    radius: float
    facts: dict[str, Any] = field(default_factory=dict)
    poisons: torch.Tensor | None = None


def head_distance(head: nn.Linear, target: nn.Linear) -> float:
    """‖θ − θ*‖ / ‖θ*‖ over (W, b) of two heads on the same features."""
    theta = torch.cat([head.weight.detach().flatten(), head.bias.detach()])
    goal = torch.cat([target.weight.detach().flatten(), target.bias.detach()]).to(theta)
    return ((theta - goal).norm() / goal.norm()).item()


def train_accuracy(head: nn.Linear, x: torch.Tensor, labels: torch.Tensor) -> float:
    """``head``'s accuracy on (standardised ``x``, ``labels``)."""
    with torch.no_grad():
        return (head(x.to(head.weight)).argmax(1) == labels).double().mean().item()


def target_facts(
    head: nn.Linear, target: nn.Linear, x: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """The clean head's and θ*'s accuracies on the clean set, and their distance."""
    return {
        "clean_head_train_acc": train_accuracy(head, x, labels),
        "target_train_acc": train_accuracy(target, x, labels),
        "clean_head_to_target": head_distance(head, target),
    }


def target_at(
    head: nn.Linear, x: torch.Tensor, labels: torch.Tensor, radius: float, cfg: TargetHeadConfig,
    seed: int,
) -> nn.Linear:  # fmt: skip
    """The GradPC target at ``radius`` around the clean ``head`` (bias re-fitted when
    ``cfg.reachable``)."""
    target = gradpc(head, x, labels, radius, cfg.batch_size, seed)
    return refit_bias(target, x, labels) if cfg.reachable else target


def gc_loss(
    kind: GCObjective, victim: LinearVictim, target: nn.Linear, x: torch.Tensor,
    labels: torch.Tensor,
) -> PoisonObjective:  # fmt: skip
    """The gradient-canceling objective of standardised poisons at ``target`` over clean
    (standardised ``x``, ``labels``) ∪ poisons: the Newton distance
    (:class:`~sslpoison.attacks.newton.NewtonDistance`) or the gradient's squared norm
    (:func:`~sslpoison.attacks.linear_victim.gc_objective`)."""
    if kind == "newton":
        return NewtonDistance(victim, target, x, labels)
    raw = victim.raw(x)
    sums = clean_sums(victim, target, raw, labels)
    return lambda p, y: gc_objective(victim, target, sums, victim.raw(p), y)


def gc_in_features(
    victim: LinearVictim, target: nn.Linear, x: torch.Tensor, labels: torch.Tensor,
    start: torch.Tensor, poison_labels: torch.Tensor, *, steps: int, lr: float, seed: int,
    desc: str, objective: GCObjective = "newton",
) -> tuple[torch.Tensor, list[float]]:  # fmt: skip
    """Gradient canceling in feature space: standardised poisons (P×D, from ``start``, kept
    within the per-dimension range of the clean ``x``) minimising ``objective`` at
    ``target`` (:func:`gc_loss`); returns them and the objective at every step."""
    loss = gc_loss(objective, victim, target, x, labels)
    low, high = x.min(0).values, x.max(0).values
    return optimise_poisons(
        start, low, high, lambda p: loss(p, poison_labels), steps=steps, lr=lr, seed=seed,
        desc=desc,
    )  # fmt: skip


def choose_target(
    victim: LinearVictim, head: nn.Linear, x: torch.Tensor, labels: torch.Tensor,
    start: torch.Tensor, poison_labels: torch.Tensor, cfg: TargetHeadConfig, seed: int,
) -> TargetHead:  # fmt: skip
    """Stage 1: θ* around the clean ``head`` on standardised ``x`` — at ``cfg.radius``, or,
    for ``auto``, at the largest radius that feature-space GC reaches from the poisons
    ``start`` (P×D) with ``poison_labels`` (:class:`RadiusSearch`)."""
    if cfg.radius != "auto":
        target = target_at(head, x, labels, cfg.radius, cfg, seed)
        facts = target_facts(head, target, x, labels) | {"radius": cfg.radius}
        log.info(
            "target: radius %.3g, accuracy on the clean set %.3f (clean head %.3f)",
            cfg.radius, facts["target_train_acc"], facts["clean_head_train_acc"],
        )  # fmt: skip
        return TargetHead(head, target, cfg.radius, facts)
    search, trials = cfg.search, []
    found: TargetHead | None = None

    def attempt(radius: float) -> bool:
        nonlocal found
        target = target_at(head, x, labels, radius, cfg, seed)
        poisons, values = gc_in_features(
            victim, target, x, labels, start, poison_labels, steps=search.gc_steps,
            lr=search.lr, seed=seed, desc=f"target search: gc at radius {radius:.3g}",
        )  # fmt: skip
        retrained = victim.retrain(x, labels, poisons, poison_labels)
        left = head_distance(retrained, target) / max(head_distance(head, target), 1e-12)
        reached = left <= search.reach
        trials.append(
            {"radius": radius, "left": left, "reached": reached, "objective_end": values[-1]}
        )
        log.info(
            "target search: radius %.3g %s — the retrained head has %.0f %% of the way left "
            "(objective %.3g → %.3g)", radius, "reached" if reached else "not reached",
            100 * left, values[0], values[-1],
        )  # fmt: skip
        if reached and (found is None or radius > found.radius):
            found = TargetHead(head, target, radius, poisons=poisons)
        return reached

    low, high = search.low, search.high
    for _ in range(search.steps):
        mid = math.sqrt(low * high)
        if attempt(mid):
            low = mid
        else:
            high = mid
    if found is None and not attempt(search.low):
        found = TargetHead(head, target_at(head, x, labels, search.low, cfg, seed), search.low)
        log.info("target search: no radius reached; using the lowest, %.3g", search.low)
    assert found is not None
    found.facts = target_facts(head, found.target, x, labels) | {
        "radius": found.radius, "radius_search": trials,
    }  # fmt: skip
    log.info(
        "target: radius %.3g, accuracy on the clean set %.3f (clean head %.3f)",
        found.radius, found.facts["target_train_acc"], found.facts["clean_head_train_acc"],
    )  # fmt: skip
    return found


__all__ = [
    "GCObjective",
    "RadiusSearch",
    "TargetHead",
    "TargetHeadConfig",
    "choose_target",
    "gc_in_features",
    "gc_loss",
    "head_distance",
    "target_at",
    "target_facts",
    "train_accuracy",
]
