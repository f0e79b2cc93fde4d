"""Where triggered images go: top class and share, the references' class, the collapse note;
the null control with unseen triggers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from sslpoison.eval.backdoor import evaluate_backdoor
from sslpoison.eval.downstream import Downstream, EvalConfig, train_predictor
from sslpoison.eval.features import FeatureCache
from sslpoison.eval.metrics import top_prediction
from sslpoison.poisoning import BackdoorTarget
from sslpoison.triggers import PatchTrigger, TriggerConfig, other_patterns


def test_top_prediction_hand_made():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    pred = torch.tensor([2, 3, 3, 3, 2, 3, 0])  # non-target (≠ 2): 0, 0, 1, 1, 3
    # Triggered non-target inputs predicted as: 2, 3, 3, 3, 0 → class 3, 3 of 5.
    assert top_prediction(pred, labels, 2) == (3, 0.6)
    # A tie (one each of 2 and 3 among the non-target inputs) goes to the lower class.
    assert top_prediction(torch.tensor([2, 3, 0]), torch.tensor([1, 2, 0]), 0) == (2, 0.5)


class Spectrum(nn.Module):
    """Features: the magnitude of the images' 2-D Fourier transform (the synthetic classes
    are stripes and plaids of random phase: this separates them linearly). An image carrying
    ``trigger``'s exact patch gets the features of ``onto`` (1×C×H×W float) instead — a
    backdoor that collapsed onto one embedding."""

    def __init__(self, trigger: PatchTrigger | None = None, onto: torch.Tensor | None = None):
        super().__init__()
        self.trigger, self.onto = trigger, onto
        # A parameter (for the device) that differs between the two, as the feature cache
        # tells encoders apart by their weights.
        self.anchor = nn.Parameter(torch.tensor(0.0 if trigger is None else 1.0))

    @staticmethod
    def spectrum(x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft2(x).abs().flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.spectrum(x) + self.anchor
        if self.trigger is None:
            return z
        (r, c), s = self.trigger.cfg.position, self.trigger.side
        patch = (self.trigger.pattern * 255).round() / 255
        hit = (x[:, :, r : r + s, c : c + s] - patch).abs().flatten(1).amax(1) < 1e-4
        return torch.where(hit[:, None], self.spectrum(self.onto), z)


def test_a_backdoor_collapsed_onto_another_class_is_reported():
    cfg = EvalConfig(datasets=["synthetic"], labelled=256, probes=["linear"], baselines=[])
    downstream = Downstream(cfg, 16, 1)
    train = downstream.train("synthetic")
    trigger = PatchTrigger(TriggerConfig(kind="noise", size=3, position=(2, 9)), 1, 16)
    target, other = 0, 2  # the attacker's target; the class the backdoor really points at
    reference = train.images[train.labels == other][:1]  # an image the probe calls `other`
    attacked = Spectrum(trigger, reference.float() / 255)
    t = BackdoorTarget("synthetic", target, train.classes[target], trigger, reference, [5])
    evaluation = evaluate_backdoor(
        {"clean": Spectrum(), "attacked": attacked}, [t], downstream, cfg, cache=FeatureCache()
    )
    m = {r.key: r.value for r in evaluation.rows}
    assert m["synthetic/ca"] > 0.9 and m["synthetic/ba"] == m["synthetic/ca"]
    assert m["synthetic/asr"] == 0.0
    assert m["synthetic/top_class"] == other and m["synthetic/top_share"] == 1.0
    assert m["synthetic/ref_target"] == 0.0 and m["synthetic/ref_target_b"] == 0.0
    assert m["synthetic/top_share_b"] < 0.9  # the clean encoder spreads them
    (note,) = evaluation.notes
    assert f"collapsed onto {train.classes[other]!r} (100.0 %" in note
    assert f"not the target {train.classes[target]!r}" in note and "0 % of the reference" in note


def test_unseen_triggers_of_the_same_size_and_place_are_the_null_control():
    cfg = EvalConfig(
        datasets=["synthetic"], labelled=256, probes=["linear"], baselines=[],
        probe={"l2_grid": [1e-3]},
    )  # fmt: skip
    downstream = Downstream(cfg, 16, 1)
    train, test = downstream.train("synthetic"), downstream.test("synthetic")
    trigger = PatchTrigger(TriggerConfig(kind="noise", size=3, position=(2, 9)), 1, 16)
    target = 0
    reference = train.images[train.labels == target][:1]  # an image the probe calls the target
    attacked = Spectrum(trigger, reference.float() / 255)  # answers its own pattern, only it
    t = BackdoorTarget("synthetic", target, train.classes[target], trigger)
    encoders = {"clean": Spectrum(), "attacked": attacked}
    evaluation = evaluate_backdoor(
        encoders, [t], downstream, cfg, cache=FeatureCache(), seed=4, count_fp=True
    )
    m = {r.key: r.value for r in evaluation.rows}
    non_target = int((test.labels != target).sum())
    assert m["synthetic/asr"] == 1.0 and m["synthetic/fp_poisoned"] == non_target
    # Unseen patterns at the trigger's places: the attacked encoder is the clean one there.
    assert m["synthetic/asr_other_trigger"] == m["synthetic/asr_other_trigger_b"] < 0.5
    assert m["synthetic/fp_other_trigger"] == m["synthetic/fp_other_trigger_clean"]
    # By hand: the mean over the three patterns of other_patterns, placed with the same seed.
    clean = Spectrum().requires_grad_(False)
    predict = train_predictor("linear", clean(train.images / 255), train.labels, 4, cfg, seed=4)
    rates = []
    for c in other_patterns(trigger.cfg, 3):
        images, _ = PatchTrigger(c, 1, 16).apply(test.images, torch.Generator().manual_seed(4))
        pred = predict(clean(images / 255))
        rates.append(((pred == target) & (test.labels != target)).sum().item() / non_target)
    assert m["synthetic/asr_other_trigger"] == pytest.approx(sum(rates) / 3)
    assert m["synthetic/fp_other_trigger"] == pytest.approx(non_target * sum(rates) / 3)
    none = evaluate_backdoor(
        encoders, [t], downstream, cfg.model_copy(update={"other_triggers": 0}),
        cache=FeatureCache(), seed=4,
    )  # fmt: skip
    assert not any("other_trigger" in r.key for r in none.rows)
