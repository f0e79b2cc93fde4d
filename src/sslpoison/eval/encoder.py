"""Downstream evaluation of one frozen encoder (no attack): probes and k-NN on cached
features, next to the baselines measured in the same run.

For each downstream dataset, the probes of ``EvalConfig.probes`` train on the labelled train
features and are measured on the test features. Keys (:func:`probe_key`):
``<dataset>/<probe>_acc`` for the encoder, ``<dataset>/<probe>_acc_<baseline>`` for the
baselines (``random_init``: the architecture untrained; ``pixels``: the raw images) and,
alike, ``<dataset>/<probe>_acc_<defense>`` for an encoder pre-trained again on what a
pre-training-data defense kept of the clean set.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from sslpoison.eval.backdoor import ACC
from sslpoison.eval.downstream import Downstream, EvalConfig, train_predictor
from sslpoison.eval.features import FeatureCache
from sslpoison.eval.metrics import accuracy
from sslpoison.eval.rows import CLEAN, Row

log = logging.getLogger(__name__)


def probe_key(dataset: str, probe: str, encoder: str = CLEAN) -> str:
    """``<dataset>/<probe>_acc`` for the evaluated encoder, ``…_<encoder>`` for a baseline."""
    return f"{dataset}/{probe}_acc" + ("" if encoder == CLEAN else f"_{encoder}")


def evaluate_encoder(
    encoder: nn.Module,
    downstream: Downstream,
    cfg: EvalConfig,
    *,
    cache: FeatureCache,
    random_init: nn.Module | None = None,
    seed: int = 0,
    role: str = CLEAN,
) -> list[Row]:
    """Probe accuracies of ``encoder`` (as ``role``: ``clean``, with ``cfg.baselines`` next
    to it; any other role alone, keyed like a baseline) on every dataset of ``downstream``."""
    rows: list[Row] = []
    for name in downstream.datasets:
        train, test = downstream.train(name), downstream.test(name)
        log.info("evaluate on %s: %d labelled, %d test images", name, len(train), len(test))
        pairs: list[tuple[str, torch.Tensor, torch.Tensor]] = [
            (role, cache.get(encoder, train), cache.get(encoder, test))
        ]
        baselines = cfg.baselines if role == CLEAN else []
        if "random_init" in baselines:
            if random_init is None:
                raise ValueError("evaluate_encoder: the random_init baseline needs a module")
            pairs.append(
                ("random_init", cache.get(random_init, train), cache.get(random_init, test))
            )
        if "pixels" in baselines:
            pixels = (train.images.flatten(1).float() / 255, test.images.flatten(1).float() / 255)
            pairs.append(("pixels", *pixels))
        for who, f_train, f_test in pairs:
            y_train, y_test = train.labels.to(f_train.device), test.labels.to(f_test.device)
            for kind in cfg.probes:
                predict = train_predictor(kind, f_train, y_train, train.num_classes, cfg, seed)
                value = accuracy(predict(f_test), y_test)
                rows.append(Row(name, who, kind, ACC.name, value, probe_key(name, kind, who)))
    return rows


__all__ = ["evaluate_encoder", "probe_key"]
