"""Projection and prediction heads (MLPs on top of the backbone's pooled feature)."""

from __future__ import annotations

import torch.nn as nn


def mlp_head(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    layers: int = 2,
    batch_norm: bool = True,
    last_bn: bool = False,
) -> nn.Sequential:
    """Linear → [BN] → ReLU, repeated ``layers - 1`` times, then Linear [→ BN].

    SimCLR's projector is ``mlp_head(d, d, 128)``; MoCo v2's has no BN; BYOL's projector and
    predictor are ``mlp_head(d, 4096, 256)`` with BN (Grill et al., 2020).
    Shapes: B×in_dim → B×out_dim.
    """
    if layers < 1:
        raise ValueError(f"a head needs at least one layer, got {layers}")
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            mods.append(nn.BatchNorm1d(hidden_dim))
        mods.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    mods.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*mods)
