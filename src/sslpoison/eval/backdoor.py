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

The null control of a backdoor (``eval.other_triggers`` unseen noise patterns, default 3, of
each trigger's size and placement, :func:`~sslpoison.triggers.other_patterns`; the same
placements as the trigger's): ``asr_other_trigger``, the mean ASR over those patterns, and
with ``count_fp`` ``fp_other_trigger``, their mean FP (a float) — keys as above
(``<dataset>/asr_other_trigger``, clean encoder ``<dataset>/asr_other_trigger_b`` and
``<dataset>/fp_other_trigger_clean``, defended ``d/<dataset>/asr_other_trigger``). A backdoor
is specific to its trigger when its ASR clears these, not only ASR-B.

Where the triggered images go, whatever the target: ``top_class`` (the class most triggered
non-target test images are predicted as, an index) and ``top_share`` (their share); and,
for targets with reference images (BadEncoder), ``ref_target``: the share of the references
the probe itself calls the target. Keys as above (``<dataset>/top_class`` for the attacked
encoder, ``<dataset>/top_class_b`` for the clean one, ``d/<dataset>/top_class``). A backdoor
that collapsed onto a class that is not the target gets a line in the evaluation's notes.

With several targets on one dataset, ASR is their mean and ``<dataset>/<class>/asr`` each
one's (FP is summed; top class, share and references are per target only). Confusion
matrices (first probe; rows = true class) come back for the clean test set and for every
target's triggered test set.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import torch
import torch.nn as nn

from sslpoison.data.imageset import ImageSet
from sslpoison.eval.downstream import Downstream, EvalConfig, train_predictor
from sslpoison.eval.features import FeatureCache, extract_features
from sslpoison.eval.metrics import (
    accuracy,
    attack_success_rate,
    confusion_matrix,
    false_positives,
    top_prediction,
)
from sslpoison.eval.rows import ATTACKED, CLEAN, Evaluation, Metric, Row
from sslpoison.poisoning import BackdoorTarget
from sslpoison.triggers import PatchTrigger, other_patterns

log = logging.getLogger(__name__)

ACC = Metric("acc", "accuracy", about="CA for the clean encoder, BA for the others")
ASR = Metric(
    "asr", "ASR", about="triggered non-target test images called the target (clean: ASR-B)"
)
FP = Metric("fp", "FP", 1, "the number of triggered non-target test images called the target")
ASR_OTHER_TRIGGER = Metric(
    "asr_other_trigger", "ASR other", about="ASR with unseen triggers of the same size and place"
)
FP_OTHER_TRIGGER = Metric("fp_other_trigger", "FP other", 1, "FP with unseen triggers")
TOP_CLASS = Metric(
    "top_class", "top class", 0, "the class most triggered non-target test images are called"
)
TOP_SHARE = Metric("top_share", "top class share", about="the share of them it takes")
REF_TARGET = Metric(
    "ref_target", "references on target", about="the target's reference images called the target"
)
#: Metrics whose values are class indices, not quantities: over seeds, their values count,
#: not their mean.
CATEGORICAL = frozenset({TOP_CLASS.name})
#: Each encoder's numbers, in the order tables show them (and the log line).
BACKDOOR_METRICS = (ACC, ASR, ASR_OTHER_TRIGGER, FP, FP_OTHER_TRIGGER)
#: The numbers of each target of several.
TARGET_METRICS = (TOP_CLASS, TOP_SHARE, REF_TARGET)


def metric_key(encoder: str, dataset: str, metric: str, target: str | None = None) -> str:
    """The flat key of ``metric`` ('acc', 'asr', 'fp', 'top_class', ...) of one encoder on one
    dataset (and one of its targets, when several share the dataset)."""
    if target is not None:
        dataset = f"{dataset}/{target}"
    if encoder == CLEAN:
        names = {
            ACC.name: "ca", ASR.name: "asr_b", FP.name: "fp_clean",
            FP_OTHER_TRIGGER.name: "fp_other_trigger_clean",
        }  # fmt: skip
        return f"{dataset}/{names.get(metric, f'{metric}_b')}"
    if encoder == ATTACKED:
        names = {ACC.name: "ba", FP.name: "fp_poisoned"}
        return f"{dataset}/{names.get(metric, metric)}"
    return f"{encoder}/{dataset}/{'ba' if metric == ACC.name else metric}"


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


def other_triggered(
    data: ImageSet, trigger: PatchTrigger, count: int, seed: int = 0
) -> list[ImageSet]:
    """``data`` with each of ``count`` unseen patterns of ``trigger``'s size and placement
    pasted in (:func:`~sslpoison.triggers.other_patterns`; the placements are the trigger's:
    the same ``seed``)."""
    return [
        triggered_copy(data, PatchTrigger(c, trigger.channels, trigger.image_size), seed)
        for c in other_patterns(trigger.cfg, count)
    ]


def collapse_note(
    role: str,
    target: BackdoorTarget,
    top_name: str,
    share: float,
    asr: float,
    ref_target: float | None,
) -> str:
    """One line: the ``role`` encoder's triggered images collapsed onto ``top_name``, not the
    target (and how the probe classifies the references, where there are)."""
    line = (
        f"{target.dataset}, {role} encoder: the backdoor collapsed onto {top_name!r} "
        f"({100 * share:.1f} % of triggered non-target test images), not the target "
        f"{target.class_name!r} (ASR {asr:.4f})"
    )
    if ref_target is not None:
        line += f"; the probe calls {100 * ref_target:.0f} % of the reference images the target"
    return line


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
        others = [other_triggered(test, t.trigger, cfg.other_triggers, seed) for t in mine]
        log.info("backdoor evaluation on %s: %d labelled, %d test", name, len(train), len(test))
        conf: dict = {"classes": list(test.classes), "clean": {}, "triggered": {}}
        for role, encoder in encoders.items():
            f_train = cache.get(encoder, train)
            y_train = train.labels.to(f_train.device)
            f_test = cache.get(encoder, test)
            y_test = test.labels.to(f_test.device)
            f_trig = [cache.get(encoder, t) for t in triggered]
            f_others = [[cache.get(encoder, o) for o in sets] for sets in others]
            f_refs = [
                None if t.references is None else extract_features(encoder, t.references)
                for t in mine
            ]
            rows: list[Row] = []
            for i, kind in enumerate(cfg.probes):
                suffix = "" if i == 0 else f"_{kind}"
                at = {"encoder": role, "dataset": name, "probe": kind, "suffix": suffix}
                predict = train_predictor(kind, f_train, y_train, train.num_classes, cfg, seed)
                pred = predict(f_test)
                rows.append(backdoor_row(**at, metric=ACC.name, value=accuracy(pred, y_test)))
                if i == 0:
                    conf["clean"][role] = confusion_matrix(pred, y_test, test.num_classes).tolist()
                rates, fps, other_rates, other_fps = [], 0, [], 0.0
                for t, f, f_ref, f_other in zip(mine, f_trig, f_refs, f_others, strict=True):
                    pred_t = predict(f)
                    rates.append(attack_success_rate(pred_t, y_test, t.target_class))
                    fps += false_positives(pred_t, y_test, t.target_class)
                    one = {**at, "target": t.class_name if len(mine) > 1 else None}
                    if len(mine) > 1:
                        rows.append(backdoor_row(**one, metric=ASR.name, value=rates[-1]))
                    if f_other:
                        preds = [predict(fo) for fo in f_other]
                        rate = [attack_success_rate(p, y_test, t.target_class) for p in preds]
                        other_rates.append(sum(rate) / len(rate))
                        fp = [false_positives(p, y_test, t.target_class) for p in preds]
                        other_fps += sum(fp) / len(fp)
                        if len(mine) > 1:
                            value = other_rates[-1]
                            rows.append(
                                backdoor_row(**one, metric=ASR_OTHER_TRIGGER.name, value=value)
                            )
                    top, share = top_prediction(pred_t, y_test, t.target_class)
                    rows.append(backdoor_row(**one, metric=TOP_CLASS.name, value=top))
                    rows.append(backdoor_row(**one, metric=TOP_SHARE.name, value=share))
                    ref_target = None
                    if f_ref is not None:
                        ref_target = (predict(f_ref) == t.target_class).double().mean().item()
                        rows.append(backdoor_row(**one, metric=REF_TARGET.name, value=ref_target))
                    if i == 0 and role != CLEAN and top != t.target_class and share >= 0.5:
                        out.notes.append(
                            collapse_note(role, t, test.classes[top], share, rates[-1], ref_target)
                        )
                    if i == 0:
                        conf["triggered"].setdefault(t.class_name, {})[role] = confusion_matrix(
                            pred_t, y_test, test.num_classes
                        ).tolist()
                if rates:
                    rows.append(backdoor_row(**at, metric=ASR.name, value=sum(rates) / len(rates)))
                    if count_fp:
                        rows.append(backdoor_row(**at, metric=FP.name, value=fps))
                if other_rates:
                    mean = sum(other_rates) / len(other_rates)
                    rows.append(backdoor_row(**at, metric=ASR_OTHER_TRIGGER.name, value=mean))
                    if count_fp:
                        other = backdoor_row(**at, metric=FP_OTHER_TRIGGER.name, value=other_fps)
                        rows.append(other)
            first, logged = cfg.probes[0], {m.name for m in BACKDOOR_METRICS}
            shown = {
                r.metric: round(r.value, 4)
                for r in rows
                if r.probe == first and not r.target and r.metric in logged
            }
            log.info("%s encoder on %s: %s", role, name, shown)
            out.rows += rows
        out.confusion[name] = conf
    for note in out.notes:
        log.warning("%s", note)
    return out
