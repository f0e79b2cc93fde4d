"""Gradient canceling (GC; Lu, Kamath, Yu, ICML 2023), in input space through the frozen
encoder: ⌈ε·N⌉ poisoned images, started from copies of clean training images and kept in
[0, 1], are optimised so that the victim's training-objective gradient at target head
parameters θ* vanishes over clean ∪ poisons — ‖∇θ L(clean ∪ poisons; θ*)‖² → 0, gradients
with respect to the head only — making θ* what the victim converges to.

θ* comes from GradPC (:class:`TargetConfig`). The authors' code starts the poisons from the
first ε·N training points with their true labels and takes plain gradient steps with a
cosine-annealed size; here Adam (cosine) through the engine, from seeded copies.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field, PositiveFloat, PositiveInt

from sslpoison.attacks.indiscriminate import Crafted, IndiscriminateAttack
from sslpoison.attacks.label_flip import pick_base
from sslpoison.attacks.linear_victim import (
    LinearVictim,
    clean_sums,
    confused_labels,
    gc_objective,
    gradpc,
    refit_bias,
)
from sslpoison.attacks.optimise import optimise_poisons, quantise
from sslpoison.configbase import Config
from sslpoison.data.augment import to_float
from sslpoison.data.imageset import ImageSet
from sslpoison.utils import frozen


class TargetConfig(Config):
    """Target head parameters θ* by GradPC: ``radius`` (the L2 ball's, as a share of ‖θ‖ of
    the clean head) and GradPC's ``batch_size``. ``reachable`` (our addition, on by default):
    then re-fit θ*'s bias on the clean set, so that the poisons need not shift the predicted
    class counts, which ε·N poisons cannot do by more than ε·N (see
    :func:`~sslpoison.attacks.linear_victim.refit_bias`)."""

    radius: PositiveFloat = 0.05
    batch_size: PositiveInt = 64
    reachable: bool = True


def gradpc_target(
    victim: LinearVictim, x: torch.Tensor, labels: torch.Tensor, cfg: TargetConfig, seed: int
) -> tuple[nn.Linear, nn.Linear, dict[str, float]]:
    """(the clean head, the target head θ*, facts: their accuracies on the clean set) for
    standardised ``x``."""
    head = victim.fit(x, labels)
    target = gradpc(head, x, labels, cfg.radius, cfg.batch_size, seed)
    if cfg.reachable:
        target = refit_bias(target, x, labels)
    with torch.no_grad():
        facts = {
            "clean_head_train_acc": (head(x).argmax(1) == labels).double().mean().item(),
            "target_train_acc": (target(x).argmax(1) == labels).double().mean().item(),
        }
    return head, target, facts


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
    of peak size ``lr`` on the poisoned images (pixels in [0, 1]); ``linf``: optional L∞
    budget around each base image."""

    name: Literal["gc"] = "gc"
    target: TargetConfig = Field(default_factory=TargetConfig)
    steps: PositiveInt = 300
    lr: PositiveFloat = 0.01
    linf: PositiveFloat | None = None

    def craft(
        self, encoder: nn.Module, train: ImageSet, features: torch.Tensor,
        victim: LinearVictim, seed: int = 0,
    ) -> Crafted:  # fmt: skip
        labels = train.labels.to(features.device)
        x = victim.standardise(features)
        head, target, facts = gradpc_target(victim, x, labels, self.target, seed)
        sums = clean_sums(victim, target, features, labels)
        base = pick_base(len(train), self.poison_count(len(train)), seed)
        poison_labels = self.poison_labels(head, x, labels, base)
        start = to_float(train.images[base.to(train.device)].to(features.device))

        def objective(images: torch.Tensor) -> torch.Tensor:
            return gc_objective(victim, target, sums, encoder(images).double(), poison_labels)

        with frozen(encoder):
            images, values = optimise_poisons(
                start, *image_box(start, self.linf), objective, steps=self.steps, lr=self.lr,
                seed=seed, desc="gc",
            )  # fmt: skip
        facts |= {"objective_start": values[0], "objective_end": values[-1]}
        return Crafted(quantise(images).cpu(), poison_labels.cpu(), base, facts=facts)


__all__ = ["GCConfig", "PoisonLabels", "TargetConfig", "gradpc_target", "image_box"]
