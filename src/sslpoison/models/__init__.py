"""Backbones, heads, and safe (no-pickle) encoder save/load."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from sslpoison.models.heads import mlp_head
from sslpoison.models.resnet import ResNet


def _resnet(depth: int) -> Callable[..., ResNet]:
    def build(**kwargs) -> ResNet:
        return ResNet(depth=depth, **kwargs)

    build.__doc__ = f"ResNet-{depth}."
    return build


#: Every backbone by name; a saved encoder's card names one of these and its arguments.
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet10": _resnet(10),
    "resnet18": _resnet(18),
    "resnet34": _resnet(34),
    "resnet50": _resnet(50),
}


def build_backbone(arch: str, **kwargs) -> nn.Module:
    """Build a backbone by name; ``kwargs`` are stored in the encoder card on save."""
    if arch not in BACKBONES:
        raise ValueError(f"unknown backbone {arch!r}; known: {', '.join(sorted(BACKBONES))}")
    model = BACKBONES[arch](**kwargs)
    model.card = {"arch": arch, "args": dict(kwargs)}  # type: ignore[assignment]
    return model


from sslpoison.models.io import load_encoder, save_encoder  # noqa: E402

__all__ = ["BACKBONES", "ResNet", "build_backbone", "load_encoder", "mlp_head", "save_encoder"]
