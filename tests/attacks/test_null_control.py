"""The null control of scripts/indiscriminate_seeds.py (issue 26's ``acc_drop_null``, until the
runner's ``--seeds`` brings it): clean duplicates with their true labels, measured through the
attack's own victims, move the victim by about nothing; poisons measured the same way do."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from sslpoison.attacks import ATTACKS
from sslpoison.eval.downstream import Downstream, EvalConfig
from sslpoison.eval.evaluate import Outcome
from sslpoison.eval.features import FeatureCache
from sslpoison.eval.rows import CLEAN
from sslpoison.models import build_backbone

SCRIPT = Path(__file__).parents[2] / "scripts" / "indiscriminate_seeds.py"


@pytest.fixture(scope="module")
def seeds_script():
    spec = importlib.util.spec_from_file_location("indiscriminate_seeds", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_clean_duplicates_drop_about_nothing_and_flipped_labels_do(seeds_script):
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", width=0.125, in_channels=1, stem_stride=2).eval()
    cfg = EvalConfig(datasets=["synthetic"], labelled=256, probes=["linear"], baselines=[])
    downstream = Downstream(cfg, 16, 1, seed=0)
    train = downstream.train("synthetic")
    attack = ATTACKS["label_flip"].model_validate({"name": "label_flip", "epsilon": 0.4})
    poisoned = attack.poison_train_sets(encoder, downstream, seed=0)
    outcome = Outcome(
        train, None, downstream, poisoned, {CLEAN: encoder}, {}, cfg, FeatureCache(), 0
    )
    count = poisoned["synthetic"].indices.numel()
    null = seeds_script.null_rows(attack, "synthetic", train, count, outcome)
    assert set(null) == {"synthetic/acc_drop_null"}
    effect = {
        r.key: r.value for r in attack.measure_dataset("synthetic", poisoned["synthetic"], outcome)
    }
    # 40 % duplicates reweight a few points: a drop of a few test images at most, while
    # the same count of flipped labels costs many
    assert abs(null["synthetic/acc_drop_null"]) <= 0.02
    assert effect["synthetic/acc_drop"] >= max(0.05, 5 * abs(null["synthetic/acc_drop_null"]))
    duplicated = seeds_script.duplicates(train, count, seed=0)
    n = len(train)
    assert torch.equal(duplicated.data.images[n:], train.images[duplicated.crafted.base])
    assert torch.equal(duplicated.data.labels[n:], train.labels[duplicated.crafted.base])


def test_aggregate_gives_mean_std_n_and_values(seeds_script):
    agg = seeds_script.aggregate([{"a": 1.0, "b": 2.0}, {"a": 3.0}, {"a": 5.0, "b": float("nan")}])
    assert agg["a"] == {"mean": 3.0, "std": 2.0, "n": 3, "values": [1.0, 3.0, 5.0]}
    assert agg["b"] == {"mean": 2.0, "std": 0.0, "n": 1, "values": [2.0]}
