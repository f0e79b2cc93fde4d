"""Data sanitization: countermeasures the victim of a downstream-data attack runs on its
labelled training set, in the encoder's feature space, before training the head.

* ``sphere`` and ``slab`` (Steinhardt, Koh, Liang, NeurIPS 2017): drop the points farthest
  from their class centroid (sphere), or farthest from it along the line from the centroid of
  all points to their class centroid (slab);
* ``knn`` (k-NN label sanitization, Paudice et al., 2018): drop the points whose label most
  of their k nearest neighbours do not share.

The defender does not know which points are poisons: centroids and neighbours come from the
set as given. Each sanitizer is a frozen config with ``keep(features, labels) -> mask``;
:data:`SANITIZERS` lists them by ``name``.
"""

from __future__ import annotations

import abc
from typing import Annotated, Literal, Union

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt

from sslpoison.configbase import Config


class SanitizerConfig(Config, abc.ABC):
    """Base of every countermeasure; a subclass adds ``name: Literal[...]``."""

    @abc.abstractmethod
    def keep(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Which points survive: a bool mask N over standardised N×D ``features`` (labels N)."""


class _Outliers(SanitizerConfig, abc.ABC):
    """Drops the ``remove`` share of each class with the largest outlier score."""

    remove: float = Field(0.05, gt=0.0, lt=1.0)

    @abc.abstractmethod
    def scores(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Outlier score per point (N), larger = farther out."""

    def keep(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        scores = self.scores(features, labels)
        keep = torch.ones_like(labels, dtype=torch.bool)
        for c in labels.unique():
            members = (labels == c).nonzero().squeeze(1)
            drop = round(self.remove * members.numel())
            if drop:
                keep[members[scores[members].topk(drop).indices]] = False
        return keep


def class_centroids(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean feature of each point's class, per point (N×D)."""
    k = int(labels.max()) + 1
    sums = torch.zeros(k, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=k).clamp_min(1).to(features.dtype)
    return (sums / counts[:, None])[labels]


class SphereConfig(_Outliers):
    """Sphere defense: score = ‖x − μ_y‖, the distance to the centroid of the point's class."""

    name: Literal["sphere"] = "sphere"

    def scores(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (features - class_centroids(features, labels)).norm(dim=1)


class SlabConfig(_Outliers):
    """Slab defense: score = |⟨x − μ_y, μ_y − μ⟩| / ‖μ_y − μ‖, the distance to the class
    centroid μ_y along the line from the centroid μ of all points (the multi-class form of
    Steinhardt et al.'s line between the two class centroids)."""

    name: Literal["slab"] = "slab"

    def scores(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        centroid = class_centroids(features, labels)
        direction = F.normalize(centroid - features.mean(0), dim=1)
        return ((features - centroid) * direction).sum(1).abs()


class KNNSanitizerConfig(SanitizerConfig):
    """k-NN label sanitization: drop a point when fewer than ``agree`` of its ``k`` nearest
    neighbours (Euclidean, itself excluded) share its label."""

    name: Literal["knn"] = "knn"
    k: PositiveInt = 10
    agree: float = Field(0.5, gt=0.0, le=1.0)

    def keep(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        k = min(self.k, features.shape[0] - 1)
        same = torch.empty(features.shape[0], dtype=features.dtype, device=features.device)
        for rows in torch.arange(features.shape[0], device=features.device).split(2048):
            dist = torch.cdist(features[rows], features)
            dist[torch.arange(rows.numel()), rows] = float("inf")  # not its own neighbour
            nearest = dist.topk(k, largest=False).indices
            same[rows] = (labels[nearest] == labels[rows, None]).to(features.dtype).mean(1)
        return same >= self.agree


#: Every countermeasure by its ``name``.
SANITIZERS: dict[str, type[SanitizerConfig]] = {
    "sphere": SphereConfig,
    "slab": SlabConfig,
    "knn": KNNSanitizerConfig,
}

#: The type of a ``countermeasures:`` entry: one of :data:`SANITIZERS`, by ``name``.
SanitizerSpec = Annotated[Union[tuple(SANITIZERS.values())], Field(discriminator="name")]  # noqa: UP007

__all__ = [
    "SANITIZERS",
    "KNNSanitizerConfig",
    "SanitizerConfig",
    "SanitizerSpec",
    "SlabConfig",
    "SphereConfig",
    "class_centroids",
]
