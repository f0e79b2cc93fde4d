"""Fine-tuning and fine-pruning baselines: keep the suspect weights, train them on clean data.

* ``finetune`` — the suspect encoder goes on training with a self-supervised loss (SimCLR by
  default, any method of :data:`sslpoison.ssl.METHODS`) on the defender's clean images. The
  simplest mitigation, and a baseline of MIMIC's comparison.
* ``fineprune`` — Fine-Pruning (Liu, Dolan-Gavitt, Garg, RAID 2018) without labels: the
  units of the encoder's last feature layer that are least active on the clean images (mean
  absolute pooled activation) are pruned — held at zero, which the encoder's card records —
  and the pruned encoder is then fine-tuned as above. The last feature layer is the last
  ResNet stage's channels, or a ViT's (CLIP ModifiedResNet's, a wrapped Hugging Face
  model's) output features (``pruning_activity`` of the backbone). The idea: a backdoor
  hides in neurons that clean inputs leave dormant.

Both train through :func:`sslpoison.ssl.pretrain.train_backbone` (the one engine); the method's
projection head is fresh and dropped afterwards.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field, model_validator

from sslpoison.configbase import check_kwargs
from sslpoison.data.augment import to_float
from sslpoison.data.imageset import ImageSet
from sslpoison.defenses.base import (
    Defended,
    EncoderDefense,
    check_batch,
    student_training,
)
from sslpoison.models import backbone_parameters, build_backbone
from sslpoison.ssl import METHODS
from sslpoison.ssl.pretrain import AugmentConfig, PretrainConfig, train_backbone
from sslpoison.train.engine import TrainConfig
from sslpoison.utils import frozen, seeded


class FinetuneConfig(EncoderDefense):
    """The ``defense:`` section for fine-tuning the suspect encoder on clean images.

    ``method`` / ``method_args`` / ``augment``: the self-supervised loss and its views, as in
    ``pretrain:`` (default SimCLR at τ 0.5, the method's own views); ``train``: Adam 1e-3
    as MIMIC's student (:func:`~sslpoison.defenses.base.student_training`).
    """

    name: Literal["finetune"] = "finetune"
    method: str = "simclr"
    method_args: dict[str, Any] = Field(default_factory=lambda: {"temperature": 0.5})
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainConfig = Field(default_factory=student_training)

    @model_validator(mode="after")
    def _method(self) -> FinetuneConfig:
        if self.method not in METHODS:
            raise ValueError(
                f"method: unknown SSL method {self.method!r}; known: {', '.join(sorted(METHODS))}"
            )
        check_kwargs(METHODS[self.method], self.method_args, "method_args")
        return self

    def training(self) -> PretrainConfig:
        """The pre-training recipe this fine-tuning runs (its backbone section is unused)."""
        return PretrainConfig(
            method=self.method,
            method_args=self.method_args,
            augment=self.augment,
            train=self.train,
        )

    def apply(
        self,
        encoder: nn.Module,
        clean: ImageSet,
        *,
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
    ) -> Defended:
        return run_finetune(encoder, clean, self, seed=seed, checkpoint_dir=checkpoint_dir)


def run_finetune(
    encoder: nn.Module,
    clean: ImageSet,
    cfg: FinetuneConfig,
    *,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    start: nn.Module | None = None,
) -> Defended:
    """Fine-tune a copy of ``encoder`` (or ``start``, e.g. a pruned copy) on ``clean``.

    ``encoder`` itself is left as given. Returns :class:`Defended` (eval mode, same device).
    """
    check_batch(cfg, len(clean))
    device = next(encoder.parameters()).device
    student = copy.deepcopy(encoder) if start is None else start
    student.requires_grad_(True).train()
    with seeded(seed):  # the fresh projection head
        student, result = train_backbone(
            student,
            clean,
            cfg.training(),
            seed=seed,
            device=device,
            checkpoint_dir=checkpoint_dir,
            desc=cfg.name,
        )
    return Defended(student.eval(), result, {"method": cfg.method})


class FinePruneConfig(FinetuneConfig):
    """The ``defense:`` section for fine-pruning: prune ``prune`` (a share in (0, 1)) of the
    last stage's channels, the least active on the clean images, then fine-tune."""

    name: Literal["fineprune"] = "fineprune"  # type: ignore[assignment]
    prune: float = Field(0.5, gt=0.0, lt=1.0)

    def apply(
        self,
        encoder: nn.Module,
        clean: ImageSet,
        *,
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
    ) -> Defended:
        pruned, record = prune_dormant(encoder, clean, self.prune)
        done = run_finetune(
            encoder, clean, self, seed=seed, checkpoint_dir=checkpoint_dir, start=pruned
        )
        return Defended(done.encoder, done.fit, {**done.record, **record})


@torch.no_grad()
def pruning_activity(
    encoder: nn.Module, images: torch.Tensor, batch_size: int = 512
) -> torch.Tensor:
    """The mean absolute activation of each prunable unit (``encoder.pruning_activity``,
    B×K per batch) over uint8 ``images`` (N×C×H×W): K values."""
    device = next(encoder.parameters()).device
    total = None
    for chunk in images.split(batch_size):
        a = encoder.pruning_activity(to_float(chunk.to(device))).float().abs().sum(0)
        total = a if total is None else total + a
    return total / len(images)


@torch.no_grad()
def prune_dormant(
    encoder: nn.Module, clean: ImageSet, share: float
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``encoder`` with the ``share`` of its last feature layer's units least
    active on ``clean`` (:func:`pruning_activity`) pruned (added to the card's ``pruned``).

    Returns (the pruned copy on the encoder's device, {"pruned_channels", "pruned_share"}).

    Raises:
        ValueError: the encoder has no prunable last feature layer (a backbone of
            :data:`sslpoison.models.BACKBONES` taking ``pruned``, with ``pruning_activity``);
            the message names what it is.
    """
    card = getattr(encoder, "card", None)
    what = card["arch"] if card else type(encoder).__name__
    if (
        card is None
        or "pruned" not in backbone_parameters(card["arch"])
        or not callable(getattr(encoder, "pruning_activity", None))
    ):
        raise ValueError(
            f"fineprune: a {what} encoder has no prunable last feature layer (ResNets, ViTs, "
            "CLIP ModifiedResNets and Hugging Face models have one)"
        )
    device = next(encoder.parameters()).device
    with frozen(encoder):
        activity = pruning_activity(encoder, clean.images)
    already = set(card["args"].get("pruned") or [])
    order = [c for c in activity.argsort().tolist() if c not in already]
    count = round(share * activity.numel())
    chosen = sorted(already | set(order[: max(0, count - len(already))]))
    with seeded():  # its fresh weights are overwritten: leave the global RNG as it was
        pruned = build_backbone(card["arch"], **{**card["args"], "pruned": chosen})
    pruned.load_state_dict(encoder.state_dict())
    if "source" in card:
        pruned.card["source"] = card["source"]
    record = {"pruned_channels": len(chosen), "pruned_share": len(chosen) / activity.numel()}
    return pruned.to(device), record


__all__ = ["FinePruneConfig", "FinetuneConfig", "prune_dormant", "run_finetune"]
