"""Downstream evaluation of a frozen encoder: probes and k-NN on cached features.

For each downstream dataset, ``labelled`` images of its train split train the probes and its
test split measures them. Metric keys are flat: ``<dataset>/<probe>_acc`` for the encoder and
``<dataset>/<probe>_acc_<baseline>`` for the baselines measured in the same run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field, PositiveInt

from sslpoison.configbase import Config, CountOrShare
from sslpoison.data.imageset import ImageSet
from sslpoison.data.registry import load_fitted
from sslpoison.eval.features import FeatureCache
from sslpoison.eval.knn import knn_predict
from sslpoison.eval.metrics import accuracy
from sslpoison.eval.probes import ProbeConfig, train_probe

log = logging.getLogger(__name__)

ProbeKind = Literal["linear", "mlp", "knn"]


class KNNConfig(Config):
    """Weighted cosine k-NN (Wu et al., 2018): k neighbours, weights exp(sim / temperature)."""

    k: PositiveInt = 200
    temperature: float = Field(0.1, gt=0)


class EvalConfig(Config):
    """Downstream evaluation on frozen features.

    ``labelled`` images (a count, or a share) of each dataset's train split train the probes;
    each dataset's test split (or ``test_subset`` of it) measures them. ``baselines`` are
    measured in the same run: the same architecture untrained (``random_init``) and the
    probe on raw pixels (``pixels``). ``roots`` names the folder of a dataset that is not
    in the usual places (e.g. ``imagefolder``); the pre-training ``data.root`` is used for
    the pre-training dataset unless given here.
    """

    datasets: list[str] = Field(default_factory=lambda: ["fashion-mnist"], min_length=1)
    labelled: CountOrShare = 10000
    test_subset: PositiveInt | None = None
    probes: list[ProbeKind] = Field(default_factory=lambda: ["linear", "knn"], min_length=1)
    baselines: list[Literal["random_init", "pixels"]] = Field(
        default_factory=lambda: ["random_init", "pixels"]
    )
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    knn: KNNConfig = Field(default_factory=KNNConfig)
    roots: dict[str, str] = Field(default_factory=dict)


def load_downstream(
    name: str,
    size: int,
    channels: int,
    labelled: int | float,
    test_subset: int | None = None,
    seed: int = 0,
    root: str | None = None,
) -> tuple[ImageSet, ImageSet]:
    """A downstream dataset's labelled train subset and test set, fitted to the encoder's
    input (``size``×``size``, ``channels``)."""
    train = load_fitted(name, "train", size, channels, root)
    test = load_fitted(name, "test", size, channels, root)
    train = train.take(labelled, seed=seed)
    if test_subset is not None:
        test = test.take(test_subset, seed=seed)
    return train, test


def train_predictor(
    kind: ProbeKind,
    f_train: torch.Tensor,
    y_train: torch.Tensor,
    num_classes: int,
    cfg: EvalConfig,
    seed: int = 0,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A classifier of features (N×D → N class indices) trained on the train features."""
    if kind == "knn":
        return lambda f: knn_predict(
            f_train, y_train, f, num_classes, k=cfg.knn.k, temperature=cfg.knn.temperature
        )
    return train_probe(f_train, y_train, num_classes, kind, cfg.probe, seed=seed).predict


def probe_accuracy(
    kind: ProbeKind,
    f_train: torch.Tensor,
    y_train: torch.Tensor,
    f_test: torch.Tensor,
    y_test: torch.Tensor,
    num_classes: int,
    cfg: EvalConfig,
    seed: int = 0,
) -> float:
    """Accuracy on the test features of one probe trained on the train features."""
    predict = train_predictor(kind, f_train, y_train, num_classes, cfg, seed)
    return accuracy(predict(f_test), y_test)


def evaluate_features(
    prefix: str,
    suffix: str,
    f_train: torch.Tensor,
    train: ImageSet,
    f_test: torch.Tensor,
    test: ImageSet,
    cfg: EvalConfig,
    seed: int = 0,
) -> dict[str, float]:
    """``{prefix/<probe>_acc<suffix>: accuracy}`` for every probe in ``cfg.probes``."""
    y_train, y_test = train.labels.to(f_train.device), test.labels.to(f_test.device)
    return {
        f"{prefix}/{kind}_acc{suffix}": probe_accuracy(
            kind, f_train, y_train, f_test, y_test, train.num_classes, cfg, seed
        )
        for kind in cfg.probes
    }


def evaluate_encoder(
    encoder: nn.Module,
    cfg: EvalConfig,
    *,
    size: int,
    channels: int,
    cache: FeatureCache,
    random_init: nn.Module | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Probe accuracies of ``encoder`` (and of the baselines) on every downstream dataset."""
    metrics: dict[str, float] = {}
    for name in cfg.datasets:
        train, test = load_downstream(
            name, size, channels, cfg.labelled, cfg.test_subset, seed, cfg.roots.get(name)
        )
        log.info("evaluate on %s: %d labelled, %d test images", name, len(train), len(test))
        pairs: list[tuple[str, torch.Tensor, torch.Tensor]] = [
            ("", cache.get(encoder, train), cache.get(encoder, test))
        ]
        if "random_init" in cfg.baselines:
            if random_init is None:
                raise ValueError("evaluate_encoder: the random_init baseline needs a module")
            pairs.append(
                ("_random_init", cache.get(random_init, train), cache.get(random_init, test))
            )
        if "pixels" in cfg.baselines:
            pairs.append(
                (
                    "_pixels",
                    train.images.flatten(1).float() / 255,
                    test.images.flatten(1).float() / 255,
                )
            )
        for suffix, f_train, f_test in pairs:
            metrics.update(evaluate_features(name, suffix, f_train, train, f_test, test, cfg, seed))
    return metrics
