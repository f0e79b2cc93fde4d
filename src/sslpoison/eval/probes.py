"""Probes trained on frozen (cached) features: linear and 2-layer MLP classifiers.

Features are standardised with the training set's mean and std; the probe is trained by the
one engine (:func:`sslpoison.train.engine.fit`) with Adam and a cosine schedule.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt

from sslpoison.config import Config
from sslpoison.train.engine import TensorBatches, TrainConfig, fit
from sslpoison.train.optim import OptimConfig


class ProbeConfig(Config):
    """How probes are trained (shared by linear and MLP probes)."""

    epochs: PositiveInt = 30
    min_steps: PositiveInt = 500  # small labelled sets train for more epochs
    batch_size: PositiveInt = 256
    lr: PositiveFloat = 3e-3
    weight_decay: NonNegativeFloat = 1e-4
    hidden: PositiveInt = 512
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class Probe(nn.Module):
    """Standardise → classifier. ``forward(features) -> logits`` (B×D → B×classes)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, head: nn.Module) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head((features - self.mean) / self.std)

    @torch.no_grad()
    def predict(self, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        self.eval()
        return torch.cat([self(f).argmax(1) for f in features.split(batch_size)])


class _ProbeTask(nn.Module):
    def __init__(self, probe: Probe) -> None:
        super().__init__()
        self.probe = probe

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.probe(features), labels)


def train_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    kind: Literal["linear", "mlp"] = "linear",
    cfg: ProbeConfig | None = None,
    seed: int = 0,
) -> Probe:
    """Fit a probe on N×D features with int64 labels (N); returns it in eval mode."""
    cfg = cfg or ProbeConfig()
    if features.shape[0] != labels.shape[0]:
        raise ValueError(f"probe: {features.shape[0]} feature rows for {labels.shape[0]} labels")
    features = features.float()
    mean = features.mean(0)
    std = features.std(0).clamp_min(1e-6)
    d = features.shape[1]
    torch.manual_seed(seed)
    if kind == "linear":
        head: nn.Module = nn.Linear(d, num_classes)
    elif kind == "mlp":
        head = nn.Sequential(
            nn.Linear(d, cfg.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, num_classes),
        )
    else:
        raise ValueError(f"unknown probe kind {kind!r}; use 'linear' or 'mlp'")
    probe = Probe(mean, std, head).to(features.device)
    batch = min(cfg.batch_size, features.shape[0])
    steps_per_epoch = features.shape[0] // batch
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
    train_cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch,
        checkpoint_every=0,
        progress=False,
        optimizer=OptimConfig(name="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay),
    )
    fit(
        _ProbeTask(probe),
        TensorBatches(features, labels, batch_size=batch, seed=seed),
        train_cfg,
        seed=seed,
        desc=f"{kind} probe",
    )
    return probe.eval()
