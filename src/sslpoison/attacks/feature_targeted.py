"""The feature-targeted (FT) attack of Lu, Yang, Kamath, Yu (SaTML 2024), in three stages:

1. **target**: head parameters θ* by GradPC, at a given radius or at the largest that
   feature-space gradient canceling reaches (:mod:`sslpoison.attacks.target_head`);
2. **poisoned features**: ⌈ε·N⌉ feature vectors with labels, treating the encoder's features
   as the dataset, kept within the per-dimension range of the real (clean) features, so that
   the victim's head trained on clean ∪ poisoned features becomes θ*. ``solver``:

   * ``gc`` — the paper's gradient canceling in feature space, by default on the Newton
     distance ‖H⁻¹g‖² (:mod:`sslpoison.attacks.newton`; ``gc_objective: gradient`` is the
     authors' ‖g‖²);
   * ``match`` — ours: the head retrained on clean ∪ poisons is pulled toward θ*'s
     predictions on the clean set, along the total gradient of the KL divergence between
     the two (the TGDA machinery: the retrained head's implicit dependence on the poisons,
     by conjugate gradient).
3. **inversion** (:class:`InversionConfig`): images whose encoder features realise the
   poisoned ones — each started from the attacker's real image whose feature is nearest
   (``base: nearest``; the downstream train split, plus pre-training images where the
   attacker has them), moved by feature matching, then refined on the victim-level
   objective of stage 2 itself computed on ``encoder(images)``; optionally alternating
   with stage 2 re-solved from the features the images reach.

The accuracy drop is reported after stage 2 (as if those features were reachable: victim
``features``) and after stage 3 (the real images); ``inversion_kept`` is their ratio.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from sslpoison.attacks.gradient_canceling import PoisonLabels, image_box
from sslpoison.attacks.indiscriminate import (
    INVERSION_KEPT,
    TARGET_METRICS,
    Crafted,
    IndiscriminateAttack,
)
from sslpoison.attacks.label_flip import pick_base
from sslpoison.attacks.linear_victim import LinearVictim, raw_head
from sslpoison.attacks.optimise import optimise_poisons, quantise
from sslpoison.attacks.target_head import (
    GCObjective,
    PoisonObjective,
    TargetHead,
    TargetHeadConfig,
    choose_target,
    gc_loss,
)
from sslpoison.attacks.tgda import Follower
from sslpoison.configbase import Config
from sslpoison.data.augment import to_float
from sslpoison.data.imageset import ImageSet
from sslpoison.eval.features import extract_features
from sslpoison.eval.rows import Metric
from sslpoison.utils import frozen

log = logging.getLogger(__name__)


class InversionConfig(Config):
    """Stage 3. ``base``: where each poisoned image starts — ``nearest``: the attacker's
    real image whose standardised feature is nearest the poisoned feature (the downstream
    train split, plus ``pretraining`` seeded images of the pre-training set when the
    scenario gives the attacker those; 0: none), or ``start``: the image of the training
    point the poisoned feature started from in stage 2 (what the attack did before).
    Then ``steps`` Adam steps of peak size ``lr`` minimising the mean squared distance
    between the images' standardised features and the poisoned ones, and ``refine`` steps
    of peak size ``refine_lr`` on the victim-level objective of stage 2 itself, computed on
    the images' features. ``alternate`` rounds first re-solve stage 2 (``alternate_steps``
    steps) from the features the images reach, and invert again from the images. ``linf``:
    an optional L∞ budget around each base image (None: anywhere in [0, 1])."""

    base: Literal["nearest", "start"] = "nearest"
    pretraining: NonNegativeInt = 0
    steps: NonNegativeInt = 300
    lr: PositiveFloat = 0.05
    refine: NonNegativeInt = 50
    refine_lr: PositiveFloat = 0.01
    alternate: NonNegativeInt = 0
    alternate_steps: PositiveInt = 50
    linf: PositiveFloat | None = None


class FeatureTargetedConfig(IndiscriminateAttack, PoisonLabels):
    """The ``attack:`` section for the feature-targeted attack. Stage 2 takes ``steps`` Adam
    steps of peak size ``lr`` on the standardised poisoned features (``solver`` ``gc``, on
    ``gc_objective``, or ``match``; ``match`` re-fits the follower head each step —
    ``follower: newton``, one Newton step from where it was, or ``lbfgs``,
    ``follower_iterations`` L-BFGS iterations — and solves ``cg_iterations`` of conjugate
    gradient for the total gradient). Stage 3: ``inversion``."""

    name: Literal["feature_targeted"] = "feature_targeted"
    labels: Literal["true", "confused"] = "confused"
    target: TargetHeadConfig = Field(default_factory=lambda: TargetHeadConfig(radius=0.1))
    solver: Literal["gc", "match"] = "match"
    gc_objective: GCObjective = "newton"
    steps: PositiveInt = 100
    lr: PositiveFloat = 0.1
    follower: Literal["newton", "lbfgs"] = "newton"
    follower_iterations: PositiveInt = 30
    cg_iterations: PositiveInt = 16
    inversion: InversionConfig = Field(default_factory=InversionConfig)

    title: ClassVar[str] = "Feature-targeted poisoning"
    metrics: ClassVar[tuple[Metric, ...]] = (
        *IndiscriminateAttack.metrics, INVERSION_KEPT, *TARGET_METRICS,
    )  # fmt: skip

    def craft(
        self, encoder: nn.Module, train: ImageSet, features: torch.Tensor,
        victim: LinearVictim, seed: int = 0, pretraining: ImageSet | None = None,
    ) -> Crafted:  # fmt: skip
        labels = train.labels.to(features.device)
        x = victim.standardise(features)
        head = victim.fit(x, labels)
        base = pick_base(len(train), self.poison_count(len(train)), seed)
        poison_labels = self.poison_labels(head, x, labels, base)
        start = x[base.to(x.device)]
        log.info(
            "feature_targeted: %d poisons for %d training points; stage 1, the target",
            len(base), len(train),
        )  # fmt: skip
        stage1 = choose_target(victim, head, x, labels, start, poison_labels, self.target, seed)
        level = self.victim_objective(victim, stage1, x, labels)
        if self.solver == "gc" and stage1.poisons is not None:
            start = stage1.poisons  # the radius search's poisons reached this target
        poisons, values = self.poisoned_features(level, x, start, poison_labels, self.steps, seed)
        inversion = Inversion(self.inversion, encoder, victim, train, x, pretraining, seed)
        images, base_images, pool_index = inversion.from_bases(poisons, base)
        for round_ in range(self.inversion.alternate):
            reached = inversion.features(images)
            log.info("feature_targeted: alternation %d, stage 2 again from the images", round_ + 1)
            poisons, _ = self.poisoned_features(
                level, x, reached, poison_labels, self.inversion.alternate_steps, seed
            )
            images = inversion.match(images, base_images, poisons)
        images, refined = inversion.refine(images, base_images, level, poison_labels)
        facts = stage1.facts | {
            "objective_start": values[0],
            "objective_end": values[-1],
            "base_from_pretraining": int((pool_index >= len(train)).sum()),
        }
        if inversion.distances:
            facts |= {
                "inversion_distance_start": inversion.distances[0],
                "inversion_distance_end": inversion.distances[-1],
            }
        if refined:
            facts |= {"refine_objective_start": refined[0], "refine_objective_end": refined[-1]}
        return Crafted(
            images, poison_labels.cpu(), pool_index, features=victim.raw(poisons).cpu(),
            facts=facts, base_images=base_images, target=raw_head(victim, stage1.target),
        )  # fmt: skip

    def victim_objective(
        self, victim: LinearVictim, stage1: TargetHead, x: torch.Tensor, labels: torch.Tensor
    ) -> PoisonObjective:
        """The victim-level objective of standardised poisons (P×D) and their labels that
        stage 2 minimises and stage 3 refines: the Newton distance (or gradient norm) at θ*
        for ``gc``; for ``match``, the KL divergence from θ*'s predictions on the clean set
        to those of the head retrained on clean ∪ poisons (its value; its gradient the total
        one, :meth:`~sslpoison.attacks.tgda.Follower.surrogate`)."""
        if self.solver == "gc":
            return gc_loss(self.gc_objective, victim, stage1.target, x, labels)
        newton = self.follower == "newton"
        follower = Follower(victim, x, labels, self.follower_iterations, newton=newton)
        with torch.no_grad():
            wanted = torch.softmax(stage1.target(x), 1)
            entropy = -(wanted * wanted.clamp_min(1e-300).log()).sum(1).mean()

        def toward_target(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            return -(wanted * F.log_softmax(x @ weight.T + bias, 1)).sum(1).mean() - entropy

        def objective(poisons: torch.Tensor, poison_labels: torch.Tensor) -> torch.Tensor:
            surrogate = follower.surrogate(
                poisons, poison_labels, toward_target, self.cg_iterations
            )
            with torch.no_grad():
                value = toward_target(follower.head.weight, follower.head.bias)
            return value + surrogate - surrogate.detach()

        return objective

    def poisoned_features(
        self, level: PoisonObjective, x: torch.Tensor, start: torch.Tensor,
        poison_labels: torch.Tensor, steps: int, seed: int,
    ) -> tuple[torch.Tensor, list[float]]:  # fmt: skip
        """Stage 2: standardised poisons (P×D) from ``start``, within the range of the real
        features, minimising ``level``; and the objective at every step."""
        log.info("feature_targeted: stage 2, poisoned features (%s, %d steps)", self.solver, steps)
        poisons, values = optimise_poisons(
            start, x.min(0).values, x.max(0).values, lambda p: level(p, poison_labels),
            steps=steps, lr=self.lr, seed=seed, desc=f"feature_targeted: features ({self.solver})",
        )  # fmt: skip
        log.info("feature_targeted: stage 2 objective %.4g → %.4g", values[0], values[-1])
        return poisons, values


class Inversion:
    """Stage 3 for one training set: the attacker's pool of real images (the downstream
    ``train`` images, standardised features ``x``, and ``cfg.pretraining`` seeded images of
    the ``pretraining`` set) and the ways from poisoned features to images."""

    def __init__(
        self, cfg: InversionConfig, encoder: nn.Module, victim: LinearVictim, train: ImageSet,
        x: torch.Tensor, pretraining: ImageSet | None, seed: int,
    ) -> None:  # fmt: skip
        self.cfg, self.encoder, self.victim, self.seed = cfg, encoder, victim, seed
        self.pool_images, self.pool_x = train.images, x
        if cfg.base == "nearest" and cfg.pretraining and pretraining is not None:
            extra = pretraining.take(cfg.pretraining, seed=seed, stratified=False)
            device = x.device
            f = extract_features(encoder, extra.images, device=device).double()
            self.pool_images = torch.cat([train.images, extra.images.to(train.device)])
            self.pool_x = torch.cat([x, victim.standardise(f)])
        self.distances: list[float] = []

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Standardised features (P×D) of float images in [0, 1]."""
        with torch.no_grad(), frozen(self.encoder):
            return self.victim.standardise(self.encoder(images).double())

    def nearest(self, poisons: torch.Tensor) -> torch.Tensor:
        """For each standardised poisoned feature (P×D), the pool index of the nearest real
        feature."""
        return torch.cat([torch.cdist(p, self.pool_x).argmin(1) for p in poisons.split(256)])

    def from_bases(
        self, poisons: torch.Tensor, start: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(float images P×C×H×W, their uint8 base images, the bases' pool indices) for the
        standardised poisoned features (P×D) that stage 2 started from training points
        ``start`` (P): the bases chosen by ``cfg.base``, then feature matching."""
        index = self.nearest(poisons).cpu() if self.cfg.base == "nearest" else start.cpu()
        base_images = self.pool_images[index.to(self.pool_images.device)]
        log.info("feature_targeted: stage 3, inversion from the %s real images", self.cfg.base)
        images = self.match(to_float(base_images.to(poisons.device)), base_images, poisons)
        return images, base_images.cpu(), index

    def match(
        self, images: torch.Tensor, base_images: torch.Tensor, poisons: torch.Tensor
    ) -> torch.Tensor:
        """``cfg.steps`` of feature matching from float ``images`` toward standardised
        ``poisons``, within ``cfg.linf`` of ``base_images`` (uint8)."""
        if not self.cfg.steps:
            return images

        def distance(batch: torch.Tensor) -> torch.Tensor:
            return (self.victim.standardise(self.encoder(batch).double()) - poisons).pow(2).mean()

        box = image_box(to_float(base_images.to(images.device)), self.cfg.linf)
        with frozen(self.encoder):
            images, values = optimise_poisons(
                images, *box, distance, steps=self.cfg.steps, lr=self.cfg.lr, seed=self.seed,
                desc="feature_targeted: inversion",
            )  # fmt: skip
        self.distances += [values[0], values[-1]] if not self.distances else [values[-1]]
        log.info("feature_targeted: inversion distance %.4g → %.4g", values[0], values[-1])
        return images

    def refine(
        self, images: torch.Tensor, base_images: torch.Tensor, level: PoisonObjective,
        poison_labels: torch.Tensor,
    ) -> tuple[torch.Tensor, list[float]]:  # fmt: skip
        """(uint8 images, the objective at every step): ``cfg.refine`` steps on the
        victim-level objective ``level`` of the images' features."""
        values: list[float] = []
        if self.cfg.refine:
            log.info("feature_targeted: stage 3, refinement on the victim's objective")

            def objective(batch: torch.Tensor) -> torch.Tensor:
                return level(self.victim.standardise(self.encoder(batch).double()), poison_labels)

            box = image_box(to_float(base_images.to(images.device)), self.cfg.linf)
            with frozen(self.encoder):
                images, values = optimise_poisons(
                    images, *box, objective, steps=self.cfg.refine, lr=self.cfg.refine_lr,
                    seed=self.seed, desc="feature_targeted: refinement",
                )  # fmt: skip
            log.info("feature_targeted: refinement objective %.4g → %.4g", values[0], values[-1])
        return quantise(images).cpu(), values


__all__ = ["FeatureTargetedConfig", "Inversion", "InversionConfig"]
