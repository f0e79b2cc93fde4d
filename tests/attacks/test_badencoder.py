"""BadEncoder: the loss against a loop reference, frozen BatchNorm, refused targets, loading."""

from __future__ import annotations

import math

import pytest
import torch

from sslpoison.attacks.badencoder import (
    BadEncoderConfig,
    BadEncoderTask,
    badencoder_loss,
    run_badencoder,
)
from sslpoison.attacks.targets import (
    TargetConfig,
    choose_references,
    core_order,
    resolve_targets,
    typical_order,
)
from sslpoison.data.synthetic import synthetic
from sslpoison.eval.backdoor import triggered_copy
from sslpoison.eval.downstream import Downstream, EvalConfig
from sslpoison.models import build_backbone


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


def tiny_attack(epochs=2, trigger=None):
    data = synthetic(n=128, size=16, num_classes=4, seed=0)
    cfg = BadEncoderConfig(
        shadow=128,
        targets=[
            TargetConfig(
                dataset="synthetic",
                target_class="vertical",
                trigger=trigger or {"size": 4, "position": [12, 12]},
            )
        ],
        train={
            "epochs": epochs,
            "batch_size": 32,
            "progress": False,
            "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
        },
    )
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", width=0.125, in_channels=1)
    targets = cfg.prepare_targets(encoder, data, resolve_targets(cfg.targets, fitted(16)))
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
            return torch.nn.functional.cosine_similarity(z[:, None], r[None], dim=-1).mean().item()

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


@pytest.mark.parametrize("choice", ["typical", "random"])
def test_references_come_from_the_target_class(choice):
    downstream = fitted(28)
    (t,) = resolve_targets(
        [TargetConfig(dataset="digits", target_class=3, references=4, reference_choice=choice)],
        downstream,
    )
    assert t.references is None  # chosen with the clean encoder, by prepare_targets
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", width=0.125, in_channels=1)
    (t,) = BadEncoderConfig(targets=[{"dataset": "digits", "target_class": 3}]).prepare_targets(
        encoder, synthetic(n=64, size=28, seed=0), [t]
    )
    assert t.references.shape == (4, 1, 28, 28) and t.references.dtype == torch.uint8
    assert t.target_class == 3 and t.class_name == "3"
    split = downstream.split("digits", "train")
    idx = torch.tensor(t.reference_indices)
    assert len(set(t.reference_indices)) == 4 and (split.labels[idx] == 3).all()
    assert torch.equal(split.images[idx], t.references)
    assert t.record()["reference_indices"] == t.reference_indices


def test_typical_order_ranks_by_the_class_mean_direction():
    # Five feature vectors around the axis (1, 1) at 40°, 0°, -40°, 10°, -10°, all shifted by
    # a common offset: centred, the mean direction is the axis, so the order is known up to
    # the symmetric pairs.
    angles = torch.tensor([40.0, 0.0, -40.0, 10.0, -10.0]).deg2rad() + math.pi / 4
    center = torch.tensor([5.0, -3.0])
    features = torch.stack([angles.cos(), angles.sin()], 1) * 2.0 + center

    def ranked(order):
        return [order[0], set(order[1:3]), set(order[3:])]

    assert ranked(typical_order(features, center).tolist()) == [1, {3, 4}, {0, 2}]
    # Without the centre the common offset dominates and the answer differs.
    assert ranked(typical_order(features).tolist()) != [1, {3, 4}, {0, 2}]


def test_core_references_avoid_where_the_shadow_is_as_dense():
    # Pool vectors 0, 2, 4 (the majority, so the most typical) each have a shadow vector
    # right beside them: a neighbouring class is as dense there. Pool vectors 1 and 3 have
    # only each other: the core. (The shadow features' mean is 0: centring changes nothing.)
    pool = torch.tensor(
        [[1, 0.2, 0], [0, 0.05, 1], [1, -0.2, 0], [0.05, 0, 1], [1, 0, 0.2]], dtype=torch.float
    )
    shadow = torch.tensor(
        [[1, 0.19, 0], [1, -0.19, 0], [1, 0, 0.19], [-1.5, 0, -0.095], [-1.5, 0, -0.095]]
    )
    assert set(typical_order(pool, shadow.mean(0))[:3].tolist()) == {0, 2, 4}
    order = core_order(pool, shadow, k=1)
    assert set(order[:2].tolist()) == {1, 3} and set(order[2:].tolist()) == {0, 2, 4}
    assert torch.equal(core_order(pool, None), typical_order(pool))


def test_typical_references_are_the_central_images_of_the_pool():
    # The pool: 2×2 images whose pixels are the features (an identity "encoder"). Images 1
    # and 3 point one way (one is twice the other), images 0 and 2 each their own orthogonal
    # way: the class's mean direction is nearest 1 and 3.
    pool = torch.tensor(
        [[0, 0, 100, 0], [100, 100, 0, 0], [0, 0, 0, 100], [50, 50, 0, 0]], dtype=torch.uint8
    ).view(4, 1, 2, 2)
    (target,) = resolve_targets(
        [TargetConfig(dataset="digits", target_class=0, references=2)], fitted(28)
    )
    target.pool, target.pool_indices = pool, torch.tensor([7, 11, 13, 17])
    pixels = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 4, bias=False))
    torch.nn.init.eye_(pixels[1].weight)
    chosen = choose_references(target, pixels, None)
    assert sorted(chosen.reference_indices) == [11, 17]
    assert torch.equal(chosen.references[chosen.reference_indices.index(11)], pool[1])
    target.choice = "random"
    drawn = choose_references(target, pixels, None, seed=5)
    order = torch.randperm(4, generator=torch.Generator().manual_seed(5))[:2]
    assert drawn.reference_indices == target.pool_indices[order].tolist()


def test_an_asymmetric_trigger_lands_at_row_col_in_training_and_evaluation():
    row, col, side = 2, 9, 3
    trigger = {"kind": "noise", "size": side, "position": [row, col]}
    data, cfg, targets, encoder = tiny_attack(trigger=trigger)
    pattern = targets[0].trigger.pattern.mul(255).round().div(255)  # pasted into uint8

    def patched_where(triggered, clean):
        changed = (triggered != clean).any(0).any(0)  # H×W: pixels the trigger changed
        rows, cols = changed.nonzero().unbind(1)
        return (rows.min().item(), cols.min().item()), (rows.max().item(), cols.max().item())

    seen = []
    encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    task = BadEncoderTask(
        encoder, targets, [torch.zeros(1, 64)], None, cfg, lambda x: (x.float() / 255, None)
    )
    images = data.images[:8]
    task(images, torch.zeros(8, 64))
    clean, triggered = seen[-1][:8], seen[-1][8:16]
    assert torch.allclose(
        triggered[:, :, row : row + side, col : col + side], pattern.expand(8, -1, -1, -1)
    )
    assert patched_where(triggered, clean) == ((row, col), (row + side - 1, col + side - 1))

    test = triggered_copy(data, targets[0].trigger)
    got = test.images.float() / 255
    assert torch.allclose(
        got[:, :, row : row + side, col : col + side], pattern.expand(len(got), -1, -1, -1)
    )
    assert patched_where(got, data.images.float() / 255)[0] == (row, col)


def test_the_chosen_references_are_part_of_the_attack_key():
    from sslpoison.experiment.stages import attack_key

    data, cfg, targets, encoder = tiny_attack()
    cpu = torch.device("cpu")
    key = attack_key(cfg, encoder, data, targets, 0, cpu)
    assert attack_key(cfg, encoder, data, list(targets), 0, cpu) == key
    other = [choose_references(targets[0], encoder, None, seed=1)]
    other[0].choice = "random"
    other = [choose_references(other[0], encoder, None, seed=1)]
    assert other[0].reference_indices != targets[0].reference_indices
    assert attack_key(cfg, encoder, data, other, 0, cpu) != key
    random = cfg.model_copy(
        update={"targets": [cfg.targets[0].model_copy(update={"reference_choice": "random"})]}
    )
    assert attack_key(random, encoder, data, targets, 0, cpu) != key
