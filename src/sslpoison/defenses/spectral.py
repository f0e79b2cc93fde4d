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

import logging
import math
from typing import ClassVar, Literal

import torch
import torch.nn as nn
from pydantic import Field, PositiveInt

from sslpoison.data.imageset import ImageSet
from sslpoison.defenses.base import FilterContext, PretrainingDataDefense
from sslpoison.defenses.clusters import cluster_members, kmeans, suspect_features
from sslpoison.poisoning import Filtered

log = logging.getLogger(__name__)


def spectral_scores(features: torch.Tensor) -> torch.Tensor:
    """Tran et al.'s outlier score of each row of ``features`` (n×D): the squared projection
    of the centred row on the top right singular vector of the centred matrix (n)."""
    centred = features.double() - features.double().mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ vh[0]).pow(2)


class SpectralSignaturesConfig(PretrainingDataDefense):
    """The ``defenses:`` entry for spectral signatures on ``clusters`` k-means clusters of the
    suspect's features; ``expected``: the share of each cluster expected to be poisoned,
    ``multiplier``: how many times that share is removed (Tran et al.: 1.5)."""

    name: Literal["spectral"] = "spectral"
    title: ClassVar[str] = "spectral signatures (Tran et al.)"
    clusters: PositiveInt = 10
    expected: float = Field(0.05, gt=0.0, le=1.0)
    multiplier: float = Field(1.5, gt=0.0)

    def filter(
        self,
        data: ImageSet,
        suspect: nn.Module,
        seed: int = 0,
        *,
        context: FilterContext | None = None,
    ) -> Filtered:
        features = suspect_features(suspect, data)
        k = min(self.clusters, len(data))
        assign, _ = kmeans(features, k, seed)
        kept = torch.ones(len(data), dtype=torch.bool)
        scores = torch.zeros(len(data))
        removed_per_cluster = []
        for members in cluster_members(assign.cpu(), k):
            if members.numel() < 2:
                removed_per_cluster.append(0)
                continue
            s = spectral_scores(features[members])
            scores[members] = (s / s.mean().clamp_min(1e-12)).float()
            expected = self.multiplier * self.expected * members.numel()
            drop = min(members.numel(), math.ceil(expected - 1e-9))  # 1.5 × 0.1 × 100 is 15
            kept[members[s.topk(drop).indices]] = False
            removed_per_cluster.append(drop)
        log.info("spectral signatures: %d of %d removed", int((~kept).sum()), len(data))
        sizes = torch.bincount(assign.cpu(), minlength=k).tolist()
        record = {"clusters": k, "cluster_sizes": sizes, "removed_per_cluster": removed_per_cluster}
        return Filtered(kept, scores, record)


__all__ = ["SpectralSignaturesConfig", "spectral_scores"]
