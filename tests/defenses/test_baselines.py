"""The baselines MIMIC is compared with: fine-tuning, fine-pruning, plain feature
distillation — pruning picks the dormant channels and survives a save/load, each defense
trains a new encoder and leaves the suspect one as it was."""

from __future__ import annotations

import pytest
import torch

from sslpoison.data.synthetic import synthetic
from sslpoison.defenses import DEFENSES
from sslpoison.defenses.finetune import prune_dormant
from sslpoison.eval.features import extract_features
from sslpoison.models import build_backbone, load_encoder, save_encoder
from sslpoison.utils import module_hash

TRAIN = {
    "epochs": 2,
    "batch_size": 16,
    "progress": False,
    "checkpoint_every": 0,
    "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
}


def tiny_resnet(seed: int = 0):
    torch.manual_seed(seed)
    return build_backbone("resnet18", width=0.125, in_channels=1).eval()


def test_pruning_zeroes_the_least_active_channels_and_reloads_pruned(tmp_path):
    encoder = tiny_resnet(1)
    clean = synthetic(n=48, num_classes=4, size=16, channels=1, seed=0)
    activity = extract_features(encoder, clean.images).mean(0)
    pruned, record = prune_dormant(encoder, clean, 0.25)
    d = activity.numel()
    expected = sorted(activity.argsort()[: round(0.25 * d)].tolist())
    assert pruned.card["args"]["pruned"] == expected
    assert record == {"pruned_channels": len(expected), "pruned_share": len(expected) / d}
    feats = extract_features(pruned, clean.images)
    assert torch.all(feats[:, expected] == 0)
    kept = [c for c in range(d) if c not in expected]
    torch.testing.assert_close(feats[:, kept], extract_features(encoder, clean.images)[:, kept])
    save_encoder(pruned, tmp_path / "p")
    again = load_encoder(tmp_path / "p")
    torch.testing.assert_close(extract_features(again, clean.images), feats)
    # pruning a pruned encoder keeps the old channels and adds to them
    twice, _ = prune_dormant(pruned, clean, 0.5)
    assert set(expected) <= set(twice.card["args"]["pruned"])
    assert len(twice.card["args"]["pruned"]) == round(0.5 * d)
    with pytest.raises(ValueError, match="ResNet"):
        prune_dormant(torch.nn.Linear(4, 4), clean, 0.5)


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("finetune", {}),
        ("fineprune", {"prune": 0.5}),
        ("feature_distill", {}),
        ("feature_distill", {"student": "teacher"}),
    ],
)
def test_each_baseline_trains_a_new_encoder_and_leaves_the_suspect_alone(name, extra):
    suspect = tiny_resnet(1)
    before = module_hash(suspect)
    clean = synthetic(n=32, num_classes=4, size=16, channels=1, seed=0)
    augment = {"crop_scale": [0.5, 1.0]}
    cfg = DEFENSES[name].model_validate(
        {"name": name, "clean": 32, "train": TRAIN, "augment": augment, **extra}
    )
    done = cfg.apply(suspect, clean, seed=0)
    assert module_hash(suspect) == before and not suspect.training
    assert all(p.requires_grad for p in suspect.parameters())
    assert done.encoder is not suspect and not done.encoder.training
    assert module_hash(done.encoder) != before
    assert len(done.fit.losses) == 2
    x = torch.rand(2, 1, 16, 16)
    assert done.encoder(x).shape == suspect(x).shape
    if name == "fineprune":
        pruned = done.encoder.card["args"]["pruned"]
        assert len(pruned) == done.record["pruned_channels"] == suspect.feature_dim // 2
        assert torch.all(done.encoder(x)[:, pruned] == 0)


def test_feature_distillation_moves_a_random_student_toward_the_teacher():
    teacher = tiny_resnet(1)
    clean = synthetic(n=64, num_classes=4, size=16, channels=1, seed=0)
    cfg = DEFENSES["feature_distill"].model_validate(
        {"name": "feature_distill", "clean": 64, "train": TRAIN | {"epochs": 6}}
    )
    done = cfg.apply(teacher, clean, seed=0)
    assert done.fit.losses[-1] < done.fit.losses[0]


def test_configs_name_their_bad_keys():
    with pytest.raises(ValueError, match="method"):
        DEFENSES["finetune"].model_validate({"name": "finetune", "method": "nope"})
    with pytest.raises(ValueError, match="temperatur"):
        DEFENSES["finetune"].model_validate(
            {"name": "finetune", "method_args": {"temperatur": 0.1}}
        )
    with pytest.raises(ValueError, match="prune"):
        DEFENSES["fineprune"].model_validate({"name": "fineprune", "prune": 1.0})
    with pytest.raises(ValueError, match="batch_size"):
        DEFENSES["finetune"].model_validate({"name": "finetune", "train": TRAIN}).apply(
            tiny_resnet(), synthetic(n=8, size=16, seed=0)
        )
