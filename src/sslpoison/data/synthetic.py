"""A seeded synthetic labelled image set for tests and quick runs.

Each class is a periodic pattern of its own kind (horizontal stripes, vertical stripes, a
diagonal plaid, an axis-aligned plaid) and, past four classes, its own frequency. Every
kind is symmetric under horizontal flips and crops keep it, so SSL augmentations preserve
the class; each image gets a random phase, slight tilt, contrast, brightness, tint and noise.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from sslpoison.data.imageset import ImageSet

KINDS = ("horizontal", "vertical", "diagonal-plaid", "grid-plaid")
_SPLITS = {"train": 0, "test": 1}
_LOW_FREQ = 1.5  # cycles per image at the lowest level
_MIN_STEP = 0.75  # cycles per image between levels


def _levels_possible(size: int) -> int:
    return max(1, math.floor((size / 3 - _LOW_FREQ) / _MIN_STEP) + 1)


def max_classes(size: int) -> int:
    """How many distinct classes :func:`synthetic` can make at side length ``size``."""
    return len(KINDS) * _levels_possible(size)


def class_names(num_classes: int) -> list[str]:
    """Names of the synthetic classes (kind, plus frequency level past four classes)."""
    if num_classes <= len(KINDS):
        return list(KINDS[:num_classes])
    return [f"{KINDS[c % 4]}-f{c // 4}" for c in range(num_classes)]


def synthetic(
    n: int = 512,
    num_classes: int = 4,
    size: int = 16,
    channels: int = 1,
    seed: int = 0,
    split: str = "train",
) -> ImageSet:
    """``n`` class-balanced pattern images; train and test come from different seeds.

    Args:
        n: number of images.
        num_classes: number of classes (2 .. ``max_classes(size)``).
        size: side length.
        channels: 1 or 3 (three channels get a random per-image tint).
        seed: base seed; the split's stream is derived from it.
        split: ``"train"`` or ``"test"``.

    Returns:
        ImageSet with uint8 images n×channels×size×size.
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {sorted(_SPLITS)}")
    if size < 6:
        raise ValueError(f"size must be >= 6, got {size}")
    if not 2 <= num_classes <= max_classes(size):
        raise ValueError(f"num_classes must lie in [2, {max_classes(size)}] at size {size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLITS[split]]))
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)

    levels = math.ceil(num_classes / len(KINDS))
    step = (size / 3 - _LOW_FREQ) / max(levels - 1, 1)
    base_freq = _LOW_FREQ + (labels // len(KINDS)) * step
    kind = labels % len(KINDS)

    coords = (np.arange(size) + 0.5) / size
    y, x = np.meshgrid(coords, coords, indexing="ij")  # size×size each
    tilt = rng.uniform(-0.12, 0.12, n)[:, None, None]
    freq = (base_freq * rng.uniform(0.95, 1.05, n))[:, None, None] * 2 * np.pi
    phase1 = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    phase2 = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    # Slightly rotated axes u (≈ x) and v (≈ y).
    u = x * np.cos(tilt) + y * np.sin(tilt)
    v = y * np.cos(tilt) - x * np.sin(tilt)
    d1, d2 = (u + v) / np.sqrt(2), (u - v) / np.sqrt(2)
    patterns = np.stack(
        [
            np.cos(freq * v + phase1),
            np.cos(freq * u + phase1),
            0.5 * (np.cos(freq * d1 + phase1) + np.cos(freq * d2 + phase2)),
            0.5 * (np.cos(freq * u + phase1) + np.cos(freq * v + phase2)),
        ]
    )  # 4×n×size×size
    pattern = patterns[kind, np.arange(n)]

    contrast = rng.uniform(0.5, 1.0, n)[:, None, None, None]
    brightness = rng.uniform(-0.15, 0.15, n)[:, None, None, None]
    tint = rng.uniform(0.7, 1.0, (n, channels, 1, 1)) if channels == 3 else 1.0
    noise = rng.normal(0.0, 0.06, (n, channels, size, size))
    image = (0.5 + brightness + 0.5 * contrast * pattern[:, None]) * tint + noise
    images = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
    return ImageSet(
        torch.from_numpy(images),
        torch.from_numpy(labels.astype(np.int64)),
        class_names(num_classes),
        meta={"split": split, "seed": seed, "source": "synthetic"},
    )


def load_synthetic(path: Path | None = None, split: str = "train", **kwargs) -> ImageSet:
    """:func:`synthetic` with the registry's ``(path, split, **kwargs)`` signature."""
    return synthetic(split=split, **kwargs)
