"""The built-in sets: scikit-learn's 8×8 digits and the seeded synthetic patterns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sslpoison.data.digits import load_digits
from sslpoison.data.synthetic import class_names, max_classes, synthetic


def test_digits_split() -> None:
    train, test = load_digits(split="train"), load_digits(split="test")
    assert len(train) + len(test) == 1797 and len(test) == 599
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.uint8
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    assert train.classes == [str(i) for i in range(10)]
    # Stratified: each class's test share is about one third.
    share = torch.bincount(test.labels, minlength=10) / (
        torch.bincount(test.labels, minlength=10) + torch.bincount(train.labels, minlength=10)
    )
    assert ((share - 1 / 3).abs() < 0.02).all()
    # Deterministic, and the two splits hold different images.
    assert torch.equal(load_digits(split="train").images, train.images)
    train_keys = {bytes(im.numpy()) for im in train.images}
    shared = sum(bytes(im.numpy()) in train_keys for im in test.images)
    assert shared < 5  # the source set has a handful of exact duplicates
    assert not torch.equal(load_digits(split="train", seed=1).images, train.images)


def test_synthetic_shape_balance_and_determinism() -> None:
    a = synthetic(n=64, num_classes=4, size=16, seed=3)
    assert a.images.shape == (64, 1, 16, 16) and a.images.dtype == torch.uint8
    assert torch.bincount(a.labels).tolist() == [16] * 4
    assert a.classes == ["horizontal", "vertical", "diagonal-plaid", "grid-plaid"]
    b = synthetic(n=64, num_classes=4, size=16, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    test = synthetic(n=64, num_classes=4, size=16, seed=3, split="test")
    assert not torch.equal(a.images, test.images)
    assert not torch.equal(synthetic(n=64, seed=4).images, a.images)
    rgb = synthetic(n=8, channels=3, size=12)
    assert rgb.images.shape == (8, 3, 12, 12)
    assert len(class_names(10)) == 10 and class_names(10)[4] == "horizontal-f1"


def _power_features(images: torch.Tensor) -> np.ndarray:
    x = images.float().numpy()[:, 0]
    x = x - x.mean(axis=(1, 2), keepdims=True)
    p = np.abs(np.fft.fft2(x)) ** 2
    p /= p.sum(axis=(1, 2), keepdims=True)
    return p.reshape(len(x), -1)


@pytest.mark.parametrize("num_classes", [4, 8])
def test_synthetic_classes_are_separable_and_flip_invariant(num_classes: int) -> None:
    train = synthetic(n=400, num_classes=num_classes, size=16, seed=0)
    test = synthetic(n=200, num_classes=num_classes, size=16, seed=0, split="test")
    f = _power_features(train.images)
    centroids = np.stack([f[train.labels.numpy() == c].mean(0) for c in range(num_classes)])

    def accuracy(images: torch.Tensor) -> float:
        g = _power_features(images)
        pred = ((g[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
        return float((pred == test.labels.numpy()).mean())

    assert accuracy(test.images) > 0.9
    assert accuracy(test.images.flip(-1)) > 0.9  # horizontal flips keep the class
    # Shifted crops keep every class; rescaled crops keep the pattern kind (the only cue with
    # four classes), while past four classes they also change the frequency level.
    shifted = torch.nn.functional.pad(test.images[:, :, 2:, 2:].float(), (0, 2, 0, 2), "replicate")
    assert accuracy(shifted.byte()) > 0.9
    if num_classes == 4:
        crops = test.images[:, :, 2:14, 2:14].float()
        crops = torch.nn.functional.interpolate(crops, size=16, mode="bilinear")
        assert accuracy(crops.round().byte()) > 0.9


def test_synthetic_validation() -> None:
    with pytest.raises(ValueError, match="split"):
        synthetic(split="val")
    with pytest.raises(ValueError, match="num_classes"):
        synthetic(num_classes=max_classes(16) + 1)
    with pytest.raises(ValueError, match="channels"):
        synthetic(channels=2)
