"""Backdoor targets of an encoder attack: which class of which downstream dataset, its trigger,
and the reference images x_ref the triggered inputs are pulled towards (BadEncoder, Jia, Liu,
Gong, S&P 2022; shared by any encoder attack that aims at a class through references).

* :class:`TargetConfig` — one target of an ``attack.targets`` list;
* :func:`resolve_targets` — each target's class, trigger and the pool its references come
  from (a :class:`Target`);
* :func:`choose_references` — the references, picked from the pool with the clean encoder:
  the core of the class (:func:`core_order`) or a seeded draw.

Not to be confused with :mod:`sslpoison.attacks.target_head`: the target *head* parameters θ*
(GradPC) of the indiscriminate downstream-data attacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, PositiveInt

from sslpoison.configbase import Config
from sslpoison.eval.downstream import Downstream
from sslpoison.eval.features import extract_features
from sslpoison.poisoning import BackdoorTarget
from sslpoison.triggers import PatchTrigger, TriggerConfig


class TargetConfig(Config):
    """One backdoor target: a class of a downstream dataset, its references and its trigger.

    ``target_class``: the class index, or its name in the dataset. ``references``: how many
    images of that class, from the dataset's train split, serve as x_ref (the paper: 1; the
    triggered inputs are pulled towards all of them, so several make the point they collapse
    onto the class's rather than one image's).
    ``reference_choice``: which ones — ``typical`` (default): the core of the class under the
    clean encoder (:func:`core_order`), so that no atypical or borderline image decides where
    the backdoor points; ``random``: a seeded draw, as the paper's code does.
    """

    dataset: str
    target_class: int | str
    references: PositiveInt = 3
    reference_choice: Literal["typical", "random"] = "typical"
    trigger: TriggerConfig = Field(default_factory=TriggerConfig)


@dataclass
class Target(BackdoorTarget):
    """A resolved target and the images its ``count`` references are chosen from (by
    ``choice``): ``pool`` (K×C×H×W uint8), the target class's images of the dataset's train
    split, at positions ``pool_indices`` (K) of that split."""

    pool: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.uint8))
    pool_indices: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    choice: str = "typical"
    count: int = 1


#: Neighbours of each candidate reference that :func:`core_order` counts.
CORE_NEIGHBOURS = 20


def typical_order(features: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of K feature vectors (K×D), most typical first: by cosine to the mean of the
    L2-normalised (centred) vectors, the class's mean direction; ties keep index order."""
    z = features.float() - (center if center is not None else 0.0)
    z = F.normalize(z, dim=-1)
    score = z @ F.normalize(z.mean(0), dim=0)
    return torch.argsort(score, descending=True, stable=True)


def core_order(
    pool: torch.Tensor,
    shadow: torch.Tensor | None,
    k: int = CORE_NEIGHBOURS,
    seed: int = 0,
) -> torch.Tensor:
    """Indices of the target class's K pool feature vectors (K×D), its core first.

    The core: among each vector's ``k`` nearest neighbours (cosine, features centred by the
    mean shadow feature) in the pool and the shadow features (S×D; equal numbers of each,
    a seeded draw where one is larger), the share that are pool vectors — a k-NN estimate of
    how much the target class dominates the clean encoder's feature space around it. Ties
    (e.g. a share of 1) go to the most typical (:func:`typical_order`). The class mean's
    nearest image can lie where a neighbouring class is as dense (Fashion-MNIST "Shirt":
    the probe calls it "Pullover"); the core cannot. Without ``shadow``: typicality only.
    Exact duplicates (an image both in the pool and the shadow set) are not neighbours.
    """
    center = shadow.float().mean(0) if shadow is not None else None
    typical = typical_order(pool, center)
    if shadow is None:
        return typical
    g = torch.Generator().manual_seed(seed)
    n = min(len(pool), len(shadow))
    pick = torch.randperm(len(pool), generator=g)[:n].to(pool.device)
    mine = F.normalize(pool.float() - center, dim=-1)
    others = F.normalize(shadow.float() - center, dim=-1)
    others = others[torch.randperm(len(shadow), generator=g)[:n].to(shadow.device)]
    reference = torch.cat([mine[pick], others])  # 2n×D: n of the class, n of the shadow set
    k = min(k, 2 * n - 1)
    counts = torch.cat([_pool_neighbours(chunk, reference, n, k) for chunk in mine.split(1024)])
    rank = torch.empty_like(typical)
    rank[typical] = torch.arange(len(typical), device=typical.device)
    # Most pool neighbours first, then the most typical (rank < K + 1: a strict tie-break).
    return torch.argsort(counts * (len(pool) + 1) - rank, descending=True, stable=True)


def _pool_neighbours(z: torch.Tensor, reference: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """For each row of ``z`` (B×D, unit), how many of its ``k`` nearest rows of
    ``reference`` (M×D, unit; the first ``n`` are the pool's) are the pool's; the row itself
    and exact duplicates are left out."""
    sims = z @ reference.T
    sims.masked_fill_(sims > 1 - 1e-6, -2.0)
    return (sims.topk(k, dim=1).indices < n).sum(1)


def choose_references(
    target: Target, encoder: nn.Module, shadow: torch.Tensor | None, seed: int = 0
) -> Target:
    """``target`` with its ``count`` references taken from its pool: the core of the class
    under ``encoder`` (:func:`core_order`, against the encoder's ``shadow`` features, S×D),
    or a seeded random draw (``choice: random``)."""
    if target.choice == "random":
        order = torch.randperm(len(target.pool), generator=torch.Generator().manual_seed(seed))
    else:
        features = extract_features(encoder, target.pool)
        order = core_order(features, None if shadow is None else shadow.to(features), seed=seed)
    picked = order[: target.count].cpu()
    return replace(
        target,
        references=target.pool[picked].clone(),
        reference_indices=target.pool_indices[picked].tolist(),
    )


def resolve_targets(targets: list[TargetConfig], downstream: Downstream) -> list[Target]:
    """Each target's class, its trigger for the encoder's input, and the pool its references
    are chosen from (the class's images of the dataset's train split, in ``downstream``,
    fitted to the encoder's input); :func:`choose_references` then picks them.

    Raises:
        ValueError: naming ``attack.targets.<i>...`` for a class not in the dataset, too few
            images of it, or a trigger that does not fit the image.
    """
    resolved = []
    size, channels = downstream.size, downstream.channels
    for i, t in enumerate(targets):
        where = f"attack.targets.{i}"
        data = downstream.split(t.dataset, "train")
        try:
            cls = data.class_index(t.target_class)
        except ValueError as e:
            raise ValueError(f"{where}.target_class: {e}") from None
        pool = (data.labels == cls).nonzero().squeeze(1)
        if pool.numel() < t.references:
            raise ValueError(
                f"{where}.references: {t.references} wanted, {t.dataset} has {pool.numel()} "
                f"images of class {cls}"
            )
        try:
            trigger = PatchTrigger(t.trigger, channels, size)
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"{where}.trigger: {e}") from None
        target = Target(t.dataset, cls, data.classes[cls], trigger)
        target.pool, target.pool_indices = data.images[pool], pool
        target.choice, target.count = t.reference_choice, t.references
        resolved.append(target)
    return resolved


__all__ = [
    "CORE_NEIGHBOURS",
    "Target",
    "TargetConfig",
    "choose_references",
    "core_order",
    "resolve_targets",
    "typical_order",
]
