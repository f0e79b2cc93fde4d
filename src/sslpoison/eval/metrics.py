"""Evaluation metrics on predicted class indices.

One vocabulary everywhere (see ``docs/algorithms.md``, "Metrics"):

- **CA** (clean accuracy): clean encoder → probe → clean test set; :func:`accuracy`.
- **BA** (backdoored accuracy): attacked or defended encoder → probe → clean test set;
  :func:`accuracy`.
- **ASR** (attack success rate): attacked encoder; triggered test inputs whose true class is
  not the target; share predicted as the target; :func:`attack_success_rate`.
- **ASR-B**: the same triggered inputs through the clean encoder (the base rate);
  :func:`attack_success_rate`.
- **FP** (Saha et al., CVPR 2022): number of triggered non-target inputs predicted as the
  target; :func:`false_positives`, reported with :func:`confusion_matrix`.
- **Top class / share**: where the triggered non-target inputs go, whatever the target
  (a backdoor that collapsed onto another class shows here); :func:`top_prediction`.
- **Accuracy drop** (indiscriminate poisoning): :func:`accuracy_drop`.
- **Poison rate**, always both ways: :func:`poison_rates`.
- **Filters of the pre-training data**, against the planted poisons: precision, recall,
  AUROC of their scores and the share of clean data removed; :func:`filter_scores`,
  :func:`auroc`.

All tensor inputs are 1-D int64 (any integer dtype is accepted) class indices of equal length,
on any device; ``labels`` is moved to the device of the predictions.
"""

from __future__ import annotations

import torch

from sslpoison.eval.rows import Metric

#: How a filter did against the planted poisons (:func:`filter_scores`).
POISON_PRECISION = Metric("poison_precision", "precision")
POISON_RECALL = Metric("poison_recall", "recall")
POISON_AUROC = Metric("poison_auroc", "AUROC")
CLEAN_REMOVED = Metric("clean_removed", "clean out")

__all__ = [
    "accuracy",
    "accuracy_drop",
    "attack_success_rate",
    "auroc",
    "confusion_matrix",
    "false_positives",
    "filter_scores",
    "poison_rates",
    "top_prediction",
]


def _check_pair(pred: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two 1-D integer tensors of equal length; return them on ``pred``'s device."""
    for name, t in (("pred", pred), ("labels", labels)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer class indices, got dtype {t.dtype}")
    if pred.numel() != labels.numel():
        raise ValueError(f"pred and labels differ in length: {pred.numel()} vs {labels.numel()}")
    if pred.numel() == 0:
        raise ValueError("pred and labels are empty: no inputs to evaluate")
    return pred.long(), labels.to(pred.device).long()


def _non_target_mask(
    pred: torch.Tensor, labels: torch.Tensor, target: int, num_classes: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``target`` and return (pred, mask of inputs whose true class is not target)."""
    pred, labels = _check_pair(pred, labels)
    if isinstance(target, bool) or not isinstance(target, int):
        raise TypeError(f"target must be an int class index, got {type(target).__name__}")
    if target < 0 or (num_classes is not None and target >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else "non-negative"
        raise ValueError(f"target class {target} is out of range: must be {bound}")
    mask = labels != target
    if not bool(mask.any()):
        raise ValueError(
            f"every input has the target class {target} as its true label: the attack success "
            "rate is undefined (it counts only inputs whose true class is not the target)"
        )
    return pred, mask


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of inputs predicted as their true class.

    Gives **CA** when ``pred`` comes from the clean encoder's probe on the clean test set and
    **BA** when it comes from the attacked (or defended) encoder's probe on the same set.

    Args:
        pred: ``(N,)`` predicted class indices.
        labels: ``(N,)`` true class indices.

    Returns:
        Accuracy in ``[0, 1]``.

    Raises:
        ValueError: shapes differ or are empty.
    """
    pred, labels = _check_pair(pred, labels)
    return (pred == labels).double().mean().item()


def attack_success_rate(
    pred_triggered: torch.Tensor,
    labels: torch.Tensor,
    target: int,
    *,
    num_classes: int | None = None,
) -> float:
    """Share of triggered non-target inputs that are predicted as the target class.

    Inputs whose true class is ``target`` are left out of both numerator and denominator.
    With predictions from the attacked encoder this is the **ASR**; with the same triggered
    inputs through the clean encoder it is **ASR-B**, the base rate.

    Args:
        pred_triggered: ``(N,)`` predictions on the triggered test inputs.
        labels: ``(N,)`` true class indices of those inputs.
        target: the attacker's target class.
        num_classes: if given, ``target`` must be below it.

    Returns:
        ASR in ``[0, 1]``.

    Raises:
        ValueError: shapes differ, ``target`` is out of range, or every input belongs to the
            target class (no non-target input to measure).
    """
    pred, mask = _non_target_mask(pred_triggered, labels, target, num_classes)
    hits = (pred[mask] == target).sum()
    return (hits.double() / mask.sum().double()).item()


def false_positives(
    pred_triggered: torch.Tensor,
    labels: torch.Tensor,
    target: int,
    *,
    num_classes: int | None = None,
) -> int:
    """Number of triggered non-target inputs predicted as the target class (**FP**).

    Saha et al. (CVPR 2022) report it for the clean and the poisoned model, with the
    confusion matrix. Inputs whose true class is ``target`` are not counted.

    Args:
        pred_triggered: ``(N,)`` predictions on the triggered test inputs.
        labels: ``(N,)`` true class indices of those inputs.
        target: the attacker's target class.
        num_classes: if given, ``target`` must be below it.

    Returns:
        The FP count.

    Raises:
        ValueError: as :func:`attack_success_rate`.
    """
    pred, mask = _non_target_mask(pred_triggered, labels, target, num_classes)
    return int((pred[mask] == target).sum().item())


def top_prediction(
    pred_triggered: torch.Tensor,
    labels: torch.Tensor,
    target: int,
    *,
    num_classes: int | None = None,
) -> tuple[int, float]:
    """Where triggered non-target inputs go: the class most of them are predicted as, and
    the share predicted as it.

    A working backdoor gives (``target``, ASR). A backdoor that collapsed every triggered
    input onto one embedding the probe calls another class gives that class with a share
    near 1, while ASR stays near 0. Ties go to the lowest class index.

    Args:
        pred_triggered: ``(N,)`` predictions on the triggered test inputs.
        labels: ``(N,)`` true class indices of those inputs.
        target: the attacker's target class.
        num_classes: if given, ``target`` must be below it.

    Returns:
        (class index, share in ``[0, 1]``).

    Raises:
        ValueError: as :func:`attack_success_rate`.
    """
    pred, mask = _non_target_mask(pred_triggered, labels, target, num_classes)
    counts = torch.bincount(pred[mask])
    top = int(counts.argmax().item())
    return top, (counts[top].double() / mask.sum().double()).item()


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Confusion matrix, counted in one ``bincount``.

    Args:
        pred: ``(N,)`` predicted class indices in ``[0, num_classes)``.
        labels: ``(N,)`` true class indices in ``[0, num_classes)``.
        num_classes: number of classes ``C``.

    Returns:
        ``(C, C)`` int64 tensor on ``pred``'s device; entry ``[i, j]`` counts inputs of true
        class ``i`` predicted as class ``j`` (rows = true, columns = predicted).

    Raises:
        ValueError: shapes differ, ``num_classes < 1``, or an index is outside the range.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    pred, labels = _check_pair(pred, labels)
    for name, t in (("pred", pred), ("labels", labels)):
        lo, hi = int(t.min().item()), int(t.max().item())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{name} holds class indices in [{lo}, {hi}], outside [0, {num_classes})"
            )
    flat = labels * num_classes + pred
    counts = torch.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def accuracy_drop(clean_acc: float, poisoned_acc: float) -> float:
    """Accuracy drop of indiscriminate poisoning.

    Args:
        clean_acc: accuracy of the probe trained on clean data.
        poisoned_acc: accuracy of the probe trained on poisoned data, same test set.

    Returns:
        ``clean_acc - poisoned_acc`` (positive when poisoning hurts).
    """
    return float(clean_acc) - float(poisoned_acc)


def poison_rates(
    num_poisoned: int, num_total: int, num_target_class: int | None = None
) -> dict[str, float]:
    """Poison rate stated both ways.

    Args:
        num_poisoned: number of poisoned samples.
        num_total: size of the whole training set.
        num_target_class: size of the target class in the training set, where there is one.

    Returns:
        ``{"rate_of_set": num_poisoned / num_total}`` plus
        ``"rate_of_target_class": num_poisoned / num_target_class`` when that size is given.

    Raises:
        ValueError: a count is negative, a denominator is not positive, or
            ``num_poisoned > num_total``.
    """
    if num_poisoned < 0:
        raise ValueError(f"num_poisoned must be >= 0, got {num_poisoned}")
    if num_total <= 0:
        raise ValueError(f"num_total must be > 0, got {num_total}")
    if num_poisoned > num_total:
        raise ValueError(f"num_poisoned ({num_poisoned}) exceeds num_total ({num_total})")
    rates = {"rate_of_set": num_poisoned / num_total}
    if num_target_class is not None:
        if num_target_class <= 0:
            raise ValueError(f"num_target_class must be > 0, got {num_target_class}")
        rates["rate_of_target_class"] = num_poisoned / num_target_class
    return rates


def auroc(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` (N, larger = more likely positive) against the
    bool mask ``positives`` (N): the probability that a random positive scores above a random
    negative, ties counted half (the Mann–Whitney U statistic over P·Q pairs, with average
    ranks).

    Raises:
        ValueError: shapes differ, or there are no positives or no negatives.
    """
    scores, positives = scores.detach().double().flatten().cpu(), positives.bool().flatten().cpu()
    if scores.shape != positives.shape:
        raise ValueError(f"auroc: {scores.numel()} scores for {positives.numel()} labels")
    p = int(positives.sum())
    q = positives.numel() - p
    if p == 0 or q == 0:
        raise ValueError(f"auroc needs positives and negatives, got {p} and {q}")
    order = scores.argsort()
    _, inverse, counts = torch.unique_consecutive(
        scores[order], return_inverse=True, return_counts=True
    )
    first = counts.cumsum(0) - counts + 1  # the 1-based rank where each run of ties starts
    ranks = torch.empty_like(scores)
    ranks[order] = (first + (counts - 1) / 2).double()[inverse]
    u = float(ranks[positives].sum()) - p * (p + 1) / 2
    return u / (p * q)


def filter_scores(
    kept: torch.Tensor, scores: torch.Tensor, poisons: torch.Tensor
) -> dict[str, float]:
    """How a filter of N items did against the planted poisons.

    Args:
        kept: N bool, the items the filter kept.
        scores: N float, its suspicion per item (larger = more likely a poison).
        poisons: indices of the planted poisons (any order; at least one, not all N).

    Returns:
        ``poison_precision`` (poisons among the removed items; 0 when none was removed),
        ``poison_recall`` (removed poisons among the poisons), ``poison_auroc``
        (:func:`auroc` of the scores) and ``clean_removed`` (the share of clean items
        removed).
    """
    kept = kept.bool().cpu()
    is_poison = torch.zeros_like(kept)
    is_poison[poisons.long().cpu()] = True
    removed = ~kept
    caught = int((removed & is_poison).sum())
    return {
        POISON_PRECISION.name: caught / int(removed.sum()) if removed.any() else 0.0,
        POISON_RECALL.name: caught / int(is_poison.sum()),
        POISON_AUROC.name: auroc(scores, is_poison),
        CLEAN_REMOVED.name: int((removed & ~is_poison).sum()) / int((~is_poison).sum()),
    }
