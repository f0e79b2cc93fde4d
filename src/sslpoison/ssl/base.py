"""What every SSL method is: an ``nn.Module`` whose forward maps views to a scalar loss.

Methods hold no training loop. The engine (:mod:`sslpoison.train`) optimises the method's
trainable parameters and, after each step, updates the (online, target) pairs listed by
:meth:`SSLMethod.momentum_pairs` as an exponential moving average.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SSLMethod(nn.Module):
    """Base class: ``method(views) -> loss``.

    Attributes:
        backbone: the encoder being pre-trained (B×C×H×W in [0, 1] → B×D).
        augmentation: the name of the view recipe this method is defined with.
        momentum: (base, final) EMA momentum for the target network, or None.
    """

    augmentation: str = "simclr"
    momentum: tuple[float, float] | None = None

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    @property
    def feature_dim(self) -> int:
        return int(self.backbone.feature_dim)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, target) module pairs that the engine's EMA hook updates."""
        return []


def info_nce(
    query: torch.Tensor,
    keys: torch.Tensor,
    positive: torch.Tensor,
    temperature: float,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of cosine-similarity logits.

    Args:
        query: Q×D, keys: K×D (both L2-normalised here).
        positive: Q indices into ``keys`` of each query's positive.
        exclude: optional Q indices into ``keys`` masked out (a query's own copy).
    """
    q = F.normalize(query, dim=1)
    k = F.normalize(keys, dim=1)
    logits = q @ k.t() / temperature
    if exclude is not None:
        logits = logits.index_put(
            (torch.arange(q.shape[0], device=q.device), exclude),
            torch.tensor(float("-inf"), device=q.device, dtype=logits.dtype),
        )
    return F.cross_entropy(logits, positive)


__all__ = ["SSLMethod", "info_nce"]
