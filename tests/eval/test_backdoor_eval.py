"""Where triggered images go: top class and share, the references' class, the collapse note."""

from __future__ import annotations

import torch
import torch.nn as nn

from sslpoison.eval.backdoor import evaluate_backdoor
from sslpoison.eval.downstream import Downstream, EvalConfig
from sslpoison.eval.features import FeatureCache
from sslpoison.eval.metrics import top_prediction
from sslpoison.poisoning import BackdoorTarget
from sslpoison.triggers import PatchTrigger, TriggerConfig


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
