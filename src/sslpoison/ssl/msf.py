"""MSF, Mean Shift for self-supervised learning (Koohpayegani, Tejankar, Pirsiavash, ICCV 2021).

BYOL-like online (backbone → projector → predictor) and EMA target (backbone → projector)
networks, plus a memory bank of past target embeddings. The online prediction of one view is
pulled toward the k nearest neighbours, in the bank, of the target embedding of the other
view — the target itself being the nearest — i.e. toward their mean ("mean shift").
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslpoison.models.heads import mlp_head
from sslpoison.ssl.base import SSLMethod
from sslpoison.ssl.moco import enqueue, gather_keys
from sslpoison.train.dist import rank


def msf_loss(q: torch.Tensor, t: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """Mean-shift loss: regress each query onto the k nearest neighbours of its target.

    The candidates are ``cat([t, bank])`` (the current targets join the bank, as when the
    paper's code enqueues before the search), so each target's nearest neighbour is itself.
    Neighbours are chosen by cosine similarity to the target ``t_i``; the loss for sample i is
    ``mean_j (2 − 2·cos(q_i, n_ij))`` over its k neighbours n_ij, then averaged over the batch.

    Args:
        q: B×D online predictions (gradients flow through these).
        t: B×D target embeddings (constants: detached here).
        bank: M×D memory bank (constants).
        k: number of neighbours, 1 ≤ k ≤ B + M.

    All inputs are L2-normalised here. Returns a scalar in [0, 4].
    """
    candidates = torch.cat([t.detach(), bank.detach().to(t.dtype)])
    if not 1 <= k <= candidates.shape[0]:
        raise ValueError(f"msf k must be in [1, {candidates.shape[0]}], got {k}")
    t = F.normalize(t.detach(), dim=1)
    candidates = F.normalize(candidates, dim=1)
    nn_idx = (t @ candidates.t()).topk(k, dim=1).indices  # B×k, most similar first
    dtype = torch.promote_types(q.dtype, torch.float32)  # the regression in ≥ float32
    neighbours = candidates[nn_idx].to(dtype)  # B×k×D
    cos = (F.normalize(q.to(dtype), dim=1).unsqueeze(1) * neighbours).sum(dim=2)  # B×k
    return (2 - 2 * cos).mean()


class MSF(SSLMethod):
    """MSF: BYOL networks + a memory bank of target embeddings + k-NN regression.

    ``views[0]`` is the query view (online network) and ``views[1]`` the target view (target
    network), one direction as in the paper; with ``symmetric`` the loss is the mean of both
    directions. The paper pairs a weak target view with a strong query view; our recipes have
    no weak view, so MSF uses BYOL's two asymmetric strong views (``augmentation = "byol"``).

    The memory bank (``bank``, M×D, L2-normalised rows, initialised random) holds past target
    embeddings; ``bank_ptr`` is the next slot to write. The current targets are candidate
    neighbours too (each target is its own nearest neighbour), then they are enqueued (both
    directions' targets with ``symmetric``); under DDP the targets of every rank are gathered
    first, so every rank searches the same set and holds the same bank. The bank only changes
    in train mode.

    The target (``target_backbone`` + ``target_projector``) is a deep copy of the online
    backbone + projector with ``requires_grad=False``, updated by the training engine by EMA
    through :meth:`momentum_pairs` with ``momentum == (momentum_base, momentum_final)``. The
    paper's code keeps m = 0.99 constant, hence ``momentum_final=None`` → ``momentum_base``.

    Args:
        backbone: encoder with ``feature_dim`` d.
        k: number of neighbours (``topk``; 5 in the paper).
        memory_size: M, the bank size (1 024 000 for ImageNet in the paper).
        proj_hidden: projector hidden size (default 2·d, as in the paper's code).
        proj_dim: projector/predictor output size (default d // 4, as in the paper's code).
        pred_hidden: predictor hidden size (default 2·d).
        momentum_base: EMA momentum of the target at step 0.
        momentum_final: EMA momentum at the end of training (cosine schedule).
        symmetric: average the loss over both directions.

    Projector and predictor are Linear → BN → ReLU → Linear (``mlp_head`` with BN).

    Shapes: ``forward([v1, v2])``: two B×C×H×W float views in [0, 1] → scalar loss.
    """

    augmentation = "byol"
    momentum: tuple[float, float] | None = (0.99, 0.99)

    def __init__(
        self,
        backbone: nn.Module,
        k: int = 5,
        memory_size: int = 4096,
        proj_hidden: int | None = None,
        proj_dim: int | None = None,
        pred_hidden: int | None = None,
        momentum_base: float = 0.99,
        momentum_final: float | None = None,
        symmetric: bool = False,
    ) -> None:
        super().__init__(backbone)
        if memory_size < 1:
            raise ValueError(f"msf memory_size must be >= 1, got {memory_size}")
        if not 1 <= k <= memory_size + 1:
            raise ValueError(f"msf k must be in [1, memory_size + 1], got {k}")
        final = momentum_base if momentum_final is None else momentum_final
        for name, m in (("momentum_base", momentum_base), ("momentum_final", final)):
            if not 0.0 <= m <= 1.0:
                raise ValueError(f"msf {name} must be in [0, 1], got {m}")
        d = self.feature_dim
        proj_dim = proj_dim or max(1, d // 4)
        self.k = k
        self.symmetric = symmetric
        self.momentum = (momentum_base, final)
        self.projector = mlp_head(d, proj_hidden or 2 * d, proj_dim)
        self.predictor = mlp_head(proj_dim, pred_hidden or 2 * d, proj_dim)
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.register_buffer("bank", F.normalize(torch.randn(memory_size, proj_dim), dim=1))
        self.register_buffer("bank_ptr", torch.zeros(1, dtype=torch.long))

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.target_backbone), (self.projector, self.target_projector)]

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(self.backbone(x)))

    @torch.no_grad()
    def _target(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.target_projector(self.target_backbone(x)), dim=1)

    def _direction(
        self, query_view: torch.Tensor, target_view: torch.Tensor, bank: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, every rank's targets in rank order) for one query → target direction."""
        t = self._target(target_view)
        t_all = gather_keys(t)
        r, b = rank(), t.shape[0]
        others = torch.cat([t_all[: r * b], t_all[(r + 1) * b :]])  # other ranks' targets
        loss = msf_loss(self._predict(query_view), t, torch.cat([others, bank]), self.k)
        return loss, t_all

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        if len(views) != 2:
            raise ValueError(f"MSF takes 2 views, got {len(views)}")
        bank = self.bank.clone()
        loss, targets = self._direction(views[0], views[1], bank)
        if self.symmetric:
            loss2, targets2 = self._direction(views[1], views[0], bank)
            loss = 0.5 * (loss + loss2)
            targets = torch.cat([targets, targets2])
        if self.training:
            enqueue(self.bank, self.bank_ptr, targets)
        return loss


__all__ = ["MSF", "msf_loss"]
