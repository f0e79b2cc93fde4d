"""Weighted cosine k-nearest-neighbour classifier on frozen features.

The standard self-supervised kNN monitor (Wu et al., "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination", CVPR 2018): features are L2-normalised, each test
point takes its ``k`` most cosine-similar training points, each neighbour votes for its class
with weight ``exp(sim / temperature)``, and the class with the largest summed weight wins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["knn_predict"]


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> torch.Tensor:
    """Predict classes by temperature-weighted cosine k-NN voting.

    Similarities are computed in float32 (at least) over chunks of ``chunk`` test rows, so
    memory stays ``O(chunk * N_train)``. The weights of a row are computed as
    ``exp((sim - max_sim) / temperature)``: a per-row factor that leaves the vote unchanged and
    keeps small temperatures from overflowing. Ties between classes go to the lowest index.

    Args:
        train_features: ``(N, D)`` training (memory bank) features.
        train_labels: ``(N,)`` integer labels in ``[0, num_classes)``.
        test_features: ``(M, D)`` query features.
        num_classes: number of classes ``C``.
        k: neighbours per query; clipped to ``N``.
        temperature: softness of the vote weights (> 0).
        chunk: test rows per similarity block (>= 1); does not change the result.

    Returns:
        ``(M,)`` int64 predicted class indices on ``train_features``' device.

    Raises:
        ValueError: bad shapes, empty training set, labels outside the range, or
            non-positive ``k``, ``temperature``, ``chunk`` or ``num_classes``.
    """
    if train_features.dim() != 2 or test_features.dim() != 2:
        raise ValueError(
            "train_features and test_features must be 2-D (N, D), got shapes "
            f"{tuple(train_features.shape)} and {tuple(test_features.shape)}"
        )
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            "feature dimensions differ: train "
            f"{train_features.shape[1]} vs test {test_features.shape[1]}"
        )
    n_train = train_features.shape[0]
    if n_train == 0:
        raise ValueError("train_features is empty: no neighbours to vote")
    if train_labels.dim() != 1 or train_labels.numel() != n_train:
        raise ValueError(
            f"train_labels must have shape ({n_train},), got {tuple(train_labels.shape)}"
        )
    if train_labels.is_floating_point() or train_labels.dtype == torch.bool:
        raise TypeError(f"train_labels must hold integer classes, got dtype {train_labels.dtype}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")

    device = train_features.device
    labels = train_labels.to(device).long()
    lo, hi = int(labels.min().item()), int(labels.max().item())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"train_labels holds classes in [{lo}, {hi}], outside [0, {num_classes})")

    dtype = torch.promote_types(train_features.dtype, torch.float32)
    bank = F.normalize(train_features.to(dtype), dim=1)
    queries = test_features.to(device=device, dtype=dtype)
    k = min(k, n_train)

    preds = []
    for start in range(0, queries.shape[0], chunk):
        q = F.normalize(queries[start : start + chunk], dim=1)
        sims = q @ bank.T  # (m, N)
        top_sims, top_idx = sims.topk(k, dim=1)  # (m, k), sorted descending
        weights = torch.exp((top_sims - top_sims[:, :1]) / temperature)
        votes = torch.zeros(q.shape[0], num_classes, device=device, dtype=dtype)
        votes.scatter_add_(1, labels[top_idx], weights)  # (m, C)
        preds.append(votes.argmax(dim=1))
    if not preds:
        return torch.empty(0, dtype=torch.long, device=device)
    return torch.cat(preds)
