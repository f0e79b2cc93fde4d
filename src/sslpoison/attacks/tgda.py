"""TGDA, total gradient descent–ascent (Lu, Kamath, Yu, TMLR 2022), in input space through
the frozen encoder: a Stackelberg game where the poisons lead and the victim's head follows.

The clean set is split (seeded) into a part the follower trains on and a held-out part
(``validation``, the authors' 30 %) the leader measures. Each leader step:

1. the follower — the linear head, as the victim trains it — is re-fitted on the training
   part ∪ the current poisons (L-BFGS, warm-started, ``follower_iterations`` iterations);
2. the leader — the poisoned images — ascends the held-out cross-entropy of that head along
   its total gradient ∇x L − H_xθ·H_θθ⁻¹·∇θ L (the first term is zero: the held-out loss
   sees the poisons only through the head), H_θθ⁻¹·∇θ L by conjugate gradient on
   Hessian-vector products (``cg_iterations``; the authors use up to 16–64).

The authors' leader is a generator network of poisons; here the poisoned images themselves
(started from copies of clean training images, kept in [0, 1]) are the leader's parameters,
trained with Adam through the engine.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, PositiveFloat, PositiveInt

from sslpoison.attacks.gradient_canceling import PoisonLabels, image_box
from sslpoison.attacks.indiscriminate import Crafted, IndiscriminateAttack
from sslpoison.attacks.label_flip import pick_base
from sslpoison.attacks.linear_victim import (
    HeadLoss,
    LinearVictim,
    implicit_surrogate,
    newton_refit,
)
from sslpoison.attacks.optimise import optimise_poisons, quantise
from sslpoison.data.augment import to_float
from sslpoison.data.imageset import ImageSet
from sslpoison.utils import frozen

log = logging.getLogger(__name__)


class Follower:
    """The head that follows the poisons: re-fitted (warm-started) on the clean training
    part ∪ the current poisons before each leader step — by ``iterations`` of L-BFGS, or
    (``newton``) by one Newton step from where it was, after an L-BFGS fit the first time."""

    def __init__(
        self, victim: LinearVictim, x: torch.Tensor, labels: torch.Tensor, iterations: int,
        newton: bool = False,
    ) -> None:  # fmt: skip
        self.victim, self.x, self.labels, self.iterations = victim, x, labels, iterations
        self.newton, self.followed = newton, False
        self.head = victim.fit(x, labels)

    def follow(self, poisons: torch.Tensor, poison_labels: torch.Tensor) -> nn.Linear:
        """The head re-fitted with standardised P×D ``poisons`` added."""
        x = torch.cat([self.x, poisons.detach()])
        y = torch.cat([self.labels, poison_labels])
        if self.newton and self.followed:
            self.head = newton_refit(self.victim, self.head, x, y)
        else:
            self.head = self.victim.fit(x, y, init=self.head, max_iter=self.iterations)
        self.followed = True
        return self.head

    def surrogate(
        self, poisons: torch.Tensor, poison_labels: torch.Tensor, outer: HeadLoss,
        cg_iterations: int,
    ) -> torch.Tensor:  # fmt: skip
        """A scalar whose gradient in ``poisons`` is the total derivative of ``outer`` at
        the followed head (:func:`~sslpoison.attacks.linear_victim.implicit_surrogate`)."""
        head = self.follow(poisons, poison_labels)
        return implicit_surrogate(
            self.victim, head, self.x, self.labels, poisons, poison_labels, outer, cg_iterations
        )


class TGDAConfig(IndiscriminateAttack, PoisonLabels):
    """The ``attack:`` section for TGDA in input space: ``steps`` leader steps (Adam, peak
    size ``lr``, pixels in [0, 1], optional ``linf`` budget around each base image)."""

    name: Literal["tgda"] = "tgda"
    steps: PositiveInt = 100
    lr: PositiveFloat = 0.01
    validation: float = Field(0.3, gt=0.0, lt=1.0)
    follower_iterations: PositiveInt = 30
    cg_iterations: PositiveInt = 16
    linf: PositiveFloat | None = None

    title: ClassVar[str] = "TGDA"

    def craft(
        self, encoder: nn.Module, train: ImageSet, features: torch.Tensor,
        victim: LinearVictim, seed: int = 0, pretraining: ImageSet | None = None,
    ) -> Crafted:  # fmt: skip
        labels = train.labels.to(features.device)
        x = victim.standardise(features)
        g = torch.Generator().manual_seed(seed + 2)
        order = torch.randperm(len(train), generator=g).to(x.device)
        held = round(self.validation * len(train))
        val, fit_part = order[:held], order[held:]
        follower = Follower(victim, x[fit_part], labels[fit_part], self.follower_iterations)
        base = pick_base(len(train), self.poison_count(len(train)), seed)
        poison_labels = self.poison_labels(follower.head, x, labels, base)

        def held_out_gain(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            return -F.cross_entropy(x[val] @ weight.T + bias, labels[val])

        def objective(images: torch.Tensor) -> torch.Tensor:
            """−(held-out loss of the followed head), with the total gradient."""
            poisons = victim.standardise(encoder(images).double())
            surrogate = follower.surrogate(
                poisons, poison_labels, held_out_gain, self.cg_iterations
            )
            with torch.no_grad():
                value = held_out_gain(follower.head.weight, follower.head.bias)
            return value + surrogate - surrogate.detach()

        start = to_float(train.images[base.to(train.device)].to(features.device))
        log.info("tgda: %d poisoned images, %d leader steps", len(base), self.steps)
        with frozen(encoder):
            images, _ = optimise_poisons(
                start, *image_box(start, self.linf), objective, steps=self.steps, lr=self.lr,
                seed=seed, desc="tgda",
            )  # fmt: skip
            final = victim.standardise(encoder(images).double())
            head = follower.follow(final, poison_labels)
        with torch.no_grad():
            held_out = F.cross_entropy(head(x[val]), labels[val]).item()
        facts = {"held_out_loss_end": held_out}
        log.info("tgda: held-out loss of the followed head at the end %.4f", held_out)
        return Crafted(quantise(images).cpu(), poison_labels.cpu(), base, facts=facts)


__all__ = ["Follower", "TGDAConfig"]
