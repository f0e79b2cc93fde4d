"""SSL-Backdoor: targeted patch poisoning of unlabeled pre-training data (Saha et al., CVPR 2022).

A share (or count) of the **target category's** pre-training images gets an opaque patch at a
random position inside the training box (25–75 % of the side in the paper). Pre-training on
the poisoned set with any SSL method then ties the patch to the target category; at test time
the patch goes anywhere inside the test box (10–90 %). Labels are only used to pick the target
category's images, as the attacker knows which images they poison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field

from sslpoison.configbase import Config, CountOrShare
from sslpoison.data.imageset import ImageSet
from sslpoison.eval.metrics import poison_rates
from sslpoison.triggers import PatchTrigger, TriggerConfig


def _paper_trigger() -> TriggerConfig:
    return TriggerConfig(kind="noise", size=0.22, box=(0.25, 0.75))  # 50 px of 224


class SSLBackdoorConfig(Config):
    """The ``attack:`` section for SSL-Backdoor.

    ``poison``: the share (a float in (0, 1]) or count of target-class images poisoned (the
    paper: half). ``trigger.box`` bounds the patch during pre-training; ``test_box`` at test.
    """

    name: Literal["ssl_backdoor"] = "ssl_backdoor"
    target_class: int | str
    poison: CountOrShare = 0.5
    trigger: TriggerConfig = Field(default_factory=_paper_trigger)
    test_box: tuple[float, float] = (0.1, 0.9)


@dataclass
class PoisonedSet:
    """The poisoned pre-training set and what was changed.

    ``indices`` (P, sorted) are the poisoned positions in ``data``; ``corners`` (P×2) the
    top-left (row, col) of each patch; ``rates`` the share of the whole set and of the target
    class that was poisoned.
    """

    data: ImageSet
    indices: torch.Tensor
    corners: torch.Tensor
    target_class: int
    rates: dict[str, float]


def patch_subset(
    data: ImageSet, pool: torch.Tensor, n: int, trigger: TriggerConfig, g: torch.Generator
) -> tuple[ImageSet, torch.Tensor, torch.Tensor]:
    """Paste ``trigger`` onto ``n`` images drawn (with ``g``) from the indices ``pool``.

    Returns (``data`` with those images patched, their sorted indices P, the patches'
    top-left corners P×2 on the CPU). Every other image is left bit-identical.
    """
    try:
        patch = PatchTrigger(trigger, data.channels, data.image_size)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"attack.trigger: {e}") from None
    indices = pool[torch.randperm(pool.numel(), generator=g)[:n]].sort().values
    patched, corners = patch.apply(data.images[indices.to(data.device)], g)
    images = data.images.clone()
    images[indices.to(data.device)] = patched
    return data.with_images(images, name=data.name), indices, corners.cpu()


def poison(data: ImageSet, cfg: SSLBackdoorConfig, seed: int = 0) -> PoisonedSet:
    """Paste the trigger onto ``cfg.poison`` of the target class's images (seeded).

    Every other image, and every label, is left bit-identical.
    """
    try:
        target = data.class_index(cfg.target_class)
    except ValueError as e:
        raise ValueError(f"attack.target_class: {e}") from None
    pool = (data.labels == target).nonzero().squeeze(1).cpu()
    n = cfg.poison if isinstance(cfg.poison, int) else round(cfg.poison * pool.numel())
    if not 0 < n <= pool.numel():
        raise ValueError(
            f"attack.poison: {cfg.poison} gives {n} images, the target class has {pool.numel()}"
        )
    g = torch.Generator().manual_seed(seed)
    poisoned, indices, corners = patch_subset(data, pool, n, cfg.trigger, g)
    rates = poison_rates(indices.numel(), len(data), pool.numel())
    return PoisonedSet(poisoned, indices, corners, target, rates)


def evaluation_trigger(cfg: SSLBackdoorConfig, channels: int, image_size: int) -> PatchTrigger:
    """The same patch, placed anywhere inside ``cfg.test_box`` (for the evaluation)."""
    return PatchTrigger(cfg.trigger.model_copy(update={"box": cfg.test_box}), channels, image_size)
