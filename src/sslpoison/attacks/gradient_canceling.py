"""Gradient canceling (GC; Lu, Kamath, Yu, ICML 2023), in input space through the frozen
encoder: ⌈ε·N⌉ poisoned images, started from copies of clean training images and kept in
[0, 1], are optimised so that target head parameters θ* become what the victim converges to
on clean ∪ poisons. The authors cancel the victim's training-objective gradient at θ*
(‖∇θ L(clean ∪ poisons; θ*)‖² → 0, ``objective: gradient``); by default we minimise the
Newton distance ‖H⁻¹∇θ L‖² instead (``newton``, :mod:`sslpoison.attacks.newton`), which
also counts the directions the victim's weak L2 penalty barely curves.

θ* comes from GradPC (:class:`~sslpoison.attacks.target_head.TargetHeadConfig`), by default at
the largest radius that gradient canceling in feature space reaches (``radius: auto``). The
authors' code starts the poisons from the first ε·N training points with their true labels
and takes plain gradient steps with a cosine-annealed size; here Adam (cosine) through the
engine, from seeded copies.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

import torch
import torch.nn as nn
from pydantic import Field, PositiveFloat, PositiveInt

from sslpoison.attacks.indiscriminate import TARGET_METRICS, Crafted, IndiscriminateAttack
from sslpoison.attacks.label_flip import pick_base
from sslpoison.attacks.linear_victim import LinearVictim, confused_labels, raw_head
from sslpoison.attacks.optimise import optimise_poisons, quantise
from sslpoison.attacks.target_head import GCObjective, TargetHeadConfig, choose_target, gc_loss
from sslpoison.configbase import Config
from sslpoison.data.augment import to_float
from sslpoison.data.imageset import ImageSet
from sslpoison.eval.rows import Metric
from sslpoison.utils import frozen

log = logging.getLogger(__name__)


class PoisonLabels(Config):
    """Mixed into the attacks that start poisons from copies of training points: their
    ``labels`` — ``true`` (the copies' own, as in the authors' GC and TGDA code) or
    ``confused`` (the clean head's second choice for the point)."""

    labels: Literal["true", "confused"] = "true"

    def poison_labels(
        self, head: nn.Linear, x: torch.Tensor, labels: torch.Tensor, base: torch.Tensor
    ) -> torch.Tensor:
        """The labels of poisons started from points ``base`` (standardised features ``x``)."""
        true = labels[base.to(labels.device)]
        if self.labels == "true":
            return true
        return confused_labels(head, x[base.to(x.device)], true)


def image_box(base: torch.Tensor, linf: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds for images started at ``base`` (float in [0, 1]): [0, 1], within ``linf`` of
    ``base`` when given."""
    if linf is None:
        return torch.zeros_like(base), torch.ones_like(base)
    return (base - linf).clamp(min=0), (base + linf).clamp(max=1)


class GCConfig(IndiscriminateAttack, PoisonLabels):
    """The ``attack:`` section for gradient canceling in input space. ``steps`` Adam steps
    of peak size ``lr`` on the poisoned images (pixels in [0, 1]) minimising ``objective``;
    ``linf``: optional L∞ budget around each base image."""

    name: Literal["gc"] = "gc"
    target: TargetHeadConfig = Field(default_factory=lambda: TargetHeadConfig(radius="auto"))
    objective: GCObjective = "newton"
    steps: PositiveInt = 300
    lr: PositiveFloat = 0.01
    linf: PositiveFloat | None = None

    title: ClassVar[str] = "Gradient canceling"
    metrics: ClassVar[tuple[Metric, ...]] = (*IndiscriminateAttack.metrics, *TARGET_METRICS)

    def craft(
        self, encoder: nn.Module, train: ImageSet, features: torch.Tensor,
        victim: LinearVictim, seed: int = 0, pretraining: ImageSet | None = None,
    ) -> Crafted:  # fmt: skip
        labels = train.labels.to(features.device)
        x = victim.standardise(features)
        head = victim.fit(x, labels)
        base = pick_base(len(train), self.poison_count(len(train)), seed)
        poison_labels = self.poison_labels(head, x, labels, base)
        stage1 = choose_target(
            victim, head, x, labels, x[base.to(x.device)], poison_labels, self.target, seed
        )
        loss = gc_loss(self.objective, victim, stage1.target, x, labels)
        start = to_float(train.images[base.to(train.device)].to(features.device))

        def objective(images: torch.Tensor) -> torch.Tensor:
            return loss(victim.standardise(encoder(images).double()), poison_labels)

        log.info("gc: %d poisoned images, %d steps (%s objective)", len(base), self.steps,
                 self.objective)  # fmt: skip
        with frozen(encoder):
            images, values = optimise_poisons(
                start, *image_box(start, self.linf), objective, steps=self.steps, lr=self.lr,
                seed=seed, desc=f"gc ({self.objective})",
            )  # fmt: skip
        facts = stage1.facts | {"objective_start": values[0], "objective_end": values[-1]}
        log.info("gc: objective %.3g → %.3g", values[0], values[-1])
        return Crafted(
            quantise(images).cpu(), poison_labels.cpu(), base, facts=facts,
            target=raw_head(victim, stage1.target),
        )  # fmt: skip


__all__ = ["GCConfig", "PoisonLabels", "image_box"]
