"""Zero-shot evaluation of a clean and a poisoned CLIP model (Radford et al., ICML 2021;
Carlini & Terzis, ICLR 2022).

Each model classifies a dataset's test images by its class-prompt ensemble
(:func:`sslpoison.ssl.clip.zero_shot_classifier`). Keys — no suffix for the poisoned model,
``_clean`` for the clean one (the base rate the attack is measured against), and
``<defense>/<dataset>/…`` for a model a pre-training-data defense trained:

- ``<dataset>/zs_acc``: zero-shot accuracy on the clean test images;
- ``<dataset>/zs_asr``: share of triggered non-target test images classified as the target
  (the backdoor; see :func:`sslpoison.eval.metrics.attack_success_rate`);
- ``<dataset>/zs_asr_other_trigger``: the same, mean over ``other_triggers`` unseen noise
  patterns of the trigger's size and placement (the backdoor's null control);
- ``<dataset>/targeted_success``: share of targeted trials whose test image is classified as
  its adversarial label; ``<dataset>/targeted_success_probe`` the same through the first probe
  of ``eval.probes`` trained on the image tower's features of clean labelled images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn as nn

from sslpoison.eval.backdoor import other_triggered, triggered_copy
from sslpoison.eval.downstream import Downstream, EvalConfig, train_predictor
from sslpoison.eval.features import FeatureCache
from sslpoison.eval.metrics import accuracy, attack_success_rate
from sslpoison.eval.rows import ATTACKED, CLEAN, Metric, Row
from sslpoison.models.text import Tokenizer
from sslpoison.poisoning import BackdoorTarget, TargetedTrial
from sslpoison.ssl.clip import CLIP, zero_shot_classifier, zero_shot_predict

log = logging.getLogger(__name__)

#: The ``probe`` of a zero-shot row: the model's own prompt classifier.
ZERO_SHOT = "zero_shot"
ZS_ACC = Metric("zs_acc", "zero-shot acc.", about="by the CLIP model's own prompt classifier")
ZS_ASR = Metric("zs_asr", "zero-shot ASR")
ZS_ASR_OTHER_TRIGGER = Metric("zs_asr_other_trigger", "zero-shot ASR other")
#: The share of targeted trials flipped (zero-shot, or by a probe: ``Row.probe`` says which).
TARGETED_SUCCESS = Metric(
    "targeted_success", "targeted success", about="the share of targeted trials flipped"
)
#: The zero-shot numbers of each model, in the order tables show them.
ZERO_SHOT_METRICS = (ZS_ACC, ZS_ASR, ZS_ASR_OTHER_TRIGGER)


def zs_key(role: str, dataset: str, metric: str) -> str:
    """``<dataset>/<metric>`` for the poisoned model, ``…_clean`` for the clean one,
    ``<role>/<dataset>/<metric>`` for a model a defense trained (e.g. ``safeclip``)."""
    if role not in (CLEAN, ATTACKED):
        return f"{role}/{dataset}/{metric}"
    return f"{dataset}/{metric}" + ("_clean" if role == CLEAN else "")


def evaluate_zero_shot(
    models: dict[str, tuple[CLIP, Tokenizer]],
    targets: Sequence[BackdoorTarget],
    downstream: Downstream,
    *,
    seed: int = 0,
    other_triggers: int = 0,
) -> list[Row]:
    """``zs_acc`` and (for each dataset with a backdoor target) ``zs_asr`` — and with
    ``other_triggers`` its null control ``zs_asr_other_trigger`` — of every model on every
    dataset of ``downstream`` (its test sets, as the probes'). ``models`` maps ``"clean"`` /
    ``"attacked"`` / a defense's name to (model, tokenizer)."""
    rows: list[Row] = []
    for name in downstream.datasets:
        test = downstream.test(name)
        mine = [t for t in targets if t.dataset == name]
        triggered = [triggered_copy(test, t.trigger, seed) for t in mine]
        others = [other_triggered(test, t.trigger, other_triggers, seed) for t in mine]
        for role, (model, tokenizer) in models.items():
            weights = zero_shot_classifier(model, tokenizer, test.classes)
            pred = zero_shot_predict(model, weights, test.images)
            acc = accuracy(pred, test.labels.cpu())
            key = zs_key(role, name, ZS_ACC.name)
            rows.append(Row(name, role, ZERO_SHOT, ZS_ACC.name, acc, key))
            rates = [
                attack_success_rate(
                    zero_shot_predict(model, weights, t.images),
                    test.labels.cpu(),
                    target.target_class,
                )
                for target, t in zip(mine, triggered, strict=True)
            ]
            asr = sum(rates) / len(rates) if rates else None
            if asr is not None:
                key = zs_key(role, name, ZS_ASR.name)
                rows.append(Row(name, role, ZERO_SHOT, ZS_ASR.name, asr, key))
            other = []
            for t, sets in zip(mine, others, strict=True):
                if sets:
                    preds = [zero_shot_predict(model, weights, o.images) for o in sets]
                    labels = test.labels.cpu()
                    rates_o = [attack_success_rate(p, labels, t.target_class) for p in preds]
                    other.append(sum(rates_o) / len(rates_o))
            if other:
                metric = ZS_ASR_OTHER_TRIGGER.name
                value = sum(other) / len(other)
                rows.append(Row(name, role, ZERO_SHOT, metric, value, zs_key(role, name, metric)))
            log.info(
                "%s CLIP on %s: zero-shot accuracy %.4f%s",
                role,
                name,
                acc,
                f", ASR {asr:.4f}" if asr is not None else "",
            )
    return rows


def evaluate_targeted(
    models: dict[str, tuple[CLIP, Tokenizer]],
    encoders: dict[str, nn.Module],
    trials: Sequence[TargetedTrial],
    dataset: str,
    downstream: Downstream,
    cfg: EvalConfig,
    *,
    cache: FeatureCache,
    seed: int = 0,
) -> tuple[list[Row], list[dict]]:
    """Whether each trial's test image (of ``dataset``'s whole test split) is classified as
    its adversarial label: zero-shot by each model, and by the first probe of ``cfg.probes``
    on each image tower in ``encoders`` (trained on ``dataset``'s clean labelled images).

    Returns (``targeted_success[_probe][_clean]`` rows for ``dataset``, one record per trial
    with every prediction).
    """
    test = downstream.split(dataset, "test")
    index = torch.tensor([t.index for t in trials], dtype=torch.long)
    chosen = test.subset(index)
    wanted = torch.tensor([t.target_class for t in trials])
    records = [
        {"index": t.index, "true_class": t.true_class, "target_class": t.target_class}
        for t in trials
    ]
    rows: list[Row] = []
    for role, (model, tokenizer) in models.items():
        weights = zero_shot_classifier(model, tokenizer, test.classes)
        pred = zero_shot_predict(model, weights, chosen.images)
        share = (pred == wanted).float().mean().item()
        key = zs_key(role, dataset, TARGETED_SUCCESS.name)
        rows.append(Row(dataset, role, ZERO_SHOT, TARGETED_SUCCESS.name, share, key))
        for r, p in zip(records, pred.tolist(), strict=True):
            r[f"zero_shot_{role}"] = p
    train = downstream.train(dataset)
    kind = cfg.probes[0]
    for role, encoder in encoders.items():
        f_train = cache.get(encoder, train)
        predict = train_predictor(
            kind, f_train, train.labels.to(f_train.device), train.num_classes, cfg, seed
        )
        pred = predict(cache.get(encoder, chosen)).cpu()
        share = (pred == wanted).float().mean().item()
        key = zs_key(role, dataset, f"{TARGETED_SUCCESS.name}_probe")
        rows.append(Row(dataset, role, kind, TARGETED_SUCCESS.name, share, key))
        for r, p in zip(records, pred.tolist(), strict=True):
            r[f"{kind}_{role}"] = p
    return rows, records


__all__ = [
    "TARGETED_SUCCESS",
    "ZERO_SHOT",
    "ZERO_SHOT_METRICS",
    "ZS_ACC",
    "ZS_ASR",
    "ZS_ASR_OTHER_TRIGGER",
    "evaluate_targeted",
    "evaluate_zero_shot",
    "zs_key",
]
