"""Patch poisoning of pre-training images, shared by the attacks on the pre-training data
(SSL-Backdoor, :mod:`.ssl_backdoor`; the CLIP backdoor, :mod:`.clip_poison`).

* :func:`target_index` — ``attack.target_class`` (an index or a class name) as a class index;
* :func:`patch_subset` — paste a trigger patch onto a seeded draw of images of a pool.

Not to be confused with :mod:`sslpoison.attacks.targets` (an encoder attack's backdoor
targets and their reference images) nor :mod:`sslpoison.attacks.target_head` (the GradPC
target head of the indiscriminate attacks).
"""

from __future__ import annotations

import torch

from sslpoison.data.imageset import ImageSet
from sslpoison.triggers import PatchTrigger, TriggerConfig


def target_index(data: ImageSet, target_class: int | str) -> int:
    """``attack.target_class`` as a class index of ``data`` (ValueError naming the key)."""
    try:
        return data.class_index(target_class)
    except ValueError as e:
        raise ValueError(f"attack.target_class: {e}") from None


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


__all__ = ["patch_subset", "target_index"]
