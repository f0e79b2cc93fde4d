"""Evaluation: feature extraction and cache, probes, kNN, metrics."""

from sslpoison.eval.knn import knn_predict
from sslpoison.eval.metrics import (
    accuracy,
    accuracy_drop,
    attack_success_rate,
    confusion_matrix,
    false_positives,
    poison_rates,
)

__all__ = [
    "accuracy",
    "accuracy_drop",
    "attack_success_rate",
    "confusion_matrix",
    "false_positives",
    "knn_predict",
    "poison_rates",
]
