"""scikit-learn's bundled 8×8 handwritten digits (UCI optdigits test set), no files needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sslpoison.data.imageset import ImageSet

DIGITS_CLASSES = [str(i) for i in range(10)]


def load_digits(
    path: Path | None = None, split: str = "train", seed: int = 0, test_size: float = 1 / 3
) -> ImageSet:
    """The 1,797 digits split into a seeded, stratified train / test pair.

    Pixel values 0..16 are scaled to 0..255.

    Args:
        path: unused (the data ships with scikit-learn); kept for the registry's signature.
        split: ``"train"`` or ``"test"``.
        seed: seed of the split.
        test_size: share of images in the test split.

    Returns:
        ImageSet with uint8 images N×1×8×8.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; valid: ['test', 'train']")
    bunch = sk_load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_size, stratify=labels, random_state=seed
    )
    idx = np.sort(train_idx if split == "train" else test_idx)
    return ImageSet(
        torch.from_numpy(images[idx]).unsqueeze(1),
        torch.from_numpy(labels[idx]),
        list(DIGITS_CLASSES),
        meta={"split": split, "seed": seed, "source": "sklearn.datasets.load_digits"},
    )
