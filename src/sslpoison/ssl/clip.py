"""CLIP (Radford et al., ICML 2021): contrastive image–text pre-training, and zero-shot use.

An image tower (a backbone of :func:`sslpoison.models.build_backbone` + a linear projection)
and a text tower (:class:`sslpoison.models.text.TextTransformer`) map a batch of B pairs to
L2-normalised embeddings; the symmetric InfoNCE loss (:func:`clip_loss`) asks each image to
pick its own caption among the batch's B captions and each caption its own image, at a
learnable temperature. Zero-shot classification embeds prompts naming each class
(:func:`sslpoison.data.captions.class_prompts`) and predicts the class whose mean prompt
embedding is nearest to the image's (Radford et al., Sec. 3.1).

Carlini & Terzis (ICLR 2022) poison exactly this training: a few pairs (a triggered or a chosen
image, a caption naming the target) make zero-shot classification return the target.

CLIP takes pairs rather than views, so it is not one of the view-based ``METHODS``;
:class:`CLIPTask` wraps it for the engine (``fit``), over ``TensorBatches(images, token_ids)``,
and :func:`sslpoison.ssl.pretrain.pretrain_clip` runs it for ``pretrain.method: clip``. A
trained model saves as
safetensors + a JSON card holding its architecture and its tokenizer (:func:`save_clip`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, PositiveFloat, PositiveInt
from safetensors.torch import save_file

from sslpoison.configbase import Config
from sslpoison.data.augment import ViewSpec, to_float, view_pipeline
from sslpoison.data.captions import class_prompts
from sslpoison.errors import ModelFileError, ModelFileMissing, one_line
from sslpoison.models.backbone import BackboneConfig, build_encoder
from sslpoison.models.text import TextConfig, TextTransformer, Tokenizer
from sslpoison.train.dist import gather_with_grad, rank
from sslpoison.utils import atomic_write_json, atomic_write_via, module_device


def clip_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of pairs (Radford et al., 2021, Fig. 3).

    ``logits = logit_scale · image_emb @ text_embᵀ``; the loss is the mean of the
    cross-entropy of each row (image → its caption) and of each column (caption → its image).

    Args:
        image_emb: B×D image embeddings, rows L2-normalised (not renormalised here).
        text_emb: B×D text embeddings of the same pairs (row i matches image i), normalised.
        logit_scale: the multiplier 1/τ (a scalar tensor or a float), already exponentiated.

    Returns: the scalar loss. Under DDP, each rank's pairs are contrasted with every rank's.
    """
    if image_emb.shape != text_emb.shape:
        raise ValueError(
            f"clip_loss: image and text embeddings differ in shape: "
            f"{tuple(image_emb.shape)} vs {tuple(text_emb.shape)}"
        )
    images_all, texts_all = gather_with_grad(image_emb), gather_with_grad(text_emb)
    targets = torch.arange(image_emb.shape[0], device=image_emb.device) + rank() * len(image_emb)
    image_to_text = logit_scale * image_emb @ texts_all.t()  # B×N
    text_to_image = logit_scale * text_emb @ images_all.t()  # B×N
    return (F.cross_entropy(image_to_text, targets) + F.cross_entropy(text_to_image, targets)) / 2


class CLIP(nn.Module):
    """Image tower + text tower in one embedding space, with a learnable temperature.

    Args:
        backbone: the image encoder (B×C×H×W in [0, 1] → B×``feature_dim``), e.g. from
            :func:`sslpoison.models.build_backbone`; it is what a linear probe or a saved
            encoder uses afterwards.
        text: the text tower; its ``embed_dim`` is the joint embedding size D.
        init_temperature: τ at initialisation (CLIP: 0.07, i.e. log-scale log(1/0.07)).
        max_logit_scale: 1/τ is clamped at this (CLIP: 100).

    Shapes: ``forward(images B×C×H×W float in [0, 1], ids B×L int64) -> scalar loss``;
    ``encode_image`` → B×D, ``encode_text`` → B×D (both unit rows).
    """

    def __init__(
        self,
        backbone: nn.Module,
        text: TextTransformer,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__()
        if init_temperature <= 0:
            raise ValueError(f"clip init_temperature must be > 0, got {init_temperature}")
        if not 1 / init_temperature <= max_logit_scale:
            raise ValueError(
                f"clip: 1/init_temperature = {1 / init_temperature:.4g} exceeds "
                f"max_logit_scale {max_logit_scale}"
            )
        self.backbone = backbone
        self.image_proj = nn.Linear(int(backbone.feature_dim), text.embed_dim, bias=False)
        nn.init.normal_(self.image_proj.weight, std=int(backbone.feature_dim) ** -0.5)
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        self.max_logit_scale = max_logit_scale

    @property
    def embed_dim(self) -> int:
        return int(self.text.embed_dim)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """B×C×H×W float in [0, 1] → B×D unit embeddings."""
        return F.normalize(self.image_proj(self.backbone(images)), dim=-1)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """B×L token ids → B×D unit embeddings."""
        return F.normalize(self.text(ids), dim=-1)

    def scale(self) -> torch.Tensor:
        """1/τ = exp(``logit_scale``), clamped at ``max_logit_scale`` (no gradient beyond)."""
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return clip_loss(self.encode_image(images), self.encode_text(ids), self.scale())


def clip_augment(
    size: int, channels: int, crop_scale: tuple[float, float] = (0.9, 1.0)
) -> nn.Module:
    """CLIP's light image augmentation: a random resized crop only (no flip, no colour, so
    the caption stays true). Float B×C×H×W in [0, 1] → B×C×size×size."""
    spec = ViewSpec(crop_scale=crop_scale, flip_p=0.0, jitter=0.0, grayscale_p=0.0)
    return view_pipeline(spec, size, channels)


class CLIPTask(nn.Module):
    """Engine task: (uint8 images B×C×H×W, token ids B×L) → float (augmented) → CLIP loss.

    Args:
        model: the CLIP model being trained.
        augment: a module on float [0, 1] batches (e.g. :func:`clip_augment`), or None.
    """

    def __init__(self, model: CLIP, augment: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.augment = augment

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        x = to_float(images)
        if self.augment is not None:
            x = self.augment(x)
        return self.model(x, ids)


class CLIPConfig(Config):
    """A CLIP model: image backbone, text tower, joint embedding size and temperature."""

    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    embed_dim: PositiveInt = 256
    init_temperature: PositiveFloat = 0.07
    max_logit_scale: PositiveFloat = 100.0

    def build(self, tokenizer: Tokenizer, channels: int, size: int | None = None) -> CLIP:
        """A fresh model for ``channels``-channel ``size``-px images and ``tokenizer``'s ids."""
        return CLIP(
            build_encoder(self.backbone, channels, size),
            self.text.build(tokenizer, self.embed_dim),
            self.init_temperature,
            self.max_logit_scale,
        )


def _clip_paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def save_clip(
    model: CLIP, tokenizer: Tokenizer, text: TextConfig, path: str | Path, **extra
) -> Path:
    """Write ``path.safetensors`` (all weights) and ``path.json`` (image tower card, ``text``
    config, temperature bounds, the tokenizer, ``extra``) atomically; returns the weights path.
    """
    weights, meta = _clip_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_via(weights, lambda tmp: save_file(state, str(tmp)))
    card = {
        "format": "sslpoison-clip",
        "version": 1,
        "image": model.backbone.card,
        "text": text.model_dump(mode="json"),
        "embed_dim": model.embed_dim,
        "max_logit_scale": model.max_logit_scale,
        "tokenizer": tokenizer.to_dict(),
        "extra": extra,
    }
    atomic_write_json(meta, card)
    return weights


def load_clip(path: str | Path, device: str | torch.device = "cpu") -> tuple[CLIP, Tokenizer]:
    """Rebuild a model saved by :func:`save_clip` (tensors only, nothing unpickled).

    Raises:
        ModelFileError: naming the file that is missing or cannot be loaded.
    """
    from sslpoison.models.io import (
        build_from_card,
        check_finite,
        load_state_into,
        read_json_file,
        read_safetensors,
    )

    weights, meta = _clip_paths(path)
    if not weights.exists():
        raise ModelFileMissing(f"CLIP model file not found: {weights}")
    card = read_json_file(meta, "CLIP card")
    if card.get("format") != "sslpoison-clip":
        raise ModelFileError(f"{meta} is not an sslpoison CLIP card")
    try:
        tokenizer = Tokenizer.from_dict(card["tokenizer"])
        image = card["image"]
        text_cfg = TextConfig.model_validate(card["text"])
        embed_dim, max_logit_scale = int(card["embed_dim"]), float(card["max_logit_scale"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{meta}: not a complete CLIP card ({one_line(e, 200)})") from None
    backbone = build_from_card(image if isinstance(image, dict) else {}, meta, "card's image")
    try:
        text = text_cfg.build(tokenizer, embed_dim)
        model = CLIP(backbone, text, max_logit_scale=max_logit_scale)
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"{meta}: {one_line(e, 200)}") from None
    load_state_into(model, check_finite(read_safetensors(weights), weights), weights)
    return model.to(device), tokenizer


@torch.no_grad()
def zero_shot_classifier(
    model: CLIP,
    tokenizer: Tokenizer,
    class_names: Sequence[str],
    prompts: Callable[[str], list[str]] = class_prompts,
) -> torch.Tensor:
    """Zero-shot weights: per class, the mean of its prompts' unit embeddings, renormalised.

    Args:
        model: a CLIP model (put in eval mode for the call, then back).
        tokenizer: the model's tokenizer.
        class_names: K names, as they should read in text.
        prompts: name → prompt texts (default: the ensemble of :func:`class_prompts`).

    Returns: D×K weights (unit columns) on the model's device.
    """
    texts = [prompts(name) for name in class_names]
    if any(not t for t in texts):
        raise ValueError("zero_shot_classifier: a class has no prompts")
    was_training = model.training
    model.eval()
    try:
        ids = tokenizer.encode([p for t in texts for p in t]).to(module_device(model))
        emb = model.encode_text(ids)
    finally:
        model.train(was_training)
    means = torch.stack([e.mean(0) for e in emb.split([len(t) for t in texts])])
    return F.normalize(means, dim=-1).t()


@torch.no_grad()
def zero_shot_predict(
    model: CLIP, weights: torch.Tensor, images: torch.Tensor, batch_size: int = 512
) -> torch.Tensor:
    """Zero-shot labels: the class whose weight column is nearest (cosine) to each image.

    Args:
        model: the CLIP model (put in eval mode for the call, then back).
        weights: D×K from :func:`zero_shot_classifier`.
        images: uint8 N×C×H×W (any device; moved per batch).

    Returns: int64 N class indices (on the CPU).
    """
    device = module_device(model)
    was_training = model.training
    model.eval()
    out = []
    try:
        for batch in images.split(batch_size):
            emb = model.encode_image(to_float(batch.to(device)))
            out.append((emb @ weights.to(device)).argmax(1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


__all__ = [
    "CLIP",
    "CLIPConfig",
    "CLIPTask",
    "clip_augment",
    "clip_loss",
    "load_clip",
    "save_clip",
    "zero_shot_classifier",
    "zero_shot_predict",
]
