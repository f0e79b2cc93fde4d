"""Which backbone an experiment uses (:class:`BackboneConfig`) and building it
(:func:`build_encoder`): shared by view pre-training, CLIP's image tower and the attacks."""

from __future__ import annotations

from typing import Literal

import torch.nn as nn
from pydantic import PositiveFloat, field_validator

from sslpoison.configbase import Config
from sslpoison.models import BACKBONES, build_backbone


class BackboneConfig(Config):
    """The encoder architecture (see :class:`sslpoison.models.resnet.ResNet`)."""

    arch: str = "resnet18"
    width: PositiveFloat = 1.0
    stem: Literal["cifar", "imagenet"] = "cifar"
    stem_stride: Literal[1, 2] = 1

    @field_validator("arch")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in BACKBONES:
            raise ValueError(f"unknown backbone {v!r}; known: {', '.join(sorted(BACKBONES))}")
        return v


def build_encoder(cfg: BackboneConfig, channels: int) -> nn.Module:
    """A fresh backbone (weights from the global RNG): ``channels``×H×W float in [0, 1] → D."""
    return build_backbone(
        cfg.arch, width=cfg.width, in_channels=channels, stem=cfg.stem, stem_stride=cfg.stem_stride
    )


__all__ = ["BackboneConfig", "build_encoder"]
