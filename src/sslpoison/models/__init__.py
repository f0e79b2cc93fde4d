"""Backbones, heads, and safe (no-pickle) encoder save/load.

:data:`BACKBONES` names every architecture an encoder card can name: the ResNets, the ViT
(:mod:`.vit`: generic ``vit`` and the standard sizes), CLIP's ModifiedResNet
(:mod:`.clip_resnet`) and ``hf``, a Hugging Face ``transformers`` vision model wrapped as an
encoder (:mod:`.hf`; needs the ``[hub]`` extra). Each entry is a ``functools.partial`` of
its class: its keywords are what the name fixes (a ResNet's depth, a ViT's patch size,
width, depth and heads); the card's ``args`` hold the rest.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

import torch.nn as nn

from sslpoison.models.clip_resnet import ModifiedResNet
from sslpoison.models.heads import mlp_head
from sslpoison.models.hf import HFEncoder
from sslpoison.models.resnet import ResNet
from sslpoison.models.vit import VisionTransformer


def _vit(patch_size: int, width: int, depth: int, heads: int) -> partial:
    return partial(VisionTransformer, patch_size=patch_size, width=width, depth=depth, heads=heads)


#: Every backbone by name; a saved encoder's card names one of these and its arguments.
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet10": partial(ResNet, depth=10),
    "resnet18": partial(ResNet, depth=18),
    "resnet34": partial(ResNet, depth=34),
    "resnet50": partial(ResNet, depth=50),
    "vit": partial(VisionTransformer),
    "vit_s_16": _vit(16, 384, 12, 6),
    "vit_b_16": _vit(16, 768, 12, 12),
    "vit_b_32": _vit(32, 768, 12, 12),
    "vit_l_14": _vit(14, 1024, 24, 16),
    "vit_l_16": _vit(16, 1024, 24, 16),
    "modified_resnet": partial(ModifiedResNet),
    "rn50": partial(ModifiedResNet, layers=(3, 4, 6, 3), base_width=64),
    "rn101": partial(ModifiedResNet, layers=(3, 4, 23, 3), base_width=64),
    "hf": partial(HFEncoder),
}


def backbone_family(arch: str) -> tuple[Callable[..., nn.Module], dict[str, Any]]:
    """(the class or builder behind ``arch``, the keyword arguments its name fixes)."""
    entry = BACKBONES[arch]
    if isinstance(entry, partial):
        return entry.func, dict(entry.keywords)
    return entry, {}


def backbone_parameters(arch: str) -> set[str]:
    """The argument names ``arch``'s builder takes (its signature's keywords)."""
    family, _ = backbone_family(arch)
    target = family.__init__ if inspect.isclass(family) else family
    params = inspect.signature(target).parameters
    return {n for n, p in params.items() if n != "self" and p.kind is not p.VAR_KEYWORD}


def build_backbone(arch: str, **kwargs) -> nn.Module:
    """Build a backbone by name; ``kwargs`` are stored in the encoder card on save."""
    if arch not in BACKBONES:
        raise ValueError(f"unknown backbone {arch!r}; known: {', '.join(sorted(BACKBONES))}")
    model = BACKBONES[arch](**kwargs)
    model.card = {"arch": arch, "args": dict(kwargs)}  # type: ignore[assignment]
    return model


from sslpoison.models.io import load_encoder, save_encoder  # noqa: E402

__all__ = [
    "BACKBONES",
    "HFEncoder",
    "ModifiedResNet",
    "ResNet",
    "VisionTransformer",
    "backbone_family",
    "backbone_parameters",
    "build_backbone",
    "load_encoder",
    "mlp_head",
    "save_encoder",
]
