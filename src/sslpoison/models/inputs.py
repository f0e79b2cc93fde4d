"""What an encoder takes as input: its image side, channels and normalisation (mean, std per
channel, applied inside the encoder to [0, 1] pixels), and the usual presets of them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

#: OpenAI CLIP's normalisation (also open_clip's and Hugging Face's CLIP processors').
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
#: ImageNet's (torchvision, MoCo, solo-learn's ImageNet models, timm, DINO).
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
#: CIFAR-10's, as the BadEncoder repository normalises (and solo-learn's CIFAR models).
CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR10_STD = [0.2023, 0.1994, 0.2010]


def per_channel(values: list[float], channels: int) -> list[float]:
    """``values`` (one per RGB channel, or one for all) for ``channels`` channels: as they are
    when they fit, their mean for 1 (a grey image's single plane), one value repeated."""
    if len(values) == channels:
        return list(values)
    if channels == 1:
        return [sum(values) / len(values)]
    if len(values) == 1:
        return list(values) * channels
    raise ValueError(f"{len(values)} normalisation values for {channels} channels")


def register_normalisation(
    module: torch.nn.Module,
    channels: int,
    mean: list[float] | None,
    std: list[float] | None,
    default_mean: list[float],
    default_std: list[float],
) -> None:
    """Give ``module`` its input normalisation as persistent buffers ``mean`` and ``std``
    (1×C×1×1): ``mean``/``std``, else the defaults (one RGB triple, or per channel), applied to
    [0, 1] pixels inside the encoder. ValueError when a list does not have ``channels``
    values."""
    mean = list(mean) if mean is not None else per_channel(default_mean, channels)
    std = list(std) if std is not None else per_channel(default_std, channels)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std need {channels} values, got {len(mean)}/{len(std)}")
    module.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=True)
    module.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=True)


@dataclass(frozen=True)
class InputSpec:
    """An encoder's input: ``size``×``size`` pixels of ``channels`` channels in [0, 1],
    normalised by ``mean`` and ``std`` inside the encoder."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def describe(self) -> str:
        def fmt(values: tuple[float, ...]) -> str:
            return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"

        return (
            f"{self.size}×{self.size} px, {self.channels} channel(s), mean {fmt(self.mean)}, "
            f"std {fmt(self.std)}"
        )


__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "InputSpec",
    "per_channel",
    "register_normalisation",
]
