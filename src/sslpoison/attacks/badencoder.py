"""BadEncoder: inject a backdoor into a pre-trained encoder (Jia, Liu, Gong, S&P 2022).

The backdoored encoder f′ starts from the clean encoder f (BatchNorm frozen) and is trained on
unlabeled *shadow* images so that, for each target i with trigger t_i and reference images
x_ref,i of the target class of a downstream task,

* effectiveness  L0 = −cos(f′(x ⊕ t_i), f′(x_ref,i)),   L1 = −cos(f′(aug(x_ref,i)), f(x_ref,i))
* utility        L2 = −cos(f′(x), f(x))

loss = L0 + λ1·L1 + λ2·L2, each term averaged over targets, references and the batch. f(x)
of the shadow set and f(x_ref) are fixed, so they are computed once.

``center`` (our addition, on by default): features are compared after subtracting the mean
clean shadow feature μ. Encoder features follow a ReLU, so every pair of images already has a
cosine near 0.8–0.9 and a raw cosine of 0.98 to the reference still leaves the
image-dependent part that a standardised downstream probe reads. Centring measures the angle
in the directions the images actually differ in (see docs/badencoder.md).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import (
    Field,
    NonNegativeFloat,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from sslpoison.attacks.base import Attacked, EncoderAttack
from sslpoison.attacks.targets import Target, TargetConfig, choose_references, resolve_targets
from sslpoison.configbase import CountOrShare
from sslpoison.data.augment import ViewAugment, to_float
from sslpoison.data.imageset import ImageSet
from sslpoison.eval.backdoor import ACC, ASR
from sslpoison.eval.downstream import Downstream
from sslpoison.eval.features import extract_features
from sslpoison.eval.rows import Headline
from sslpoison.hooks import CheckContext
from sslpoison.train.engine import STAGE_KEY, FitResult, TensorBatches, TrainConfig, fit
from sslpoison.train.optim import OptimConfig

log = logging.getLogger(__name__)


def _paper_train() -> TrainConfig:
    # The public code: SGD lr 1e-3, momentum 0.9, wd 5e-4, batch 256, 200 epochs, no schedule.
    return TrainConfig(
        epochs=200,
        batch_size=256,
        optimizer=OptimConfig(
            name="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4, schedule="constant"
        ),
    )


class BadEncoderConfig(EncoderAttack):
    """The ``attack:`` section for BadEncoder.

    ``shadow``: the shadow set, a count or share of the pre-training images (seeded).
    ``targets``: each one a class of a dataset of ``eval.datasets``. To attack an encoder
    trained elsewhere, give it in the experiment's top-level ``encoder:`` section
    (:class:`~sslpoison.models.sources.EncoderSource`).
    """

    name: Literal["badencoder"] = "badencoder"
    shadow: CountOrShare = 0.2
    targets: list[TargetConfig] = Field(min_length=1)
    lambda1: NonNegativeFloat = 1.0
    lambda2: NonNegativeFloat = 1.0
    center: bool = True
    train: TrainConfig = Field(default_factory=_paper_train)

    title: ClassVar[str] = "BadEncoder"
    headline: ClassVar[Headline | None] = Headline(ACC, ASR)

    @model_serializer(mode="wrap")
    def _retired_keys_in_stage_keys(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        """In a stage cache key (``context={STAGE_KEY: device}``) the dump still holds the
        retired ``encoder`` and ``key_map`` at their old defaults, so that the attack stages
        cached before they moved to ``encoder:`` keep their keys."""
        data = handler(self)
        if (info.context or {}).get(STAGE_KEY) is not None:
            data |= {"encoder": None, "key_map": {}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, raw: Any) -> Any:
        """``attack.encoder`` / ``attack.key_map`` moved to the top-level ``encoder:``."""
        if isinstance(raw, dict):
            for key in ("encoder", "key_map"):
                if key in raw:
                    raise PydanticCustomError(
                        "moved",
                        f"attack.{key} moved to the top-level encoder: section, e.g. "
                        "encoder: {source: file, path: FILE, key_map: {...}}",
                    )
        return raw

    def check(self, context: CheckContext) -> None:
        for i, t in enumerate(self.targets):
            if t.dataset not in context.eval_datasets:
                raise ValueError(
                    f"attack.targets.{i}.dataset: {t.dataset!r} is not in eval.datasets "
                    f"{list(context.eval_datasets)}"
                )

    def backdoor_targets(
        self, data: ImageSet, downstream: Downstream, seed: int = 0
    ) -> list[Target]:
        return resolve_targets(self.targets, downstream)

    def prepare_targets(
        self, encoder: nn.Module, shadow: ImageSet, targets: list[Target], seed: int = 0
    ) -> list[Target]:
        """Each target with its reference images chosen (``reference_choice``) by the clean
        ``encoder``, against its features of the ``shadow`` images."""
        z_shadow = None
        if any(t.choice == "typical" for t in targets):
            z_shadow = extract_features(encoder, shadow.images)
        return [choose_references(t, encoder, z_shadow, seed + i) for i, t in enumerate(targets)]

    def shadow_subset(self, data: ImageSet, seed: int = 0) -> ImageSet:
        """``shadow`` of the pre-training images: seeded, not stratified (no labels)."""
        return data.take(self.shadow, seed=seed, stratified=False)

    def run(
        self,
        encoder: nn.Module,
        shadow: ImageSet,
        targets: list[Target],
        *,
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
    ) -> Attacked:
        encoder, result, parts = run_badencoder(
            encoder, shadow, targets, self, seed=seed, checkpoint_dir=checkpoint_dir
        )
        return Attacked(encoder, result, {"loss_terms": parts})


def cosine(a: torch.Tensor, b: torch.Tensor, center: torch.Tensor | None) -> torch.Tensor:
    """Row-wise cosine similarity of B×D ``a`` and ``b`` (after subtracting ``center``)."""
    if center is not None:
        a, b = a - center, b - center
    return (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(-1)


def badencoder_loss(
    z_triggered: list[torch.Tensor],
    z_reference: list[torch.Tensor],
    z_reference_aug: list[torch.Tensor],
    z_reference_clean: list[torch.Tensor],
    z_shadow: torch.Tensor,
    z_shadow_clean: torch.Tensor,
    lambda1: float = 1.0,
    lambda2: float = 1.0,
    center: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The BadEncoder loss from features; one list entry per target.

    Shapes: z_triggered[i] B×D (f′ of triggered shadow images); z_reference[i],
    z_reference_aug[i], z_reference_clean[i] R_i×D (f′(x_ref), f′(aug(x_ref)), f(x_ref));
    z_shadow, z_shadow_clean B×D (f′(x), f(x)); center D or None.

    Returns: (L0 + λ1·L1 + λ2·L2, {"l0", "l1", "l2"}).
    """
    l0 = torch.stack(
        [
            -cosine(zt[:, None, :], zr[None, :, :], center).mean()
            for zt, zr in zip(z_triggered, z_reference, strict=True)
        ]
    ).mean()
    l1 = torch.stack(
        [
            -cosine(za, zc, center).mean()
            for za, zc in zip(z_reference_aug, z_reference_clean, strict=True)
        ]
    ).mean()
    l2 = -cosine(z_shadow, z_shadow_clean, center).mean()
    return l0 + lambda1 * l1 + lambda2 * l2, {"l0": l0, "l1": l1, "l2": l2}


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every BatchNorm in eval mode and stop its affine parameters from training."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)


class BadEncoderTask(nn.Module):
    """Engine task: a batch of (shadow images, their clean features) → the BadEncoder loss."""

    def __init__(
        self,
        encoder: nn.Module,
        targets: list[Target],
        reference_clean: list[torch.Tensor],
        center: torch.Tensor | None,
        cfg: BadEncoderConfig,
        augment: ViewAugment,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.targets = targets
        self.cfg = cfg
        self.augment = augment
        for i, (t, z) in enumerate(zip(targets, reference_clean, strict=True)):
            self.register_buffer(f"reference_{i}", t.references, persistent=False)
            self.register_buffer(f"reference_clean_{i}", z, persistent=False)
        self.register_buffer("center", center, persistent=False)
        self.part_sums: dict[str, float] = {"l0": 0.0, "l1": 0.0, "l2": 0.0}
        self.part_steps = 0
        freeze_batchnorm(self.encoder)

    def pop_parts(self) -> dict[str, float]:
        """Mean L0, L1, L2 since the last call (for the epoch log and the stage record)."""
        means = {k: v / max(1, self.part_steps) for k, v in self.part_sums.items()}
        self.part_sums = dict.fromkeys(self.part_sums, 0.0)
        self.part_steps = 0
        return means

    def train(self, mode: bool = True) -> BadEncoderTask:
        super().train(mode)
        freeze_batchnorm(self.encoder)  # BatchNorm statistics stay those of the clean encoder
        return self

    def forward(self, images: torch.Tensor, shadow_clean: torch.Tensor) -> torch.Tensor:
        b, n = images.shape[0], len(self.targets)
        refs = [getattr(self, f"reference_{i}") for i in range(n)]
        triggered = [t.trigger.apply(images)[0] for t in self.targets]
        # One forward pass over everything: B clean, n·B triggered, the references twice.
        batch = torch.cat(
            [to_float(images)]
            + [to_float(x) for x in triggered]
            + [to_float(r) for r in refs]
            + [self.augment(r)[0] for r in refs]
        )
        z = self.encoder(batch)
        sizes = [b] * (n + 1) + [r.shape[0] for r in refs] * 2
        parts = list(z.split(sizes))
        loss, parts = badencoder_loss(
            parts[1 : n + 1],
            parts[n + 1 : 2 * n + 1],
            parts[2 * n + 1 :],
            [getattr(self, f"reference_clean_{i}") for i in range(n)],
            parts[0],
            shadow_clean,
            self.cfg.lambda1,
            self.cfg.lambda2,
            self.center,
        )
        for k, v in parts.items():
            self.part_sums[k] += float(v.detach())
        self.part_steps += 1
        return loss


def run_badencoder(
    encoder: nn.Module,
    shadow: ImageSet,
    targets: list[Target],
    cfg: BadEncoderConfig,
    *,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
) -> tuple[nn.Module, FitResult, list[dict[str, float]]]:
    """Backdoor ``encoder`` in place with the shadow images and targets.

    Returns the encoder, the engine's result and the mean loss terms of each epoch.

    ``encoder`` is the clean encoder (on its device); the clean features it gives the shadow
    set and the references are computed first, once.
    """
    missing = [t.name for t in targets if t.references is None]
    if missing:
        raise ValueError(f"targets {missing} have no reference images: prepare_targets first")
    device = next(encoder.parameters()).device
    shadow_clean = extract_features(encoder, shadow.images, device=device)
    reference_clean = [extract_features(encoder, t.references, device=device) for t in targets]
    center = shadow_clean.mean(0) if cfg.center else None
    augment = ViewAugment("simclr", shadow.image_size, shadow.channels)
    task = BadEncoderTask(encoder, targets, reference_clean, center, cfg, augment).to(device)
    batches = TensorBatches(
        shadow.images.to(device),
        shadow_clean,
        batch_size=cfg.train.batch_size,
        drop_last=cfg.train.drop_last,
        seed=seed,
    )
    parts: list[dict[str, float]] = []

    def log_parts(epoch: int, _: float) -> None:
        parts.append(task.pop_parts())
        log.info("badencoder: epoch %d %s", epoch, {k: round(v, 4) for k, v in parts[-1].items()})

    result = fit(
        task,
        batches,
        cfg.train,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        desc="badencoder",
        on_epoch_end=[log_parts],
    )
    encoder.eval()
    return encoder, result, parts
