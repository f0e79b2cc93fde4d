"""Indiscriminate downstream poisoning: poison counts, untouched clean points, budgets, the
fine-tune victim, the null control, and a run end to end with the countermeasures
(downstream-data defenses, tested on their own in tests/defenses/test_sanitizers.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from sslpoison.attacks import ATTACKS, Outcome
from sslpoison.cli import main
from sslpoison.data.synthetic import synthetic
from sslpoison.defenses import DEFENSES
from sslpoison.eval import accuracy
from sslpoison.eval import finetune as finetune_module
from sslpoison.eval.downstream import Downstream, EvalConfig, train_predictor
from sslpoison.eval.features import FeatureCache, extract_features
from sslpoison.eval.finetune import finetune
from sslpoison.eval.rows import CLEAN
from sslpoison.models import build_backbone
from sslpoison.train.engine import TrainConfig

FAST = {
    "label_flip": {},
    "gc": {"steps": 3, "target": {"radius": 0.1}},
    "tgda": {"steps": 2, "follower_iterations": 5, "cg_iterations": 3},
    "feature_targeted": {"solver": "gc", "steps": 3, "inversion": {"steps": 2}},
    "feature_targeted_match": {
        "name": "feature_targeted",
        "solver": "match",
        "steps": 2,
        "follower_iterations": 5,
        "cg_iterations": 3,
        "inversion": {"steps": 2},
    },
}


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return build_backbone("resnet18", width=0.125, in_channels=1, stem_stride=2).eval()


@pytest.fixture(scope="module")
def train():
    return synthetic(n=130, num_classes=4, size=16, channels=1, seed=0)


def attack_of(key: str, **extra):
    raw = {"name": key, **FAST[key], **extra}
    return ATTACKS[raw["name"]].model_validate(raw)


@pytest.mark.parametrize("key", list(FAST))
def test_the_poison_count_is_exactly_ceil_eps_n_and_clean_points_are_untouched(key, encoder, train):
    attack = attack_of(key, epsilon=0.03)
    poisoned = attack.poison_downstream(encoder, train, seed=0)
    n, p = len(train), math.ceil(0.03 * len(train))  # 3.9 → 4
    assert p == 4 and attack.poison_count(n) == p
    assert len(poisoned.data) == n + p
    assert torch.equal(poisoned.data.images[:n], train.images)
    assert torch.equal(poisoned.data.labels[:n], train.labels)
    assert torch.equal(poisoned.indices, torch.arange(n, n + p))
    assert poisoned.rates["rate_of_clean_set"] == pytest.approx(p / n)
    crafted = poisoned.crafted
    assert crafted.images.dtype == torch.uint8 and crafted.images.shape[0] == p
    assert torch.equal(poisoned.data.images[n:], crafted.images)
    assert len(set(crafted.base.tolist())) == p  # distinct base images
    assert attack.poison_count(100) == 3 and attack.poison_count(101) == 4


def test_label_flip_copies_its_base_images_with_another_label(encoder, train):
    for flip in ("confused", "random"):
        crafted = attack_of("label_flip", flip=flip, epsilon=0.2).craft(
            encoder, train, *_victim(encoder, train), seed=0
        )
        assert torch.equal(crafted.images, train.images[crafted.base])
        assert (crafted.labels != train.labels[crafted.base]).all()


def _victim(encoder, train):
    from sslpoison.attacks.linear_victim import LinearVictim
    from sslpoison.eval.features import extract_features
    from sslpoison.eval.probes import ProbeConfig

    features = extract_features(encoder, train.images).double()
    return features, LinearVictim.of(features, train.labels, 4, ProbeConfig())


@pytest.mark.parametrize(
    ("key", "budget"), [("gc", "linf"), ("tgda", "linf"), ("feature_targeted", "inversion")]
)
def test_optimised_poisons_stay_in_range_and_within_their_linf_budget(key, budget, encoder, train):
    linf = 0.05
    extra = (
        {"linf": linf, "lr": 0.5}
        if budget == "linf"
        else {"inversion": {"steps": 3, "lr": 0.5, "linf": linf}}
    )
    poisoned = attack_of(key, epsilon=0.1, **extra).poison_downstream(encoder, train, seed=0)
    crafted = poisoned.crafted
    base = train.images[crafted.base].float()
    change = (crafted.images.float() - base).abs()
    assert change.max() <= round(linf * 255) + 1  # the budget, up to rounding to uint8
    assert change.max() > 0  # they did move


def test_inverted_images_without_a_budget_stay_in_range(encoder, train):
    from sslpoison.attacks.feature_targeted import Inversion, InversionConfig

    features, victim = _victim(encoder, train)
    x = victim.standardise(features)
    goal = x[:5] + 3.0  # far from anything an image gives
    cfg = InversionConfig(base="start", steps=5, lr=1.0, refine=0)
    inversion = Inversion(cfg, encoder, victim, train, x, None, seed=0)
    images, base_images, index = inversion.from_bases(goal, torch.arange(5))
    assert torch.equal(index, torch.arange(5)) and torch.equal(base_images, train.images[:5])
    assert images.shape == train.images[:5].shape and 0 <= images.min() <= images.max() <= 1
    assert inversion.distances[-1] < inversion.distances[0]


def test_inversion_starts_from_the_real_image_nearest_each_poisoned_feature(encoder, train):
    from sslpoison.attacks.feature_targeted import Inversion, InversionConfig

    features, victim = _victim(encoder, train)
    x = victim.standardise(features)
    wanted = torch.tensor([7, 3, 120, 3])
    goal = x[wanted] + 1e-3  # each next to one training point's feature
    cfg = InversionConfig(steps=0, refine=0)
    _, base_images, index = Inversion(cfg, encoder, victim, train, x, None, 0).from_bases(
        goal, torch.zeros(4, dtype=torch.long)
    )
    assert torch.equal(index, wanted) and torch.equal(base_images, train.images[wanted])
    # with pre-training images in the pool, one of them can be the nearest
    extra = synthetic(n=40, num_classes=4, size=16, channels=1, seed=5)
    cfg = InversionConfig(steps=0, refine=0, pretraining=40)
    inversion = Inversion(cfg, encoder, victim, train, x, extra, 0)
    goal = inversion.pool_x[len(train) + 11][None]
    _, base_images, index = inversion.from_bases(goal, torch.zeros(1, dtype=torch.long))
    assert index.item() >= len(train)
    assert torch.equal(base_images[0], inversion.pool_images[index.item()])


def test_the_finetune_victim_trains_through_the_one_engine(monkeypatch, encoder, train):
    calls = []
    real_fit = finetune_module.fit

    def spy(task, data, cfg, **kw):
        calls.append(cfg)
        return real_fit(task, data, cfg, **kw)

    monkeypatch.setattr(finetune_module, "fit", spy)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=32, progress=False, checkpoint_every=0)
    model = finetune(encoder, train, cfg, seed=0)
    assert len(calls) == 1 and calls[0].epochs == 1
    assert any(
        not torch.equal(v, model.encoder.state_dict()[k]) for k, v in before.items()
    )  # the encoder copy was trained ...
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())  # ... not it


@pytest.mark.slow
def test_feature_targeted_runs_end_to_end(tmp_path, tiny_experiment, write_config):
    cfg = tiny_experiment
    cfg["pretrain"]["train"]["epochs"] = 2
    cfg["attack"] = {
        **FAST["feature_targeted_match"],
        "epsilon": 0.05,
        "victims": ["linear", "finetune"],
        "finetune": {"epochs": 1, "batch_size": 64, "progress": False},
    }
    cfg["defenses"] = [
        {"name": "sphere", "reference": 100},  # 100 of the 256 held-out train-split images
        {"name": "slab"},
        {"name": "knn", "k": 5},
    ]
    cfg["eval"] |= {"probes": ["linear"], "baselines": []}
    out = tmp_path / "run"
    assert main(["run", write_config(cfg), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    m = results["metrics"]
    p = math.ceil(0.05 * 256)
    assert m["synthetic/poisons"] == p and m["synthetic/poison_rate"] == pytest.approx(p / 256)
    for suffix in ("", "_features", "_finetune", "_sphere", "_slab", "_knn", "_features_knn"):
        clean, poisoned = m[f"synthetic/acc_clean{suffix}"], m[f"synthetic/acc_poisoned{suffix}"]
        assert m[f"synthetic/acc_drop{suffix}"] == pytest.approx(clean - poisoned)
    assert m["synthetic/acc_clean"] == m["synthetic/linear_acc"]  # the same probe, same data
    for cm in ("sphere", "slab", "knn"):
        assert 0 <= m[f"synthetic/removed_poisons_{cm}"] <= p
        assert 0 <= m[f"synthetic/removed_clean_{cm}"] <= 256
    # k-NN relabels (Paudice et al.) rather than drops; sphere and slab relabel nothing.
    assert m["synthetic/removed_poisons_knn"] == m["synthetic/removed_clean_knn"] == 0
    assert 0 <= m["synthetic/relabelled_poisons_knn"] <= p
    assert "synthetic/relabelled_poisons_sphere" not in m
    saved = load_file(str(out / "poisons-synthetic.safetensors"))
    assert saved["images"].shape == (p, 1, 16, 16) and saved["features"].shape[0] == p
    record = json.loads((out / "poison-synthetic.json").read_text())
    assert record["count"] == p and len(record["base"]) == p
    assert (out / "poisons-synthetic.png").exists()
    summary = (out / "summary.md").read_text()
    assert "poisoned" in summary and "finetune" in summary and "sphere" in summary


def test_the_null_control_adds_the_poisons_base_images_with_their_true_labels(encoder, train):
    cfg = EvalConfig(
        datasets=["synthetic"], labelled=128, test_subset=128, probes=["linear"], baselines=[],
        probe={"l2_grid": [1e-3]},
    )  # fmt: skip
    downstream = Downstream(cfg, 16, 1)
    attack = attack_of("label_flip", epsilon=0.5, flip="random")
    poisoned = attack.poison_train_sets(encoder, downstream, seed=0)
    knn = DEFENSES["knn"](name="knn")
    outcome = Outcome(
        train, None, downstream, poisoned, {CLEAN: encoder}, {}, cfg, FeatureCache(), seed=0,
        downstream_defenses=[knn],
    )  # fmt: skip
    rows = attack.measure(outcome).rows
    m = {r.key: r.value for r in rows}
    # By hand: the clean set plus its base images, unmodified, with their true labels.
    clean, test = downstream.train("synthetic"), downstream.test("synthetic")
    base = poisoned["synthetic"].crafted.base
    f, y = extract_features(encoder, clean.images), clean.labels
    predict = train_predictor("linear", torch.cat([f, f[base]]), torch.cat([y, y[base]]), 4, cfg)
    acc_null = accuracy(predict(extract_features(encoder, test.images)), test.labels)
    assert m["synthetic/acc_drop_null"] == pytest.approx(m["synthetic/acc_clean"] - acc_null)
    assert m["synthetic/acc_drop"] > m["synthetic/acc_drop_null"] + 0.05  # 64 flipped labels
    assert abs(m["synthetic/acc_drop_null"]) <= 0.03  # duplicates only reweight: ≈ nothing
    assert {"synthetic/acc_drop_null_knn", "synthetic/acc_drop_knn"} <= set(m)
    nulls = [r for r in rows if r.metric == "acc_drop_null"]
    assert {(r.probe, r.setting) for r in nulls} == {("linear", None), ("linear", "knn")}
