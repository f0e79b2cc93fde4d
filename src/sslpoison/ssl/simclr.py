"""SimCLR (Chen, Kornblith, Norouzi, Hinton, ICML 2020): NT-Xent over two views."""

from __future__ import annotations

import torch
import torch.nn as nn

from sslpoison.models.heads import mlp_head
from sslpoison.ssl.base import SSLMethod, info_nce
from sslpoison.train.dist import gather_with_grad, rank


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent: each of the 2B embeddings must pick its partner among the other 2B − 1.

    Args:
        z1, z2: B×D projections of the two views (row i of each is the same image).
        temperature: τ > 0.

    Returns: the mean loss over all 2B anchors. Under DDP, negatives come from every rank.
    """
    z1_all, z2_all = gather_with_grad(z1), gather_with_grad(z2)
    offset = rank() * z1.shape[0]  # equal batch sizes on every rank
    n_all = z1_all.shape[0]
    keys = torch.cat([z1_all, z2_all])  # 2N×D
    local = torch.arange(z1.shape[0], device=z1.device) + offset
    query = torch.cat([z1, z2])  # 2B×D
    own = torch.cat([local, local + n_all])
    positive = torch.cat([local + n_all, local])
    return info_nce(query, keys, positive, temperature, exclude=own)


class SimCLR(SSLMethod):
    """Backbone → 2-layer MLP projector (BN) → NT-Xent at temperature τ.

    Args:
        backbone: encoder with ``feature_dim``.
        temperature: τ (0.5 in the paper for CIFAR, 0.2 common for small batches).
        proj_dim: output size of the projector (128 in the paper).
        proj_hidden: hidden size (defaults to the backbone's feature size).
    """

    augmentation = "simclr"

    def __init__(
        self,
        backbone: nn.Module,
        temperature: float = 0.5,
        proj_dim: int = 128,
        proj_hidden: int | None = None,
    ) -> None:
        super().__init__(backbone)
        if temperature <= 0:
            raise ValueError(f"simclr temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.projector = mlp_head(self.feature_dim, proj_hidden or self.feature_dim, proj_dim)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        if len(views) != 2:
            raise ValueError(f"SimCLR takes 2 views, got {len(views)}")
        b = views[0].shape[0]
        z = self.projector(self.backbone(torch.cat(views)))
        return nt_xent(z[:b], z[b:], self.temperature)
