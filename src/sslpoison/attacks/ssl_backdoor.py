"""SSL-Backdoor: targeted patch poisoning of unlabeled pre-training data (Saha et al., CVPR 2022).

A share (or count) of the **target category's** pre-training images gets an opaque patch at a
random position inside the training box (25–75 % of the side in the paper). Pre-training on
the poisoned set with any SSL method then ties the patch to the target category; at test time
the patch goes anywhere inside the test box (10–90 %). Labels are only used to pick the target
category's images, as the attacker knows which images they poison.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from sslpoison.attacks.base import PretrainingDataAttack
from sslpoison.attacks.patching import patch_subset, target_index
from sslpoison.configbase import CountOrShare
from sslpoison.data.imageset import ImageSet
from sslpoison.eval.backdoor import ACC, FP
from sslpoison.eval.downstream import Downstream
from sslpoison.eval.metrics import poison_rates
from sslpoison.eval.rows import Headline
from sslpoison.poisoning import BackdoorTarget, PoisonedSet
from sslpoison.triggers import PatchTrigger, TriggerConfig


def _paper_trigger() -> TriggerConfig:
    return TriggerConfig(kind="noise", size=0.22, box=(0.25, 0.75))  # 50 px of 224


class SSLBackdoorConfig(PretrainingDataAttack):
    """The ``attack:`` section for SSL-Backdoor.

    ``poison``: the share (a float in (0, 1]) or count of target-class images poisoned (the
    paper: half). ``trigger.box`` bounds the patch during pre-training; ``test_box`` at test.
    Measured on the pre-training dataset, with FP (Saha et al. report it).
    """

    name: Literal["ssl_backdoor"] = "ssl_backdoor"
    target_class: int | str
    poison: CountOrShare = 0.5
    trigger: TriggerConfig = Field(default_factory=_paper_trigger)
    test_box: tuple[float, float] = (0.1, 0.9)

    reports_fp: ClassVar[bool] = True
    title: ClassVar[str] = "SSL-Backdoor"
    headline: ClassVar[Headline | None] = Headline(ACC, FP)

    def poison_pretraining(
        self, data: ImageSet, downstream: Downstream, seed: int = 0
    ) -> PoisonedSet:
        return poison(data, self, seed=seed)

    def backdoor_targets(
        self, data: ImageSet, downstream: Downstream, seed: int = 0
    ) -> list[BackdoorTarget]:
        target = target_index(data, self.target_class)
        trigger = evaluation_trigger(self, data.channels, data.image_size)
        return [BackdoorTarget(data.name, target, data.classes[target], trigger)]


def poison(data: ImageSet, cfg: SSLBackdoorConfig, seed: int = 0) -> PoisonedSet:
    """Paste the trigger onto ``cfg.poison`` of the target class's images (seeded).

    Every other image, and every label, is left bit-identical.
    """
    target = target_index(data, cfg.target_class)
    pool = (data.labels == target).nonzero().squeeze(1).cpu()
    n = cfg.poison if isinstance(cfg.poison, int) else round(cfg.poison * pool.numel())
    if not 0 < n <= pool.numel():
        raise ValueError(
            f"attack.poison: {cfg.poison} gives {n} images, the target class has {pool.numel()}"
        )
    g = torch.Generator().manual_seed(seed)
    poisoned, indices, corners = patch_subset(data, pool, n, cfg.trigger, g)
    rates = poison_rates(indices.numel(), len(data), pool.numel())
    return PoisonedSet(poisoned, indices, rates, list(data.classes), corners, target)


def evaluation_trigger(cfg: SSLBackdoorConfig, channels: int, image_size: int) -> PatchTrigger:
    """The same patch, placed anywhere inside ``cfg.test_box`` (for the evaluation)."""
    return PatchTrigger(cfg.trigger.model_copy(update={"box": cfg.test_box}), channels, image_size)
