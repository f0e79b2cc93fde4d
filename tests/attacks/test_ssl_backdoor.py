"""SSL-Backdoor poisoning: exact counts, only the target class touched, patches where recorded."""

from __future__ import annotations

import pytest
import torch

from sslpoison.attacks.ssl_backdoor import SSLBackdoorConfig, evaluation_trigger, poison
from sslpoison.data.synthetic import synthetic
from sslpoison.triggers import PatchTrigger


@pytest.fixture
def data():
    return synthetic(n=200, num_classes=4, size=16, channels=1, seed=0)


@pytest.mark.parametrize(("amount", "expected"), [(0.5, None), (7, 7), (1.0, None)])
def test_exact_count_of_target_images_poisoned(data, amount, expected):
    cfg = SSLBackdoorConfig(target_class="vertical", poison=amount, trigger={"size": 4})
    out = poison(data, cfg, seed=3)
    in_class = int((data.labels == 1).sum())
    n = expected if expected is not None else round(amount * in_class)
    assert out.indices.numel() == n == out.corners.shape[0]
    assert out.indices.unique().numel() == n
    assert bool((data.labels[out.indices] == 1).all())
    assert out.rates == {"rate_of_set": n / 200, "rate_of_target_class": n / in_class}


def test_only_poisoned_images_change_and_patches_sit_where_recorded(data):
    cfg = SSLBackdoorConfig(
        target_class=2, poison=0.5, trigger={"kind": "noise", "size": 5, "box": [0.25, 0.75]}
    )
    out = poison(data, cfg, seed=0)
    assert torch.equal(out.data.labels, data.labels)
    changed = (out.data.images != data.images).flatten(1).any(1).nonzero().squeeze(1)
    assert set(changed.tolist()) <= set(out.indices.tolist())  # nothing else touched
    untouched = torch.ones(200, dtype=torch.bool)
    untouched[out.indices] = False
    assert torch.equal(out.data.images[untouched], data.images[untouched])
    pattern = (PatchTrigger(cfg.trigger, 1, 16).pattern * 255).round().to(torch.uint8)
    for i, (r, c) in zip(out.indices.tolist(), out.corners.tolist(), strict=True):
        assert 4 <= r <= 12 - 5 and 4 <= c <= 12 - 5  # inside the 25–75 % box
        assert torch.equal(out.data.images[i, :, r : r + 5, c : c + 5], pattern)
        outside = torch.ones(16, 16, dtype=torch.bool)
        outside[r : r + 5, c : c + 5] = False
        assert torch.equal(out.data.images[i, 0][outside], data.images[i, 0][outside])


def test_same_seed_same_poisons_and_the_test_box(data):
    cfg = SSLBackdoorConfig(target_class=0, poison=10, trigger={"size": 3})
    a, b = poison(data, cfg, seed=5), poison(data, cfg, seed=5)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.data.images, b.data.images)
    trigger = evaluation_trigger(cfg, channels=1, image_size=16)
    assert trigger.corner_range == (round(0.1 * 16), round(0.9 * 16) - 3)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"target_class": 9}, "attack.target_class: 9 is outside"),
        ({"target_class": "cats"}, "attack.target_class: 'cats' is not a class"),
        ({"target_class": 0, "poison": 10_000}, "attack.poison: 10000 gives 10000 images"),
        ({"target_class": 0, "trigger": {"size": 20}}, "attack.trigger: trigger size 20 px"),
    ],
)
def test_impossible_poisoning_is_refused_by_name(data, cfg, message):
    with pytest.raises(ValueError, match=message):
        poison(data, SSLBackdoorConfig(**cfg))
