"""Backdoor evaluation: the same downstream probes on a clean and an attacked encoder.

For every downstream dataset, each probe in ``EvalConfig.probes`` is trained on the labelled
train features of each encoder. The clean encoder's probe gives **CA** (clean test
accuracy) and **ASR-B** (triggered non-target test images classified as the target); the
attacked encoder's probe gives **BA** and **ASR** (definitions in ``eval.metrics``).

Keys (fractions): ``<dataset>/ca``, ``/ba``, ``/asr``, ``/asr_b`` for the first probe in
``probes`` (BadEncoder's downstream classifier is the MLP), ``<dataset>/ca_<probe>`` etc. for
the others. With several targets on one dataset, ``<dataset>/asr`` is their mean and
``<dataset>/<class>/asr`` each one's.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn as nn

from sslpoison.data.imageset import ImageSet
from sslpoison.eval.downstream import EvalConfig, load_downstream, train_predictor
from sslpoison.eval.features import FeatureCache
from sslpoison.eval.metrics import accuracy, attack_success_rate
from sslpoison.triggers import PatchTrigger

log = logging.getLogger(__name__)


@dataclass
class BackdoorTarget:
    """A target class of a downstream dataset and the trigger that should reach it."""

    dataset: str
    target_class: int
    class_name: str
    trigger: PatchTrigger


def triggered_copy(data: ImageSet, trigger: PatchTrigger, seed: int = 0) -> ImageSet:
    """``data`` with the trigger pasted into every image (seeded placement)."""
    images, _ = trigger.apply(data.images, torch.Generator().manual_seed(seed))
    return data.with_images(images, name=f"{data.name}+trigger")


def evaluate_backdoor(
    clean: nn.Module,
    attacked: nn.Module,
    targets: list[BackdoorTarget],
    cfg: EvalConfig,
    *,
    size: int,
    channels: int,
    cache: FeatureCache,
    seed: int = 0,
) -> dict[str, float]:
    """CA / BA / ASR-B / ASR of every probe on every downstream dataset (see module doc)."""
    by_dataset: dict[str, list[BackdoorTarget]] = defaultdict(list)
    for t in targets:
        by_dataset[t.dataset].append(t)
    metrics: dict[str, float] = {}
    for name in cfg.datasets:
        train, test = load_downstream(name, size, channels, cfg.labelled, cfg.test_subset, seed)
        mine = by_dataset.get(name, [])
        triggered = [triggered_copy(test, t.trigger, seed) for t in mine]
        log.info("backdoor evaluation on %s: %d labelled, %d test", name, len(train), len(test))
        for role, encoder, acc_key, asr_key in (
            ("clean", clean, "ca", "asr_b"),
            ("attacked", attacked, "ba", "asr"),
        ):
            f_train = cache.get(encoder, train)
            y_train = train.labels.to(f_train.device)
            f_test = cache.get(encoder, test)
            f_trig = [cache.get(encoder, t) for t in triggered]
            for i, kind in enumerate(cfg.probes):
                suffix = "" if i == 0 else f"_{kind}"
                predict = train_predictor(kind, f_train, y_train, train.num_classes, cfg, seed)
                metrics[f"{name}/{acc_key}{suffix}"] = accuracy(
                    predict(f_test), test.labels.to(f_test.device)
                )
                rates = []
                for t, f in zip(mine, f_trig, strict=True):
                    rate = attack_success_rate(predict(f), test.labels.to(f.device), t.target_class)
                    rates.append(rate)
                    if len(mine) > 1:
                        metrics[f"{name}/{t.class_name}/{asr_key}{suffix}"] = rate
                if rates:
                    metrics[f"{name}/{asr_key}{suffix}"] = sum(rates) / len(rates)
            log.info(
                "%s encoder on %s: %s",
                role,
                name,
                {k: round(v, 4) for k, v in metrics.items() if k.startswith(f"{name}/")},
            )
    return metrics
