"""BadEncoder: the loss against a loop reference, frozen BatchNorm, refused targets, loading."""

from __future__ import annotations

import math

import pytest
import torch

from sslpoison.attacks.badencoder import (
    BadEncoderConfig,
    TargetConfig,
    badencoder_loss,
    resolve_targets,
    run_badencoder,
)
from sslpoison.data.synthetic import synthetic
from sslpoison.eval.downstream import Downstream, EvalConfig
from sslpoison.models import build_backbone
from sslpoison.models.io import load_weights


def fitted(size: int) -> Downstream:
    """The downstream data (digits, synthetic) fitted to ``size``×``size`` grayscale input."""
    return Downstream(EvalConfig(datasets=["digits", "synthetic"]), size, channels=1)


def ref_cos(a, b, center):
    a = [x - c for x, c in zip(a, center, strict=True)] if center is not None else a
    b = [x - c for x, c in zip(b, center, strict=True)] if center is not None else b
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def reference_loss(trig, ref, ref_aug, ref_clean, shadow, shadow_clean, l1, l2, center):
    """Plain loops over targets, batch rows and references (Jia et al., S&P 2022, eq. 1–4)."""
    c = center.tolist() if center is not None else None
    l0_terms, l1_terms = [], []
    for zt, zr, za, zc in zip(trig, ref, ref_aug, ref_clean, strict=True):
        sims = [ref_cos(t, r, c) for t in zt.tolist() for r in zr.tolist()]
        l0_terms.append(-sum(sims) / len(sims))
        sims = [ref_cos(a, b, c) for a, b in zip(za.tolist(), zc.tolist(), strict=True)]
        l1_terms.append(-sum(sims) / len(sims))
    sims = [ref_cos(a, b, c) for a, b in zip(shadow.tolist(), shadow_clean.tolist(), strict=True)]
    l0 = sum(l0_terms) / len(l0_terms)
    l1v = sum(l1_terms) / len(l1_terms)
    l2v = -sum(sims) / len(sims)
    return l0 + l1 * l1v + l2 * l2v


@pytest.mark.parametrize("centered", [False, True])
def test_loss_matches_a_loop_reference(centered):
    g = torch.Generator().manual_seed(0)
    d, b = 6, 5
    refs = [2, 3]  # two targets, with 2 and 3 reference images

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    trig = [r(b, d) for _ in refs]
    ref = [r(n, d) for n in refs]
    ref_aug = [r(n, d) for n in refs]
    ref_clean = [r(n, d) for n in refs]
    shadow, shadow_clean = r(b, d), r(b, d)
    center = r(d) if centered else None
    loss, parts = badencoder_loss(
        trig, ref, ref_aug, ref_clean, shadow, shadow_clean, 0.7, 1.9, center
    )
    expected = reference_loss(trig, ref, ref_aug, ref_clean, shadow, shadow_clean, 0.7, 1.9, center)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert set(parts) == {"l0", "l1", "l2"}


def tiny_attack(epochs=2):
    data = synthetic(n=128, size=16, num_classes=4, seed=0)
    cfg = BadEncoderConfig(
        shadow=128,
        targets=[
            TargetConfig(
                dataset="synthetic",
                target_class="vertical",
                trigger={"size": 4, "position": [12, 12]},
            )
        ],
        train={
            "epochs": epochs,
            "batch_size": 32,
            "progress": False,
            "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
        },
    )
    targets = resolve_targets(cfg.targets, fitted(16))
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", width=0.125, in_channels=1)
    return data, cfg, targets, encoder


def test_batchnorm_is_frozen_and_the_rest_trains(tmp_path):
    data, cfg, targets, encoder = tiny_attack()
    encoder.train()  # warm the BN statistics away from their initial values
    with torch.no_grad():
        encoder(data.float_images()[:64])
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    attacked, result, parts = run_badencoder(encoder, data, targets, cfg, seed=0)
    after = attacked.state_dict()
    bn = [k for k in before if ".running_" in k or "num_batches_tracked" in k]
    assert bn and all(torch.equal(before[k], after[k]) for k in bn)
    bn_affine = [
        name
        for name, m in attacked.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d)
        for name in (f"{name}.weight", f"{name}.bias")
    ]
    assert all(torch.equal(before[k], after[k]) for k in bn_affine)
    convs = [k for k in before if k.endswith("conv1.weight") or k == "stem.0.weight"]
    assert any(not torch.equal(before[k], after[k]) for k in convs)
    assert len(result.losses) == 2 and len(parts) == 2
    assert parts[-1]["l0"] < parts[0]["l0"]  # triggered inputs move toward the reference


def test_attack_pulls_triggered_inputs_to_the_reference():
    data, cfg, targets, encoder = tiny_attack(epochs=6)
    clean = build_backbone("resnet18", width=0.125, in_channels=1)
    clean.load_state_dict(encoder.state_dict())
    attacked, *_ = run_badencoder(encoder, data, targets, cfg, seed=0)
    trig, _ = targets[0].trigger.apply(data.images[:64])
    with torch.no_grad():
        clean.eval()
        center = clean(data.float_images()).mean(0)

        def mean_cos(model):
            model.eval()
            z = model(trig.float() / 255) - center
            r = model(targets[0].references.float() / 255) - center
            return torch.nn.functional.cosine_similarity(z, r).mean().item()

        assert mean_cos(attacked) > 0.9 > mean_cos(clean)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({"dataset": "digits", "target_class": 10}, "attack.targets.0.target_class: 10 is outside"),
        ({"dataset": "digits", "target_class": "ten"}, "'ten' is not a class of digits"),
        (
            {"dataset": "digits", "target_class": 1, "trigger": {"size": 40}},
            "attack.targets.0.trigger: trigger size 40 px is larger than the 28×28 image",
        ),
    ],
)
def test_impossible_targets_are_refused_by_name(target, message):
    with pytest.raises(ValueError, match=message):
        resolve_targets([TargetConfig(**target)], fitted(28))


def test_references_come_from_the_target_class():
    (t,) = resolve_targets(
        [TargetConfig(dataset="digits", target_class=3, references=4)], fitted(28)
    )
    assert t.references.shape == (4, 1, 28, 28) and t.references.dtype == torch.uint8
    assert t.target_class == 3 and t.class_name == "3"


def test_plain_state_dict_loads_through_a_key_map(tmp_path):
    src = build_backbone("resnet18", width=0.125, in_channels=1)
    # A foreign checkpoint: other names, a classifier to drop, nested under "state_dict".
    foreign = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    foreign["fc.weight"] = torch.zeros(10, 64)
    torch.save({"state_dict": foreign, "epoch": 3}, tmp_path / "ckpt.pth")
    dst = build_backbone("resnet18", width=0.125, in_channels=1)
    load_weights(dst, tmp_path / "ckpt.pth", {r"^backbone\.": "", r"^fc\..*": ""})
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in src.state_dict().items())
    with pytest.raises(ValueError, match=r"missing \[.layer1.*unexpected \[.backbone\.layer1"):
        load_weights(dst, tmp_path / "ckpt.pth", {r"^fc\..*": ""})
