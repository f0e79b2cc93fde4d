"""The fine-tuning victim: a copy of the pre-trained encoder and a linear head trained
together on a labelled set, through the one engine (:func:`sslpoison.train.engine.fit`).

Indiscriminate poisons are crafted on the frozen encoder; this victim shows what they do to
someone who fine-tunes it instead (Lu, Yang, Kamath, Yu, SaTML 2024).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslpoison.data.augment import to_float
from sslpoison.data.imageset import ImageSet
from sslpoison.eval.features import extract_features
from sslpoison.eval.metrics import accuracy
from sslpoison.train.engine import TensorBatches, TrainConfig, fit
from sslpoison.train.optim import OptimConfig
from sslpoison.utils import seeded


def finetune_training() -> TrainConfig:
    """The default: 5 epochs, batch 128, AdamW 1e-3 (cosine), no checkpoints; a bar on a
    terminal, else a log line per epoch."""
    return TrainConfig(
        epochs=5,
        batch_size=128,
        checkpoint_every=0,
        progress=True,
        optimizer=OptimConfig(name="adamw", lr=1e-3, weight_decay=1e-4, warmup_epochs=0.2),
    )


class Classifier(nn.Module):
    """Encoder → linear head: B×C×H×W float in [0, 1] → B×classes logits."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))


class _FinetuneTask(nn.Module):
    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(to_float(images)), labels)


def finetune(
    encoder: nn.Module, train: ImageSet, cfg: TrainConfig | None = None, seed: int = 0
) -> Classifier:
    """A copy of ``encoder`` with a fresh linear head (seeded), both trained on ``train``
    (uint8 images, labels) with cross-entropy; returned in eval mode. ``encoder`` is left as
    it was."""
    cfg = cfg or finetune_training()
    device = next(encoder.parameters()).device
    with seeded(seed):
        model = Classifier(copy.deepcopy(encoder).requires_grad_(True), train.num_classes)
    model = model.to(device)
    batches = TensorBatches(
        train.images.to(device), train.labels.to(device), batch_size=min(cfg.batch_size,
        len(train)), drop_last=cfg.drop_last, seed=seed,
    )  # fmt: skip
    fit(_FinetuneTask(model), batches, cfg, seed=seed, desc="fine-tune victim")
    return model.eval()


def finetune_accuracy(
    encoder: nn.Module, train: ImageSet, test: ImageSet, cfg: TrainConfig | None = None,
    seed: int = 0,
) -> float:  # fmt: skip
    """Test accuracy of :func:`finetune` of ``encoder`` on ``train``."""
    model = finetune(encoder, train, cfg, seed)
    logits = extract_features(model, test.images)
    return accuracy(logits.argmax(1).cpu(), test.labels.cpu())


__all__ = ["Classifier", "finetune", "finetune_accuracy", "finetune_training"]
