"""Self-supervised pre-training on an ImageSet, through the one engine: a backbone with a
view method (:func:`pretrain`), or a CLIP model on image–caption pairs (:func:`pretrain_clip`).

:class:`~sslpoison.models.backbone.BackboneConfig` and
:func:`~sslpoison.models.backbone.build_encoder` are re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from pydantic import Field, field_validator

from sslpoison.configbase import Config, check_kwargs
from sslpoison.data.augment import RECIPES, ViewAugment
from sslpoison.data.imageset import ImageSet
from sslpoison.data.shards import PairStream, StreamBatches
from sslpoison.models.backbone import BackboneConfig, build_encoder
from sslpoison.models.text import TextConfig, Tokenizer
from sslpoison.ssl import IMAGE_TEXT_METHODS, METHODS, SSLMethod
from sslpoison.ssl.clip import CLIP, CLIPConfig, CLIPTask, clip_augment
from sslpoison.train.engine import FitResult, TensorBatches, TrainConfig, fit
from sslpoison.utils import seeded


class AugmentConfig(Config):
    """View augmentation; ``recipe=None`` takes the method's own (SimCLR, MoCo v2, BYOL)."""

    recipe: str | None = None
    crop_scale: tuple[float, float] | None = None
    jitter: float | None = Field(None, ge=0.0)
    blur: bool | None = None

    @field_validator("recipe")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is not None and v not in RECIPES:
            raise ValueError(f"unknown recipe {v!r}; known: {', '.join(RECIPES)}")
        return v

    def build(self, default_recipe: str, size: int, channels: int) -> ViewAugment:
        """The views (``recipe``, or ``default_recipe`` when unset) at ``size`` px."""
        return ViewAugment(
            self.recipe or default_recipe,
            size,
            channels,
            crop_scale=self.crop_scale,
            jitter=self.jitter,
            blur=self.blur,
        )


class PretrainConfig(Config):
    """One pre-training stage: method (+ its arguments), backbone, views and training.

    ``method: clip`` pre-trains on image–caption pairs (:mod:`sslpoison.ssl.clip`): its
    ``method_args`` are those of :class:`~sslpoison.ssl.clip.CLIPConfig` (``embed_dim``,
    ``init_temperature``, ``max_logit_scale``), ``text`` is its text tower, and ``augment``
    takes only ``crop_scale`` (default 0.9–1: captions must stay true of the crop).
    """

    method: str = "simclr"
    method_args: dict[str, Any] = Field(default_factory=dict)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("method")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in METHODS and v not in IMAGE_TEXT_METHODS:
            known = sorted([*METHODS, *IMAGE_TEXT_METHODS])
            raise ValueError(f"unknown SSL method {v!r}; known: {', '.join(known)}")
        return v

    @property
    def image_text(self) -> bool:
        """Whether the method learns from image–caption pairs (CLIP) rather than views."""
        return self.method in IMAGE_TEXT_METHODS

    def checked_method_args(self, where: str = "pretrain.method_args") -> dict[str, Any]:
        if self.image_text:
            return check_kwargs(CLIPConfig, self.method_args, where, skip=("backbone", "text"))
        return check_kwargs(METHODS[self.method], self.method_args, where)


class PretrainTask(nn.Module):
    """Engine task: uint8 batch → views (on device) → the method's loss."""

    def __init__(self, method: SSLMethod, augment: ViewAugment) -> None:
        super().__init__()
        self.method = method
        self.augment = augment
        self.momentum = method.momentum

    def forward(self, images: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
        return self.method(self.augment(images))

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return self.method.momentum_pairs()


def pretrain(
    data: ImageSet,
    cfg: PretrainConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    checkpoint_dir: str | Path | None = None,
) -> tuple[nn.Module, FitResult]:
    """Pre-train a fresh backbone on ``data`` (labels unused) with ``cfg.method``.

    Returns the trained backbone (on ``device``) and the engine's result. Resumes from
    ``checkpoint_dir`` when a checkpoint is there.
    """
    with seeded(seed):  # the backbone, then the method's heads
        backbone = build_encoder(cfg.backbone, data.channels, data.image_size)
        return train_backbone(
            backbone, data, cfg, seed=seed, device=device, checkpoint_dir=checkpoint_dir
        )


def train_backbone(
    backbone: nn.Module,
    data: ImageSet,
    cfg: PretrainConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    checkpoint_dir: str | Path | None = None,
    desc: str | None = None,
) -> tuple[nn.Module, FitResult]:
    """Train ``backbone`` (in place, from its current weights) on ``data`` with ``cfg.method``,
    ``cfg.augment`` and ``cfg.train``; ``cfg.backbone`` is not used. The method's heads are
    fresh (drawn from the global RNG as the caller left it; it is put back after) and are
    dropped afterwards.

    :func:`pretrain` starts it from a fresh backbone; the fine-tuning defenses start it from
    a suspect encoder. Returns (``backbone`` on ``device``, the engine's result).
    """
    device = torch.device(device)
    with seeded():
        method = METHODS[cfg.method](backbone, **cfg.checked_method_args())
        views = cfg.augment.build(method.augmentation, data.image_size, data.channels)
    task = PretrainTask(method, views).to(device)
    data = data.to(device)
    batches = TensorBatches(
        data.images, batch_size=cfg.train.batch_size, drop_last=cfg.train.drop_last, seed=seed
    )
    result = fit(
        task,
        batches,
        cfg.train,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        desc=desc or f"pretrain {cfg.method}",
    )
    return backbone, result


def build_clip(
    data: ImageSet | PairStream, cfg: PretrainConfig, seed: int = 0
) -> tuple[CLIP, Tokenizer]:
    """A fresh CLIP model for ``data``'s image–caption pairs, as ``pretrain.method: clip``
    builds it: the tokenizer from ``data.captions`` (streamed pairs: from their captions'
    word counts, the same vocabulary), the image tower ``cfg.backbone``, the text tower
    ``cfg.text``, ``cfg.method_args`` the rest of :class:`CLIPConfig`; weights drawn from
    ``seed``."""
    streamed = isinstance(data, PairStream)
    if not streamed and data.captions is None:
        raise ValueError(
            f"pretrain.method clip: the pre-training set {data.name!r} has no captions"
        )
    model_cfg = CLIPConfig(backbone=cfg.backbone, text=cfg.text, **cfg.checked_method_args())
    if streamed:
        tokenizer = cfg.text.tokenizer_from_counts(data.words)
    else:
        tokenizer = cfg.text.build_tokenizer(data.captions)
    with seeded(seed):
        return model_cfg.build(tokenizer, data.channels, data.image_size), tokenizer


def clip_views(data: ImageSet | PairStream, cfg: PretrainConfig) -> nn.Module | None:
    """CLIP's views for ``data`` (:func:`clip_augment` with ``cfg.augment.crop_scale``,
    default 0.9–1), or None for crops of ``[1, 1]`` (the images as they are)."""
    crop = tuple(cfg.augment.crop_scale or (0.9, 1.0))
    return None if crop == (1.0, 1.0) else clip_augment(data.image_size, data.channels, crop)


def pretrain_clip(
    data: ImageSet | PairStream,
    cfg: PretrainConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    checkpoint_dir: str | Path | None = None,
) -> tuple[CLIP, Tokenizer, FitResult]:
    """Pre-train a fresh CLIP on ``data``'s image–caption pairs (``pretrain.method: clip``):
    held in memory (an ImageSet), or streamed from shards (a
    :class:`~sslpoison.data.shards.PairStream`, read batch by batch, the tokenizer built from
    its captions' word counts: the same vocabulary).

    The tokenizer is built from ``data.captions``; the image tower is ``cfg.backbone``, the
    text tower ``cfg.text``, ``cfg.method_args`` the rest of :class:`CLIPConfig`; the views
    are :func:`clip_augment` with ``cfg.augment.crop_scale`` (default 0.9–1; ``[1, 1]``: the
    images as they are). Resumes from ``checkpoint_dir``.

    Returns (the model on ``device``, its tokenizer, the engine's result).
    """
    device = torch.device(device)
    model, tokenizer = build_clip(data, cfg, seed)
    task = CLIPTask(model, clip_views(data, cfg)).to(device)
    train = cfg.train
    if isinstance(data, PairStream):
        batches: TensorBatches | StreamBatches = data.batches(
            train.batch_size, tokenizer, seed=seed, drop_last=train.drop_last, device=device
        )
    else:
        ids = tokenizer.encode(data.captions).to(device)
        batches = TensorBatches(
            data.images.to(device),
            ids,
            batch_size=train.batch_size,
            drop_last=train.drop_last,
            seed=seed,
        )
    result = fit(
        task, batches, cfg.train, seed=seed, checkpoint_dir=checkpoint_dir, desc="pretrain clip"
    )
    return model, tokenizer, result


__all__ = [
    "AugmentConfig",
    "BackboneConfig",
    "PretrainConfig",
    "PretrainTask",
    "build_clip",
    "build_encoder",
    "clip_views",
    "pretrain",
    "pretrain_clip",
    "train_backbone",
]
