"""Probes trained on frozen (cached) features: linear and 2-layer MLP classifiers.

Features are standardised with the training set's mean and std (``normalize: none``, the
default), or first L2-normalised per vector and then standardised with the normalised
training set's mean and variance (``normalize: l2``): the linear evaluation of Saha et al.
(CVPR 2022), inherited from CompRess (Abbasi Koohpayegani et al., NeurIPS 2020) — their
``Normalize`` then ``FullBatchNorm`` with 1/√(var + 1e-5), var of the normalised train
features. The scaling alone can move a backdoor's FP several-fold.

* ``linear``: multinomial logistic regression solved to convergence (full-batch L-BFGS),
  its L2 strength chosen from ``l2_grid`` on a held-out share of the labelled set, then refit
  on all of it. A converged convex solve makes the comparison between feature sets (encoder,
  random init, raw pixels) depend on the features, not on how far SGD got; a mini-batch
  Adam probe under-fitted 128-d SSL features by 2–3 points here.
* ``mlp``: Linear → ReLU → Linear, trained by the one engine (:func:`sslpoison.train.fit`)
  with AdamW and a cosine schedule (the BadEncoder downstream classifier).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt

from sslpoison.configbase import Config
from sslpoison.train.engine import TensorBatches, TrainConfig, fit
from sslpoison.train.optim import OptimConfig
from sslpoison.utils import seeded


class ProbeConfig(Config):
    """How probes are trained.

    ``normalize``: the features' scaling before either probe (see the module doc): ``none``
    (standardise) or ``l2`` (L2-normalise each vector, then standardise; Saha et al.'s).
    Linear: ``l2_grid`` (penalty λ·‖W‖² added to the mean cross-entropy), ``val_share`` of the
    labelled set held out to choose λ, ``max_iter`` L-BFGS iterations. MLP: the rest.
    """

    normalize: Literal["none", "l2"] = "none"

    l2_grid: list[NonNegativeFloat] = Field(
        default_factory=lambda: [1e-2, 1e-3, 1e-4, 1e-5], min_length=1
    )
    val_share: float = Field(0.2, gt=0.0, lt=1.0)
    max_iter: PositiveInt = 300
    epochs: PositiveInt = 30
    min_steps: PositiveInt = 500  # small labelled sets train the MLP for more epochs
    batch_size: PositiveInt = 256
    lr: PositiveFloat = 3e-3
    weight_decay: NonNegativeFloat = 1e-4
    hidden: PositiveInt = 512
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class Probe(nn.Module):
    """[L2-normalise →] standardise → classifier. ``forward(features) -> logits`` (B×D →
    B×classes)."""

    def __init__(
        self, mean: torch.Tensor, std: torch.Tensor, head: nn.Module, l2: bool = False
    ) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.head = head
        self.l2 = l2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(scaled(features, self.mean, self.std, self.l2))

    @torch.no_grad()
    def predict(self, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        self.eval()
        return torch.cat([self(f).argmax(1) for f in features.split(batch_size)])


def standardiser(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std (clamped away from 0) of N×D features."""
    return features.mean(0), features.std(0).clamp_min(1e-6)


#: Added to the variance of L2-normalised features (CompRess's ``FullBatchNorm``).
L2_VAR_EPS = 1e-5


def feature_scaling(
    features: torch.Tensor, normalize: Literal["none", "l2"] = "none"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-dimension mean and std (D each) a probe standardises with, from its N×D train
    features: :func:`standardiser`'s, or for ``l2`` those of the L2-normalised features
    (std = √(sample var + :data:`L2_VAR_EPS`))."""
    if normalize == "none":
        return standardiser(features)
    var, mean = torch.var_mean(F.normalize(features, dim=1), dim=0)
    return mean, (var + L2_VAR_EPS).sqrt()


def scaled(
    features: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, l2: bool = False
) -> torch.Tensor:
    """N×D features [L2-normalised per vector, then] standardised with ``mean`` and ``std``."""
    if l2:
        features = F.normalize(features, dim=1)
    return (features - mean) / std


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    l2: float,
    max_iter: int = 300,
    init: nn.Linear | None = None,
) -> nn.Linear:
    """Multinomial logistic regression on (already standardised) N×D ``x`` by L-BFGS.

    Minimises mean cross-entropy + ``l2``·‖W‖² (bias not penalised). ``init`` warm-starts.
    """
    head = nn.utils.skip_init(nn.Linear, x.shape[1], num_classes, device=x.device, dtype=x.dtype)
    with torch.no_grad():
        if init is not None:
            head.load_state_dict(init.state_dict())
        else:
            head.weight.zero_()
            head.bias.zero_()
    opt = torch.optim.LBFGS(
        head.parameters(),
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


def select_l2(
    x: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: ProbeConfig, seed: int
) -> float:
    """The L2 strength of ``cfg.l2_grid`` the linear probe uses for standardised N×D ``x``:
    the best on a held-out ``cfg.val_share`` of the set (seeded), each λ fitted on the rest."""
    if len(cfg.l2_grid) == 1:
        return cfg.l2_grid[0]
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=g).to(x.device)
    n_val = max(1, int(cfg.val_share * x.shape[0]))
    val, fit_idx = perm[:n_val], perm[n_val:]
    best, head, l2 = -1.0, None, cfg.l2_grid[0]
    for lam in cfg.l2_grid:  # strong → weak penalty, each warm-started from the last
        head = fit_logistic(x[fit_idx], labels[fit_idx], num_classes, lam, cfg.max_iter, init=head)
        with torch.no_grad():
            acc = (head(x[val]).argmax(1) == labels[val]).float().mean().item()
        if acc > best:
            best, l2 = acc, lam
    return l2


def _linear_probe(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: ProbeConfig, seed: int
) -> Probe:
    mean, std = feature_scaling(features, cfg.normalize)
    x = scaled(features, mean, std, cfg.normalize == "l2")
    lam = select_l2(x, labels, num_classes, cfg, seed)
    head = fit_logistic(x, labels, num_classes, lam, cfg.max_iter)
    return Probe(mean, std, head, cfg.normalize == "l2").eval()


class _ProbeTask(nn.Module):
    def __init__(self, probe: Probe) -> None:
        super().__init__()
        self.probe = probe

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.probe(features), labels)


def _mlp_probe(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: ProbeConfig, seed: int
) -> Probe:
    mean, std = feature_scaling(features, cfg.normalize)
    with seeded(seed):
        head = nn.Sequential(
            nn.Linear(features.shape[1], cfg.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, num_classes),
        )
    probe = Probe(mean, std, head, cfg.normalize == "l2").to(features.device)
    batch = min(cfg.batch_size, features.shape[0])
    steps_per_epoch = features.shape[0] // batch
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
    train_cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch,
        checkpoint_every=0,
        progress=False,
        amp=False,  # a small head on fixed features: fp32 everywhere
        amp_cpu=False,
        optimizer=OptimConfig(name="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay),
    )
    fit(
        _ProbeTask(probe),
        TensorBatches(features, labels, batch_size=batch, seed=seed),
        train_cfg,
        seed=seed,
        desc="mlp probe",
    )
    return probe.eval()


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
    if kind not in ("linear", "mlp"):
        raise ValueError(f"unknown probe kind {kind!r}; use 'linear' or 'mlp'")
    build = _linear_probe if kind == "linear" else _mlp_probe
    return build(features.float(), labels, num_classes, cfg, seed)
