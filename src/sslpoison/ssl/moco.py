"""MoCo v2 (He et al., CVPR 2020; Chen, Fan, Girshick, He, arXiv:2003.04297, 2020).

A query encoder (backbone + MLP projector without BatchNorm) is trained with InfoNCE: each
query must pick the key of the other view of its image, computed by a momentum (EMA) copy
of the encoder, among the negatives held in a queue of past keys.

This file also holds the two queue helpers that MSF reuses: :func:`gather_keys` (all ranks'
keys, no gradient) and :func:`enqueue` (ring-buffer write with wrap-around).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslpoison.models.heads import mlp_head
from sslpoison.ssl.base import SSLMethod
from sslpoison.train.dist import is_distributed, world_size


def moco_loss(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
) -> torch.Tensor:
    """InfoNCE with one positive key per query and a shared queue of negatives.

    For query i the logits are ``[cos(q_i, k_i), cos(q_i, queue_1), …, cos(q_i, queue_K)] / τ``
    and the loss is the cross-entropy with the positive at index 0 (He et al., 2020, Eq. 1).

    Args:
        q: B×D queries (gradients flow through these).
        k: B×D positive keys, row i for query i (treated as constants: detached here).
        queue: K×D negative keys.
        temperature: τ > 0.

    All three are L2-normalised here, so any scale is fine.

    Returns: the mean loss over the B queries (a scalar).
    """
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1).to(q.dtype)
    negatives = F.normalize(queue.detach(), dim=1).to(q.dtype)
    l_pos = (q * k).sum(dim=1, keepdim=True)  # B×1
    l_neg = q @ negatives.t()  # B×K
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target)


@torch.no_grad()
def gather_keys(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B×…, equal B on every rank) from all ranks in rank order; no grad.

    Returns ``x`` itself (detached) outside DDP.
    """
    x = x.detach()
    if not is_distributed():
        return x
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def enqueue(queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor) -> None:
    """Write ``keys`` into the ring buffer ``queue`` at ``ptr``, wrapping around; in place.

    The oldest entries are overwritten first. When more keys than slots arrive, only the last
    ``K`` are kept (as if written one by one). No host–device synchronisation.

    Args:
        queue: K×D buffer.
        ptr: 1-element long buffer, the next slot to write; advanced by ``len(keys)`` mod K.
        keys: N×D new entries (cast to the queue's dtype).
    """
    size, n = queue.shape[0], keys.shape[0]
    if n == 0:
        return
    keys = keys.detach().to(queue.dtype)
    skip = max(0, n - size)  # keys that would be overwritten within this same write
    idx = (ptr + skip + torch.arange(n - skip, device=queue.device)) % size
    queue.index_copy_(0, idx, keys[skip:])
    ptr.copy_((ptr + n) % size)


class MoCo(SSLMethod):
    """MoCo v2: query encoder, momentum key encoder, queue of negatives, InfoNCE at τ.

    The key encoder (``key_backbone`` + ``key_projector``) is a deep copy of the query encoder
    with ``requires_grad=False``; the training engine updates it by EMA with momentum ``m``
    (constant: ``momentum == (m, m)``) through :meth:`momentum_pairs`. It runs in the same
    mode as this module (train mode during training, so its BatchNorm uses batch statistics).
    Shuffle-BN (Sec. 3.3 of the paper, against the BN leak between query and key batches)
    is not done: each view goes through each encoder as one batch.

    Views: ``views[0]`` and ``views[1]``. With ``symmetric`` the loss is the mean of
    ``moco_loss(q1, k2)`` and ``moco_loss(q2, k1)`` and both key batches (2B per rank) are
    enqueued; otherwise the loss is ``moco_loss(q1, k2)`` and only ``k2`` is enqueued. Under
    DDP the keys of all ranks are gathered before enqueueing, so every rank holds the same
    queue. The enqueue happens after the loss is computed (on a copy of the queue), so the
    current batch's keys are never its own negatives. The queue only changes in train mode.

    Args:
        backbone: encoder with ``feature_dim``.
        temperature: τ (0.2 in MoCo v2).
        queue_size: K, the number of negative keys (65 536 in the paper; any size works,
            writes wrap around).
        proj_dim: output size of the projector (128 in MoCo v2).
        proj_hidden: hidden size of the projector (defaults to the backbone's feature size).
        momentum: EMA momentum m of the key encoder (0.999 in the paper; 0.99 suits short
            small-scale runs).
        symmetric: use both views as queries (see above).

    Shapes: ``forward([v1, v2])``: two B×C×H×W float views in [0, 1] → scalar loss.
    """

    augmentation = "mocov2"
    momentum: tuple[float, float] | None = (0.99, 0.99)

    def __init__(
        self,
        backbone: nn.Module,
        temperature: float = 0.2,
        queue_size: int = 4096,
        proj_dim: int = 128,
        proj_hidden: int | None = None,
        momentum: float = 0.99,
        symmetric: bool = True,
    ) -> None:
        super().__init__(backbone)
        if temperature <= 0:
            raise ValueError(f"moco temperature must be > 0, got {temperature}")
        if queue_size < 1:
            raise ValueError(f"moco queue_size must be >= 1, got {queue_size}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"moco momentum must be in [0, 1], got {momentum}")
        self.temperature = temperature
        self.symmetric = symmetric
        self.momentum = (momentum, momentum)
        self.projector = mlp_head(
            self.feature_dim, proj_hidden or self.feature_dim, proj_dim, batch_norm=False
        )
        self.key_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.key_backbone), (self.projector, self.key_projector)]

    def _query(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    @torch.no_grad()
    def _key(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.key_projector(self.key_backbone(x)), dim=1)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        if len(views) != 2:
            raise ValueError(f"MoCo takes 2 views, got {len(views)}")
        queue = self.queue.clone()  # the enqueue below must not touch what backward needs
        k2 = self._key(views[1])
        loss = moco_loss(self._query(views[0]), k2, queue, self.temperature)
        if self.symmetric:
            k1 = self._key(views[0])
            loss2 = moco_loss(self._query(views[1]), k1, queue, self.temperature)
            loss = 0.5 * (loss + loss2)
            new_keys = torch.cat([k1, k2])
        else:
            new_keys = k2
        if self.training:
            enqueue(self.queue, self.queue_ptr, gather_keys(new_keys))
        return loss


__all__ = ["MoCo", "enqueue", "gather_keys", "moco_loss"]
