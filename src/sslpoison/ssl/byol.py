"""BYOL, Bootstrap Your Own Latent (Grill et al., NeurIPS 2020).

An online network (backbone → projector → predictor) regresses the projection that a target
network (an EMA copy of backbone → projector) gives for the other view of the same image.
No negatives; the predictor and the slowly moving target prevent collapse.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslpoison.models.heads import mlp_head
from sslpoison.ssl.base import SSLMethod


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's normalised regression loss, one direction (Grill et al., 2020, Eq. 2).

    ``‖p̄ − z̄‖² = 2 − 2·cos(p, z)`` per sample, averaged over the batch; in [0, 4].

    Args:
        p: B×D online predictions (gradients flow through these).
        z: B×D target projections (treated as constants: detached here).

    Returns: a scalar, the batch mean, computed in at least float32 (also under autocast).
    """
    dtype = torch.promote_types(p.dtype, torch.float32)
    p = F.normalize(p.to(dtype), dim=1)
    z = F.normalize(z.detach().to(dtype), dim=1)
    return (2 - 2 * (p * z).sum(dim=1)).mean()


class BYOL(SSLMethod):
    """BYOL: online backbone + projector + predictor, EMA target backbone + projector.

    The loss returned is the paper's symmetrised loss, the **sum** of both directions,
    ``byol_loss(pred(online(v1)), target(v2)) + byol_loss(pred(online(v2)), target(v1))``,
    so it lies in [0, 8] (not the mean of the two).

    The target (``target_backbone`` + ``target_projector``) is a deep copy of the online
    backbone + projector with ``requires_grad=False``; the training engine updates it by EMA
    through :meth:`momentum_pairs`, with momentum going from ``momentum_base`` to 1.0 on a
    cosine schedule (``momentum == (momentum_base, 1.0)``). It runs in the same mode as this
    module (train mode during training). Each view goes through each network as one batch.

    Args:
        backbone: encoder with ``feature_dim``.
        proj_hidden: hidden size of the projector (4096 in the paper).
        proj_dim: output size of the projector and predictor (256 in the paper).
        pred_hidden: hidden size of the predictor (4096 in the paper).
        momentum_base: the EMA momentum at step 0 (0.996 in the paper; 0.99 suits short
            small-scale runs).

    Projector and predictor are Linear → BN → ReLU → Linear (``mlp_head`` with BN).

    Shapes: ``forward([v1, v2])``: two B×C×H×W float views in [0, 1] → scalar loss.
    """

    augmentation = "byol"
    momentum: tuple[float, float] | None = (0.99, 1.0)

    def __init__(
        self,
        backbone: nn.Module,
        proj_hidden: int = 4096,
        proj_dim: int = 256,
        pred_hidden: int = 4096,
        momentum_base: float = 0.99,
    ) -> None:
        super().__init__(backbone)
        if not 0.0 <= momentum_base <= 1.0:
            raise ValueError(f"byol momentum_base must be in [0, 1], got {momentum_base}")
        self.momentum = (momentum_base, 1.0)
        self.projector = mlp_head(self.feature_dim, proj_hidden, proj_dim)
        self.predictor = mlp_head(proj_dim, pred_hidden, proj_dim)
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.target_backbone), (self.projector, self.target_projector)]

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(self.backbone(x)))

    @torch.no_grad()
    def _target(self, x: torch.Tensor) -> torch.Tensor:
        return self.target_projector(self.target_backbone(x))

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        if len(views) != 2:
            raise ValueError(f"BYOL takes 2 views, got {len(views)}")
        v1, v2 = views
        return byol_loss(self._predict(v1), self._target(v2)) + byol_loss(
            self._predict(v2), self._target(v1)
        )


__all__ = ["BYOL", "byol_loss"]
