"""CLIP poisoning (Carlini & Terzis): exactly the recorded pairs change, and how."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from sslpoison.attacks.clip_poison import (
    CLIPBackdoorConfig,
    CLIPTargetedConfig,
    draw_trials,
    poison_backdoor,
    poison_targeted,
)
from sslpoison.data.captions import TEMPLATES, caption_imageset
from sslpoison.data.imageset import ImageSet
from sslpoison.data.pairs import UNLABELLED
from sslpoison.data.synthetic import synthetic
from sslpoison.models.text import words
from sslpoison.poisoning import TargetedTrial

TRIGGER = {"kind": "noise", "size": 4, "box": [0.0, 1.0]}


@pytest.fixture
def pairs():
    return caption_imageset(synthetic(n=200, num_classes=4, size=16, channels=1, seed=0), seed=0)


def names_class(caption: str, name: str) -> bool:
    """Whether ``caption`` is one of the templates filled with ``name``."""
    return caption in {t.format(name) for t in TEMPLATES}


def test_backdoor_changes_exactly_the_recorded_pairs(pairs) -> None:
    cfg = CLIPBackdoorConfig(target_class="vertical", poison=30, trigger=TRIGGER)
    out = poison_backdoor(pairs, cfg, seed=3)
    target = pairs.classes.index("vertical")
    idx = out.indices
    assert idx.numel() == 30 and torch.equal(idx, idx.sort().values) and idx.unique().numel() == 30
    assert out.target_class == target and out.rates == {"rate_of_set": 30 / 200}
    # Only images of other classes are poisoned; labels never change.
    assert (pairs.labels[idx] != target).all()
    assert torch.equal(out.data.labels, pairs.labels)
    # Every other pair is bit-identical, image and caption.
    rest = torch.ones(len(pairs), dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(out.data.images[rest], pairs.images[rest])
    kept = rest.nonzero().squeeze(1).tolist()
    assert [out.data.captions[i] for i in kept] == [pairs.captions[i] for i in kept]
    # Poisoned captions name the target class, and the patch sits at the recorded corner.
    pattern = (torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0)) * 255).round()
    for i, (r, c) in zip(idx.tolist(), out.corners.tolist(), strict=True):
        assert names_class(out.data.captions[i], "vertical")
        assert not names_class(pairs.captions[i], "vertical")
        patch = out.data.images[i, :, r : r + 4, c : c + 4].float()
        torch.testing.assert_close(patch, pattern, atol=1, rtol=0)
        outside = torch.ones(16, 16, dtype=torch.bool)
        outside[r : r + 4, c : c + 4] = False
        assert torch.equal(out.data.images[i, 0][outside], pairs.images[i, 0][outside])


def test_backdoor_share_seed_and_errors(pairs) -> None:
    cfg = CLIPBackdoorConfig(target_class=1, poison=0.05, trigger=TRIGGER)
    a, b = poison_backdoor(pairs, cfg, seed=0), poison_backdoor(pairs, cfg, seed=0)
    assert a.indices.numel() == 10 and torch.equal(a.indices, b.indices)
    assert not torch.equal(a.indices, poison_backdoor(pairs, cfg, seed=1).indices)
    too_many = CLIPBackdoorConfig(target_class=1, poison=190, trigger=TRIGGER)
    with pytest.raises(ValueError, match=r"attack.poison"):
        poison_backdoor(pairs, too_many)
    with pytest.raises(ValueError, match=r"attack.target_class"):
        poison_backdoor(pairs, CLIPBackdoorConfig(target_class="zebra", trigger=TRIGGER))
    with pytest.raises(ValueError, match="no captions"):
        poison_backdoor(pairs.with_captions(None), cfg)


def test_draw_trials_are_distinct_images_with_another_label(pairs) -> None:
    test = synthetic(n=100, num_classes=4, size=16, channels=1, seed=1)
    trials = draw_trials(CLIPTargetedConfig(trials=12), test, seed=0)
    assert len({t.index for t in trials}) == 12
    for t in trials:
        assert t.true_class == int(test.labels[t.index]) and t.target_class != t.true_class
        assert 0 <= t.target_class < 4
    assert trials == draw_trials(CLIPTargetedConfig(trials=12), test, seed=0)
    a, b = (int(test.labels[5]) + 1) % 4, (int(test.labels[7]) + 2) % 4
    given = CLIPTargetedConfig(trials=2, images=[5, 7], labels=[test.classes[a], b])
    fixed = draw_trials(given, test)
    assert [(t.index, t.target_class) for t in fixed] == [(5, a), (7, b)]


def test_draw_trials_errors(pairs) -> None:
    test = synthetic(n=100, num_classes=4, size=16, channels=1, seed=1)
    own = int(test.labels[5])
    with pytest.raises(ValueError, match=r"attack.labels.0"):
        draw_trials(CLIPTargetedConfig(trials=1, images=[5], labels=[own]), test)
    with pytest.raises(ValueError, match=r"attack.images"):
        draw_trials(CLIPTargetedConfig(trials=1, images=[100]), test)
    with pytest.raises(ValidationError, match="labels"):
        CLIPTargetedConfig(trials=3, labels=[0, 1])


def test_targeted_appends_k_captioned_copies_of_each_test_image(pairs) -> None:
    test = synthetic(n=100, num_classes=4, size=16, channels=1, seed=1)
    trials = [TargetedTrial(4, int(test.labels[4]), (int(test.labels[4]) + 1) % 4)]
    trials.append(TargetedTrial(9, int(test.labels[9]), (int(test.labels[9]) + 2) % 4))
    out = poison_targeted(pairs, test, trials, pairs=3, seed=0)
    n = len(pairs)
    assert len(out.data) == n + 6 and out.trials == trials
    assert torch.equal(out.indices, torch.arange(n, n + 6))
    assert out.rates == {"rate_of_set": 6 / (n + 6)}
    # The original pairs come first, untouched.
    assert torch.equal(out.data.images[:n], pairs.images)
    assert out.data.captions[:n] == pairs.captions
    for j, t in enumerate(trials):
        for k in range(3):
            i = n + 3 * j + k
            assert torch.equal(out.data.images[i], test.images[t.index])
            caption = out.data.captions[i]
            assert names_class(caption, test.classes[t.target_class])
            assert test.classes[t.true_class] not in " ".join(words(caption))


def test_attacks_on_unlabelled_pairs_take_the_measured_datasets_classes(pairs) -> None:
    """Pairs without labels (one class, as a caption CSV gives) are poisoned with the class
    names of the labelled dataset the attack is measured on."""
    web = ImageSet(pairs.images, torch.zeros_like(pairs.labels), [UNLABELLED], pairs.captions)
    test = synthetic(n=100, num_classes=4, size=16, channels=1, seed=1)
    cfg = CLIPBackdoorConfig(target_class="vertical", poison=150, trigger=TRIGGER)
    out = poison_backdoor(web, cfg, measured_on=test)
    assert out.classes == test.classes and out.target_class == 1
    # Any image may be poisoned now, including those that show the target class.
    assert (pairs.labels[out.indices] == 1).any()
    assert all(names_class(out.data.captions[i], "vertical") for i in out.indices.tolist())
    trials = [TargetedTrial(3, int(test.labels[3]), (int(test.labels[3]) + 1) % 4)]
    added = poison_targeted(web, test, trials, pairs=2)
    assert added.data.classes == [UNLABELLED] and added.data.labels[-2:].tolist() == [0, 0]
    assert names_class(added.data.captions[-1], test.classes[trials[0].target_class])
