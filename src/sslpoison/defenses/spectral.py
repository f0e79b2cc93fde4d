"""Spectral signatures (Tran, Li, Madry, NeurIPS 2018): a backdoor leaves a trace along the top
singular vector of the centred representations of its class.

Per class — here per k-means cluster of the suspect encoder's features, the pre-training set
having no labels (:func:`~sslpoison.defenses.clusters.kmeans`) — the features R (n×D) are
centred, v is the top right singular vector of R − R̄, and each item's score is its squared
projection ⟨R_i − R̄, v⟩². The ``multiplier`` × ``expected`` × n items of the cluster with the
largest scores are removed (the paper: 1.5 × the expected number of poisons). For ranking
across clusters (AUROC) each score is divided by its cluster's mean score.

(ART's ``SpectralSignatureDefense`` projects the uncentred features and does not square; on
centred features the two rank alike: see the test that checks ours against it.)
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from sslpoison.defenses.clusters import PerClusterFilter


def spectral_scores(features: torch.Tensor) -> torch.Tensor:
    """Tran et al.'s outlier score of each row of ``features`` (n×D): the squared projection
    of the centred row on the top right singular vector of the centred matrix (n)."""
    centred = features.double() - features.double().mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ vh[0]).pow(2)


class SpectralSignaturesConfig(PerClusterFilter):
    """The ``defenses:`` entry for spectral signatures on ``clusters`` k-means clusters of the
    suspect's features; ``expected``: the share of each cluster expected to be poisoned,
    ``multiplier``: how many times that share is removed (Tran et al.: 1.5)."""

    name: Literal["spectral"] = "spectral"
    title: ClassVar[str] = "spectral signatures (Tran et al.)"
    expected: float = Field(0.05, gt=0.0, le=1.0)
    multiplier: float = Field(1.5, gt=0.0)

    def judge(
        self, features: torch.Tensor, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        s = spectral_scores(features)
        n = features.shape[0]
        drop = min(n, math.ceil(self.multiplier * self.expected * n - 1e-9))  # 1.5 × 0.1 × 100
        removed = torch.zeros(n, dtype=torch.bool)
        removed[s.topk(drop).indices] = True
        return removed, s / s.mean().clamp_min(1e-12), {}


__all__ = ["SpectralSignaturesConfig", "spectral_scores"]
