"""What the filters of the pre-training data share: the suspect encoder's features of the set
and their k-means clusters, which stand in for classes on unlabelled data (Tran et al. and
Chen et al. work per class; PatchSearch clusters the features itself).
"""

from __future__ import annotations

import abc
import logging
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import PositiveInt

from sslpoison.data.imageset import ImageSet
from sslpoison.defenses.base import FilterContext, PretrainingDataDefense
from sslpoison.eval.features import extract_features
from sslpoison.poisoning import Filtered

log = logging.getLogger(__name__)


def suspect_features(encoder: nn.Module, data: ImageSet, batch_size: int = 1024) -> torch.Tensor:
    """The ``encoder``'s features of every image of ``data`` (N×D float32, on the CPU), in
    eval mode; the encoder is left in the mode it was in."""
    return extract_features(encoder, data.images, batch_size=batch_size).float().cpu()


@torch.no_grad()
def kmeans(
    features: torch.Tensor, k: int, seed: int = 0, iterations: int = 20
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means (cosine) of N×D ``features`` into ``k`` clusters, from a seeded
    k-means++ start (Arthur & Vassilvitskii, 2007): ``iterations`` rounds of assigning each
    point to its nearest centroid and moving each centroid to the normalised mean of its
    points (an emptied cluster keeps its centroid).

    Returns: (assignment N int64, centroids k×D unit rows), on ``features``' device.

    Raises:
        ValueError: ``k`` is not in [1, N].
    """
    n = features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means: {k} clusters for {n} points")
    x = F.normalize(features.float(), dim=1)
    g = torch.Generator().manual_seed(seed)
    first = int(torch.randint(n, (1,), generator=g))
    centroids = [x[first]]
    nearest = (1 - x @ x[first]).clamp_min(0)
    for _ in range(1, k):
        weights = nearest.cpu().double()
        pick = (
            int(torch.multinomial(weights, 1, generator=g))
            if weights.sum() > 0
            else int(torch.randint(n, (1,), generator=g))
        )
        centroids.append(x[pick])
        nearest = torch.minimum(nearest, (1 - x @ x[pick]).clamp_min(0))
    c = torch.stack(centroids)
    assign = torch.zeros(n, dtype=torch.long, device=x.device)
    for _ in range(iterations):
        assign = (x @ c.t()).argmax(1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        filled = torch.bincount(assign, minlength=k) > 0
        c = torch.where(filled[:, None], F.normalize(sums, dim=1), c)
    return (x @ c.t()).argmax(1), c


def cluster_members(assign: torch.Tensor, k: int) -> list[torch.Tensor]:
    """The indices of each of the ``k`` clusters' members (sorted), from an assignment N."""
    order = assign.argsort(stable=True)
    counts = torch.bincount(assign, minlength=k).tolist()
    return list(order.split(counts))


class PerClusterFilter(PretrainingDataDefense, abc.ABC):
    """A filter that works class by class, with ``clusters`` k-means clusters of the suspect's
    features standing in for the classes: :meth:`judge` each cluster's features."""

    clusters: PositiveInt = 10

    #: Clusters with fewer members are kept whole and not judged.
    smallest: ClassVar[int] = 2

    @abc.abstractmethod
    def judge(
        self, features: torch.Tensor, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """One cluster's verdict on its n×D ``features``: (n bool, removed; n scores, larger =
        more suspicious, comparable across clusters; JSON-able facts)."""

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
        facts: list[dict[str, Any] | None] = []
        for members in cluster_members(assign.cpu(), k):
            if members.numel() < self.smallest:
                facts.append(None)
                continue
            removed, score, fact = self.judge(features[members], seed)
            kept[members[removed]] = False
            scores[members] = score.float()
            facts.append({"size": members.numel(), "removed": int(removed.sum()), **fact})
        log.info("%s: %d of %d removed", self.name, int((~kept).sum()), len(data))
        return Filtered(kept, scores, {"clusters": k, "per_cluster": facts})


__all__ = ["PerClusterFilter", "cluster_members", "kmeans", "suspect_features"]
