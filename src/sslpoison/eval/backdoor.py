"""Backdoor evaluation: the same downstream probes on a clean, an attacked and any defended
encoder.

For every downstream dataset, each probe in ``EvalConfig.probes`` is trained on the labelled
train features of each encoder. The clean encoder's probe gives **CA** (clean test
accuracy) and **ASR-B** (triggered non-target test images classified as the target); the
attacked encoder's probe gives **BA** and **ASR**; a defended encoder's gives its own BA and
ASR (definitions in ``eval.metrics``). With ``count_fp`` (targeted poisoning, Saha et al.)
the number of those triggered images called the target, **FP**, is reported too.

Keys, for the first probe in ``probes`` (BadEncoder's downstream classifier is the MLP; the
others get a ``_<probe>`` suffix):

- clean encoder: ``<dataset>/ca``, ``<dataset>/asr_b``, ``<dataset>/fp_clean``;
- attacked encoder: ``<dataset>/ba``, ``<dataset>/asr``, ``<dataset>/fp_poisoned``;
- defended encoder ``d``: ``d/<dataset>/ba``, ``d/<dataset>/asr``, ``d/<dataset>/fp``.

With several targets on one dataset, ASR is their mean and ``<dataset>/<class>/asr`` each
one's (FP is summed). Confusion matrices (first probe; rows = true class) come back for the
clean test set and for every target's triggered test set.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import torch
import torch.nn as nn

from sslpoison.data.imageset import ImageSet
from sslpoison.eval.downstream import Downstream, EvalConfig, train_predictor
from sslpoison.eval.features import FeatureCache
from sslpoison.eval.metrics import (
    accuracy,
    attack_success_rate,
    confusion_matrix,
    false_positives,
)
from sslpoison.eval.rows import ATTACKED, CLEAN, Evaluation, Row
from sslpoison.poisoning import BackdoorTarget
from sslpoison.triggers import PatchTrigger

log = logging.getLogger(__name__)


def metric_key(encoder: str, dataset: str, metric: str, target: str | None = None) -> str:
    """The flat key of ``metric`` ('acc', 'asr' or 'fp') of one encoder on one dataset (and
    one of its targets, when several share the dataset)."""
    if target is not None:
        dataset = f"{dataset}/{target}"
    names = {
        CLEAN: {"acc": "ca", "asr": "asr_b", "fp": "fp_clean"},
        ATTACKED: {"acc": "ba", "asr": "asr", "fp": "fp_poisoned"},
    }
    if encoder in names:
        return f"{dataset}/{names[encoder][metric]}"
    return f"{encoder}/{dataset}/{'ba' if metric == 'acc' else metric}"


def backdoor_row(
    encoder: str,
    dataset: str,
    probe: str,
    metric: str,
    value: float | int,
    suffix: str = "",
    target: str | None = None,
) -> Row:
    """A row of the backdoor evaluation, under :func:`metric_key` + the probe's ``suffix``."""
    key = metric_key(encoder, dataset, metric, target) + suffix
    return Row(dataset, encoder, probe, metric, value, key, target)


def triggered_copy(data: ImageSet, trigger: PatchTrigger, seed: int = 0) -> ImageSet:
    """``data`` with the trigger pasted into every image (seeded placement)."""
    images, _ = trigger.apply(data.images, torch.Generator().manual_seed(seed))
    return data.with_images(images, name=f"{data.name}+trigger")


def evaluate_backdoor(
    encoders: dict[str, nn.Module],
    targets: list[BackdoorTarget],
    downstream: Downstream,
    cfg: EvalConfig,
    *,
    cache: FeatureCache,
    seed: int = 0,
    count_fp: bool = False,
) -> Evaluation:
    """Accuracy, ASR (and FP) of every probe, encoder and dataset (see the module doc).

    ``encoders`` maps a name to an encoder: ``"clean"`` and ``"attacked"`` first, then any
    defended encoders under their defense's name.
    """
    if list(encoders)[:2] != [CLEAN, ATTACKED]:
        raise ValueError(f"encoders must start with {CLEAN!r} and {ATTACKED!r}: {list(encoders)}")
    by_dataset: dict[str, list[BackdoorTarget]] = defaultdict(list)
    for t in targets:
        by_dataset[t.dataset].append(t)
    out = Evaluation()
    for name in downstream.datasets:
        train, test = downstream.train(name), downstream.test(name)
        mine = by_dataset.get(name, [])
        triggered = [triggered_copy(test, t.trigger, seed) for t in mine]
        log.info("backdoor evaluation on %s: %d labelled, %d test", name, len(train), len(test))
        conf: dict = {"classes": list(test.classes), "clean": {}, "triggered": {}}
        for role, encoder in encoders.items():
            f_train = cache.get(encoder, train)
            y_train = train.labels.to(f_train.device)
            f_test = cache.get(encoder, test)
            y_test = test.labels.to(f_test.device)
            f_trig = [cache.get(encoder, t) for t in triggered]
            rows: list[Row] = []
            for i, kind in enumerate(cfg.probes):
                suffix = "" if i == 0 else f"_{kind}"
                at = {"encoder": role, "dataset": name, "probe": kind, "suffix": suffix}
                predict = train_predictor(kind, f_train, y_train, train.num_classes, cfg, seed)
                pred = predict(f_test)
                rows.append(backdoor_row(**at, metric="acc", value=accuracy(pred, y_test)))
                if i == 0:
                    conf["clean"][role] = confusion_matrix(pred, y_test, test.num_classes).tolist()
                rates, fps = [], 0
                for t, f in zip(mine, f_trig, strict=True):
                    pred_t = predict(f)
                    rates.append(attack_success_rate(pred_t, y_test, t.target_class))
                    fps += false_positives(pred_t, y_test, t.target_class)
                    if len(mine) > 1:
                        rows.append(
                            backdoor_row(**at, metric="asr", value=rates[-1], target=t.class_name)
                        )
                    if i == 0:
                        conf["triggered"].setdefault(t.class_name, {})[role] = confusion_matrix(
                            pred_t, y_test, test.num_classes
                        ).tolist()
                if rates:
                    rows.append(backdoor_row(**at, metric="asr", value=sum(rates) / len(rates)))
                    if count_fp:
                        rows.append(backdoor_row(**at, metric="fp", value=fps))
            first = cfg.probes[0]
            shown = {r.metric: round(r.value, 4) for r in rows if r.probe == first and not r.target}
            log.info("%s encoder on %s: %s", role, name, shown)
            out.rows += rows
        out.confusion[name] = conf
    return out
