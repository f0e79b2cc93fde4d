"""Data sanitization: countermeasures the victim of a downstream-data attack runs on its
labelled training set, in the encoder's feature space, before training the head
(:class:`~sslpoison.defenses.base.DownstreamDataDefense`).

* ``sphere`` and ``slab`` (Steinhardt, Koh, Liang, NeurIPS 2017): drop the points far from
  their class centroid (sphere), or far from it along the line from the centroid of all
  points to their class centroid (slab). Thresholds: with ``reference`` (a count or share of
  clean held-out labelled images, drawn from the dataset's train split outside the victim's
  labelled set), the centroids and each class's threshold — the ``1 − remove`` quantile of
  the clean held-out points' scores — come from that clean set, so a point is dropped when it
  lies farther out than all but ``remove`` of the clean points of its class (Steinhardt et
  al.'s defender with clean data; any number of poisons can be dropped). Without one (or
  where the scenario has no held-out images), the defender calibrates on the set itself:
  centroids from the set as given, and the ``remove`` share of each class with the largest
  scores dropped.
* ``knn`` (k-NN label sanitization, Paudice, Muñoz-González, Lupu, ECML-PKDD workshops 2018):
  each point's k nearest neighbours (Euclidean, itself excluded) vote; ``mode: relabel`` (the
  paper's) gives a point the neighbours' majority label when at least ``agree`` of them hold
  it; ``mode: drop`` drops a point whose label fewer than ``agree`` of them share.

Features are standardised before any distance: with the training set's own mean and std (what
the defender sees), or, with a clean reference, both with the reference's (so the poisons do
not widen the scale they are judged on).
"""

from __future__ import annotations

import abc
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt

from sslpoison.configbase import CountOrShare
from sslpoison.defenses.base import DownstreamDataDefense, Sanitized
from sslpoison.eval.probes import standardiser


def standardised(features: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``features`` (N×D) and ``others`` standardised with ``features``' own mean and std."""
    mean, std = standardiser(features.float())
    return tuple((f.float() - mean) / std for f in (features, *others))


def class_centroids(
    features: torch.Tensor, labels: torch.Tensor, k: int | None = None
) -> torch.Tensor:
    """The mean feature of each of ``k`` classes (K×D; a class without points: zeros)."""
    k = int(labels.max()) + 1 if k is None else k
    sums = torch.zeros(k, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=k).clamp_min(1).to(features.dtype)
    return sums / counts[:, None]


class _Outliers(DownstreamDataDefense, abc.ABC):
    """Drops points with a large outlier score: the ``remove`` share of each class (no
    ``reference``), or those beyond the ``1 − remove`` quantile of the clean held-out
    reference points of their class."""

    remove: float = Field(0.05, gt=0.0, lt=1.0)
    reference: CountOrShare | None = None

    def reference_count(self) -> int | float | None:
        return self.reference

    @abc.abstractmethod
    def scores(
        self, features: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor,
        centre: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """Outlier score per point (N), larger = farther out, given the class centroids
        (K×D) and the centroid of all points (D)."""

    def sanitize(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Sanitized:
        k = int(labels.max()) + 1
        if reference is None:
            (x,) = standardised(features)
            centroids, centre = class_centroids(x, labels, k), x.mean(0)
            scores = self.scores(x, labels, centroids, centre)
            keep = torch.ones_like(labels, dtype=torch.bool)
            for c in labels.unique():
                members = (labels == c).nonzero().squeeze(1)
                drop = round(self.remove * members.numel())
                if drop:
                    keep[members[scores[members].topk(drop).indices]] = False
            return Sanitized(keep, labels)
        r, x = standardised(reference[0], features)  # the clean statistics
        r_labels = reference[1].to(labels.device)
        k = max(k, int(r_labels.max()) + 1)
        centroids, centre = class_centroids(r, r_labels, k), r.mean(0)
        r_scores = self.scores(r, r_labels, centroids, centre)
        limit = torch.full((k,), float("inf"), device=x.device)
        for c in r_labels.unique():
            limit[c] = torch.quantile(r_scores[r_labels == c], 1 - self.remove)
        return Sanitized(self.scores(x, labels, centroids, centre) <= limit[labels], labels)


class SphereConfig(_Outliers):
    """Sphere defense: score = ‖x − μ_y‖, the distance to the centroid of the point's class."""

    name: Literal["sphere"] = "sphere"
    title: ClassVar[str] = "sphere (Steinhardt et al.)"

    def scores(self, features, labels, centroids, centre) -> torch.Tensor:
        return (features - centroids[labels]).norm(dim=1)


class SlabConfig(_Outliers):
    """Slab defense: score = |⟨x − μ_y, μ_y − μ⟩| / ‖μ_y − μ‖, the distance to the class
    centroid μ_y along the line from the centroid μ of all points (the multi-class form of
    Steinhardt et al.'s line between the two class centroids)."""

    name: Literal["slab"] = "slab"
    title: ClassVar[str] = "slab (Steinhardt et al.)"

    def scores(self, features, labels, centroids, centre) -> torch.Tensor:
        direction = F.normalize(centroids[labels] - centre, dim=1)
        return ((features - centroids[labels]) * direction).sum(1).abs()


class KNNSanitizerConfig(DownstreamDataDefense):
    """k-NN label sanitization (Paudice et al., 2018): the ``k`` nearest neighbours
    (Euclidean, itself excluded) of each point vote. ``relabel`` (the paper's): a point takes
    the most common label among them when at least ``agree`` of them hold it (else it keeps
    its own); ``drop``: a point is dropped when fewer than ``agree`` of them share its label."""

    name: Literal["knn"] = "knn"
    title: ClassVar[str] = "k-NN label sanitization (Paudice et al.)"
    k: PositiveInt = 10
    agree: float = Field(0.5, gt=0.0, le=1.0)
    mode: Literal["relabel", "drop"] = "relabel"

    def relabels(self) -> bool:
        return self.mode == "relabel"

    def sanitize(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Sanitized:
        (x,) = standardised(features)
        k, n = min(self.k, x.shape[0] - 1), x.shape[0]
        classes = int(labels.max()) + 1
        votes = torch.empty(n, classes, dtype=x.dtype, device=x.device)
        for rows in torch.arange(n, device=x.device).split(2048):
            dist = torch.cdist(x[rows], x)
            dist[torch.arange(rows.numel()), rows] = float("inf")  # not its own neighbour
            nearest = dist.topk(k, largest=False).indices
            votes[rows] = F.one_hot(labels[nearest], classes).to(x.dtype).mean(1)
        if self.mode == "drop":
            same = votes.gather(1, labels[:, None]).squeeze(1)
            return Sanitized(same >= self.agree, labels)
        share, majority = votes.max(1)
        return Sanitized(torch.ones_like(labels, dtype=torch.bool),
                         torch.where(share >= self.agree, majority, labels))  # fmt: skip


__all__ = [
    "KNNSanitizerConfig",
    "SlabConfig",
    "SphereConfig",
    "class_centroids",
    "standardised",
]
