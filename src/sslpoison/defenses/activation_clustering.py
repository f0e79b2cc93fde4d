"""Activation clustering (Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee, Molloy, Srivastava,
SafeAI@AAAI 2019): poisoned items of a class form a separate, small group in the network's
activations.

Per class — here per k-means cluster of the suspect encoder's features, the pre-training set
having no labels (:func:`~sslpoison.defenses.clusters.kmeans`) — the features are reduced to
``dims`` components (ICA, the paper's; or PCA) and split in two by 2-means; a sub-cluster
holding less than ``size_threshold`` of its cluster is judged poisoned and removed (the
paper's relative-size analysis; 0.35 as in ART's default). Score of an item: 1 − the share of
its cluster that its sub-cluster holds (a small sub-cluster → a high score).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt

from sslpoison.defenses.clusters import PerClusterFilter


def two_means(
    features: torch.Tensor, dims: int, reduce: Literal["ica", "pca"], seed: int = 0
) -> tuple[np.ndarray, float]:
    """Chen et al.'s split of one class's features (n×D): reduced to ``dims`` components, then
    2-means; returns the sub-cluster (0 or 1) of each row and the split's silhouette score
    (on up to 2 000 seeded rows; 0 when a side is empty)."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA, FastICA
    from sklearn.metrics import silhouette_score

    x = features.double().numpy()
    if x.shape[1] > dims and x.shape[0] > dims:
        projector = (
            FastICA(n_components=dims, max_iter=1000, tol=0.005, random_state=seed)
            if reduce == "ica"
            else PCA(n_components=dims, random_state=seed)
        )
        x = projector.fit_transform(x)
    split = KMeans(n_clusters=2, n_init=4, random_state=seed).fit_predict(x)
    if np.unique(split).size < 2:
        return split, 0.0
    sample = min(len(x), 2000)
    return split, float(silhouette_score(x, split, sample_size=sample, random_state=seed))


class ActivationClusteringConfig(PerClusterFilter):
    """The ``defenses:`` entry for activation clustering on ``clusters`` k-means clusters of
    the suspect's features: ``dims`` components (``reduce``: ``ica`` or ``pca``), 2-means, a
    sub-cluster below ``size_threshold`` of its cluster removed when the split's silhouette
    score reaches ``silhouette`` (None: by size alone)."""

    name: Literal["activation_clustering"] = "activation_clustering"
    title: ClassVar[str] = "activation clustering (Chen et al.)"
    dims: PositiveInt = 10
    reduce: Literal["ica", "pca"] = "ica"
    size_threshold: float = Field(0.35, gt=0.0, lt=1.0)
    silhouette: float | None = Field(0.1, ge=-1.0, le=1.0)

    smallest: ClassVar[int] = 4

    def judge(
        self, features: torch.Tensor, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        split, silhouette = two_means(features, self.dims, self.reduce, seed)
        split = torch.from_numpy(split).long()
        share = torch.bincount(split, minlength=2).float() / features.shape[0]
        facts = {"smaller_share": round(float(share.min()), 4), "silhouette": round(silhouette, 4)}
        if self.silhouette is not None and silhouette < self.silhouette:  # no real split
            return torch.zeros(len(split), dtype=torch.bool), torch.zeros(len(split)), facts
        return share[split] < self.size_threshold, 1 - share[split], facts


__all__ = ["ActivationClusteringConfig", "two_means"]
