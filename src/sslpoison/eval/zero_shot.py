"""Zero-shot evaluation of a clean and a poisoned CLIP model (Radford et al., ICML 2021;
Carlini & Terzis, ICLR 2022).

Each model classifies a dataset's test images by its class-prompt ensemble
(:func:`sslpoison.ssl.clip.zero_shot_classifier`). Keys — no suffix for the poisoned model,
``_clean`` for the clean one (the base rate the attack is measured against):

- ``<dataset>/zs_acc``: zero-shot accuracy on the clean test images;
- ``<dataset>/zs_asr``: share of triggered non-target test images classified as the target
  (the backdoor; see :func:`sslpoison.eval.metrics.attack_success_rate`);
- ``<dataset>/targeted_success``: share of targeted trials whose test image is classified as
  its adversarial label; ``<dataset>/targeted_success_probe`` the same through the first probe
  of ``eval.probes`` trained on the image tower's features of clean labelled images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn as nn

from sslpoison.attacks.clip_poison import TargetedTrial
from sslpoison.data.imageset import ImageSet
from sslpoison.data.registry import load_fitted
from sslpoison.eval.backdoor import CLEAN, BackdoorTarget, triggered_copy
from sslpoison.eval.downstream import EvalConfig, load_downstream, train_predictor
from sslpoison.eval.features import FeatureCache
from sslpoison.eval.metrics import accuracy, attack_success_rate
from sslpoison.models.text import Tokenizer
from sslpoison.ssl.clip import CLIP, zero_shot_classifier, zero_shot_predict

log = logging.getLogger(__name__)


def zs_key(role: str, dataset: str, metric: str) -> str:
    """``<dataset>/<metric>`` for the poisoned model, ``…_clean`` for the clean one."""
    return f"{dataset}/{metric}" + ("_clean" if role == CLEAN else "")


def evaluate_zero_shot(
    models: dict[str, tuple[CLIP, Tokenizer]],
    targets: Sequence[BackdoorTarget],
    cfg: EvalConfig,
    *,
    size: int,
    channels: int,
    seed: int = 0,
) -> dict[str, float]:
    """``zs_acc`` and (for each dataset with a backdoor target) ``zs_asr`` of every model on
    every dataset of ``cfg.datasets``. ``models`` maps ``"clean"`` / ``"attacked"`` to
    (model, tokenizer)."""
    metrics: dict[str, float] = {}
    for name in cfg.datasets:
        test = load_fitted(name, "test", size, channels, cfg.roots.get(name))
        if cfg.test_subset is not None:  # the probes' test images (see load_downstream)
            test = test.take(cfg.test_subset, seed=seed)
        mine = [t for t in targets if t.dataset == name]
        triggered = [triggered_copy(test, t.trigger, seed) for t in mine]
        for role, (model, tokenizer) in models.items():
            weights = zero_shot_classifier(model, tokenizer, test.classes)
            pred = zero_shot_predict(model, weights, test.images)
            metrics[zs_key(role, name, "zs_acc")] = accuracy(pred, test.labels.cpu())
            rates = [
                attack_success_rate(
                    zero_shot_predict(model, weights, t.images),
                    test.labels.cpu(),
                    target.target_class,
                )
                for target, t in zip(mine, triggered, strict=True)
            ]
            if rates:
                metrics[zs_key(role, name, "zs_asr")] = sum(rates) / len(rates)
            log.info(
                "%s CLIP on %s: zero-shot accuracy %.4f%s",
                role,
                name,
                metrics[zs_key(role, name, "zs_acc")],
                f", ASR {metrics[zs_key(role, name, 'zs_asr')]:.4f}" if rates else "",
            )
    return metrics


def evaluate_targeted(
    models: dict[str, tuple[CLIP, Tokenizer]],
    encoders: dict[str, nn.Module],
    trials: Sequence[TargetedTrial],
    test: ImageSet,
    dataset: str,
    cfg: EvalConfig,
    *,
    cache: FeatureCache,
    seed: int = 0,
) -> tuple[dict[str, float], list[dict]]:
    """Whether each trial's test image (``test.images[trial.index]``) is classified as its
    adversarial label: zero-shot by each model, and by the first probe of ``cfg.probes`` on
    each image tower in ``encoders`` (trained on ``dataset``'s clean labelled images).

    Returns (``targeted_success[_probe][_clean]`` for ``dataset``, one record per trial with
    every prediction).
    """
    index = torch.tensor([t.index for t in trials], dtype=torch.long)
    chosen = test.subset(index)
    wanted = torch.tensor([t.target_class for t in trials])
    records = [
        {"index": t.index, "true_class": t.true_class, "target_class": t.target_class}
        for t in trials
    ]
    metrics: dict[str, float] = {}
    for role, (model, tokenizer) in models.items():
        weights = zero_shot_classifier(model, tokenizer, test.classes)
        pred = zero_shot_predict(model, weights, chosen.images)
        metrics[zs_key(role, dataset, "targeted_success")] = (pred == wanted).float().mean().item()
        for r, p in zip(records, pred.tolist(), strict=True):
            r[f"zero_shot_{role}"] = p
    size, channels = test.image_size, test.channels
    train, _ = load_downstream(
        dataset, size, channels, cfg.labelled, None, seed, cfg.roots.get(dataset)
    )
    kind = cfg.probes[0]
    for role, encoder in encoders.items():
        f_train = cache.get(encoder, train)
        predict = train_predictor(
            kind, f_train, train.labels.to(f_train.device), train.num_classes, cfg, seed
        )
        pred = predict(cache.get(encoder, chosen)).cpu()
        metrics[zs_key(role, dataset, "targeted_success_probe")] = (
            (pred == wanted).float().mean().item()
        )
        for r, p in zip(records, pred.tolist(), strict=True):
            r[f"{kind}_{role}"] = p
    return metrics, records


__all__ = ["evaluate_targeted", "evaluate_zero_shot", "zs_key"]
