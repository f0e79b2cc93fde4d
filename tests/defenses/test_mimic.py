"""MIMIC: attention and clone losses against loops, the MI estimator on known dependence,
the MI weights, the student's independence from the teacher, and a tiny end-to-end run."""

from __future__ import annotations

import math

import pytest
import torch

import sslpoison.defenses.mimic as mimic_module
from sslpoison.data.synthetic import synthetic
from sslpoison.defenses import DEFENSES, MimicConfig, reinitialise
from sslpoison.defenses.base import STUDENT_SEED_OFFSET
from sslpoison.defenses.feature_distill import clone_loss
from sslpoison.defenses.mimic import (
    MIConfig,
    attention_loss,
    attention_map,
    attention_weights,
    mi_lower_bound,
    run_mimic,
)
from sslpoison.models import build_backbone
from sslpoison.utils import module_hash


def reference_attention_loss(s: torch.Tensor, t: torch.Tensor, p: int) -> float:
    """Per image: a_ij = Σ_c |F_cij|^p, divided by sqrt(Σ_ij a_ij²) + 1e-6; then the mean
    squared difference over every image and position."""

    def amap(f: list) -> list[float]:
        c, h, w = len(f), len(f[0]), len(f[0][0])
        a = [sum(abs(f[k][i][j]) ** p for k in range(c)) for i in range(h) for j in range(w)]
        norm = math.sqrt(sum(v * v for v in a)) + 1e-6
        return [v / norm for v in a]

    diffs = []
    for fs, ft in zip(s.tolist(), t.tolist(), strict=True):
        diffs += [(x - y) ** 2 for x, y in zip(amap(fs), amap(ft), strict=True)]
    return sum(diffs) / len(diffs)


@pytest.mark.parametrize(("p", "cs", "ct"), [(2, 3, 3), (2, 2, 5), (1, 4, 2)])
def test_attention_loss_matches_a_loop_reference(p, cs, ct):
    g = torch.Generator().manual_seed(p * 10 + cs)
    s = torch.randn(3, cs, 4, 5, generator=g, dtype=torch.float64)
    t = torch.randn(3, ct, 4, 5, generator=g, dtype=torch.float64)
    got = attention_loss(s, t, p)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(reference_attention_loss(s, t, p), rel=1e-9)
    # a map is unit-norm per image, invariant to scaling the features
    a = attention_map(s, p)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)
    assert float(attention_loss(s, 7.0 * s, p)) == pytest.approx(0.0, abs=1e-10)


def test_attention_loss_trains_the_student_side_only():
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, requires_grad=True)
    attention_loss(s, t).backward()
    assert s.grad is not None and t.grad is None


def test_clone_loss_is_one_minus_the_mean_cosine():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    cos = [
        sum(a * b for a, b in zip(x, y, strict=True))
        / math.sqrt(sum(a * a for a in x) * sum(b * b for b in y))
        for x, y in zip(s.tolist(), t.tolist(), strict=True)
    ]
    assert float(clone_loss(s, t)) == pytest.approx(1 - sum(cos) / 5, abs=1e-6)
    assert float(clone_loss(t * 3, t)) == pytest.approx(0.0, abs=1e-6)


def test_mi_estimator_ranks_correlated_gaussians_above_independent_ones():
    g = torch.Generator().manual_seed(0)
    n, d = 1024, 2
    x = torch.randn(n, d, generator=g)
    rho = 0.9
    y_dep = rho * x + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=g)
    y_ind = torch.randn(n, d, generator=g)
    cfg = MIConfig(epochs=30, batch_size=256, hidden=64, lr=3e-3)
    dep = mi_lower_bound(x, y_dep, cfg, seed=0)
    ind = mi_lower_bound(x, y_ind, cfg, seed=0)
    true_dep = -d / 2 * math.log(1 - rho**2)  # 1.66 nats
    assert dep > 0.5 > ind
    assert dep < true_dep + 0.2  # a lower bound (up to estimation noise)


def test_attention_weights_follow_the_public_rule():
    assert attention_weights([1.0, 0.0, 3.0, 0.0], 1000, 10000) == [3500, 1000, 8500, 1000]
    assert attention_weights([0.0] * 4, 1000, 10000) == [3500] * 4


def tiny_resnet(seed: int = 0):
    torch.manual_seed(seed)
    return build_backbone("resnet18", width=0.125, in_channels=1).eval()


def tiny_mimic(**over) -> MimicConfig:
    raw = {
        "name": "mimic",
        "clean": 32,
        "mi": {"epochs": 1, "batch_size": 16, "hidden": 16},
        "augment": {"crop_scale": [0.5, 1.0]},
        "train": {
            "epochs": 2,
            "batch_size": 16,
            "progress": False,
            "checkpoint_every": 0,
            "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
        },
    } | over
    return DEFENSES["mimic"].model_validate(raw)


def test_student_starts_from_weights_independent_of_the_teacher(monkeypatch):
    starts = []
    real_fit = mimic_module.fit

    def spy_fit(task, *args, **kwargs):
        if isinstance(task, mimic_module.MimicTask):
            starts.append(module_hash(task.student))
        return real_fit(task, *args, **kwargs)

    monkeypatch.setattr(mimic_module, "fit", spy_fit)
    clean = synthetic(n=32, num_classes=4, size=16, channels=1, seed=0)
    cfg = tiny_mimic(train={"epochs": 1, "batch_size": 16, "progress": False})
    for teacher_seed in (1, 2):
        run_mimic(tiny_resnet(teacher_seed), clean, cfg, seed=0)
    # two different teachers, the same starting student: drawn from the seed alone
    assert starts[0] == starts[1]
    assert starts[0] == module_hash(reinitialise(tiny_resnet(3), STUDENT_SEED_OFFSET))
    assert starts[0] != module_hash(tiny_resnet(1))


def test_a_tiny_run_records_the_mi_weights_and_leaves_the_teacher_alone():
    teacher = tiny_resnet(1)
    before = module_hash(teacher)
    clean = synthetic(n=32, num_classes=4, size=16, channels=1, seed=0)
    cfg = tiny_mimic()
    done = cfg.apply(teacher, clean, seed=0)
    assert module_hash(teacher) == before and not teacher.training
    assert all(p.requires_grad for p in teacher.parameters())
    rec = done.record
    assert list(rec["mi"]) == ["layer1", "layer2", "layer3", "layer4"]
    assert all(v >= 0 for v in rec["mi"].values())
    assert sum(rec["attention_weights"].values()) == pytest.approx(4 * 1000 + 10000)
    assert set(rec["loss_terms"]) >= {"contrastive", "clone", "attention", "attention_layer4"}
    assert not done.encoder.training
    x = torch.rand(3, 1, 16, 16)
    assert done.encoder(x).shape == teacher(x).shape
    assert len(done.fit.losses) == 2 and all(math.isfinite(v) for v in done.fit.losses)


def test_config_defaults_and_errors():
    cfg = MimicConfig()
    assert cfg.clean == 0.04 and cfg.temperature == 0.5 and cfg.clone == 1.0
    assert (cfg.attention_base, cfg.attention_scale) == (1000.0, 10000.0)
    assert cfg.train.optimizer.name == "adam" and cfg.train.optimizer.lr == 1e-3
    with pytest.raises(ValueError, match="temperature"):
        MimicConfig(temperature=0)
    with pytest.raises(ValueError, match="network"):
        MimicConfig.model_validate({"mi": {"network": "both"}})
    with pytest.raises(ValueError, match="stage maps"):
        run_mimic(torch.nn.Linear(3, 3), synthetic(n=16, size=16, seed=0), tiny_mimic())
