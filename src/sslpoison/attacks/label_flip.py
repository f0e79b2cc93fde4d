"""Label flipping, the baseline of indiscriminate downstream poisoning: ⌈ε·N⌉ copies of
seeded training points, each carrying another label — a random one, or the class the clean
linear head confuses the point with most (its second choice)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn as nn

from sslpoison.attacks.indiscriminate import Crafted, IndiscriminateAttack
from sslpoison.attacks.linear_victim import LinearVictim, confused_labels
from sslpoison.data.imageset import ImageSet


def pick_base(n: int, count: int, seed: int) -> torch.Tensor:
    """``count`` distinct seeded indices of ``n`` points (with repeats once all are used)."""
    g = torch.Generator().manual_seed(seed)
    rounds = -(-count // n)
    return torch.cat([torch.randperm(n, generator=g) for _ in range(rounds)])[:count]


class LabelFlipConfig(IndiscriminateAttack):
    """The ``attack:`` section for label flipping. ``flip``: ``confused`` (the clean head's
    second choice for the point) or ``random`` (any other class, seeded)."""

    name: Literal["label_flip"] = "label_flip"
    flip: Literal["confused", "random"] = "confused"

    title: ClassVar[str] = "Label flipping"

    def craft(
        self, encoder: nn.Module, train: ImageSet, features: torch.Tensor,
        victim: LinearVictim, seed: int = 0, pretraining: ImageSet | None = None,
    ) -> Crafted:  # fmt: skip
        base = pick_base(len(train), self.poison_count(len(train)), seed)
        true = train.labels[base.to(train.device)].cpu()
        if self.flip == "confused":
            x = victim.standardise(features)
            head = victim.fit(x, train.labels.to(x.device))
            labels = confused_labels(head, x[base.to(x.device)], true.to(x.device)).cpu()
        else:
            g = torch.Generator().manual_seed(seed + 1)
            shift = torch.randint(1, train.num_classes, (base.numel(),), generator=g)
            labels = (true + shift) % train.num_classes
        images = train.images[base.to(train.device)].cpu()
        return Crafted(images, labels, base, facts={"flip": self.flip})


__all__ = ["LabelFlipConfig", "pick_base"]
