"""STL-10 (Coates et al., 2011) from its genuine binary files.

``*_X.bin`` holds uint8 images, each 3×96×96 written column-major (MATLAB order): read as
N×3×96×96 the last two axes are (column, row), so they are swapped back. ``*_y.bin`` holds
uint8 labels 1..10. The 100,000 ``unlabeled_X.bin`` images are memory-mapped, so the first
``limit`` of them can be read without loading the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sslpoison.data.download import Resource
from sslpoison.data.imageset import ImageSet
from sslpoison.errors import DataError, DataFileMissing

STL10_DIR = "stl10_binary"
SIDE = 96
_IMAGE_BYTES = 3 * SIDE * SIDE
STL10_CLASSES = [
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
]  # fmt: skip
STL10_RESOURCES = (
    Resource(
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        "91f7769df0f17e558f3565bffb0c7dfb",
        extract=True,
    ),
)
_FILES = {
    "train": ("train_X.bin", "train_y.bin"),
    "test": ("test_X.bin", "test_y.bin"),
    "unlabeled": ("unlabeled_X.bin", None),
}


def find_stl10_dir(path: Path) -> Path | None:
    """The ``stl10_binary`` folder at or under ``path``, or None."""
    for candidate in (path / STL10_DIR, path):
        if (candidate / "train_X.bin").is_file() or (candidate / "test_X.bin").is_file():
            return candidate
    return None


def read_images(path: str | Path, limit: int | None = None) -> np.ndarray:
    """Read (the first ``limit``) images of an STL-10 ``*_X.bin`` file as N×3×96×96 uint8."""
    path = Path(path)
    if not path.is_file():
        raise DataFileMissing(f"{path}: not found")
    size = path.stat().st_size
    if size % _IMAGE_BYTES:
        raise DataError(f"{path}: {size} bytes is not a whole number of 3×96×96 images")
    n = size // _IMAGE_BYTES
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        n = min(n, limit)
    if n == 0:
        return np.zeros((0, 3, SIDE, SIDE), dtype=np.uint8)
    stored = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, 3, SIDE, SIDE))
    return np.ascontiguousarray(stored.transpose(0, 1, 3, 2))


def read_labels(path: str | Path) -> np.ndarray:
    """Read an STL-10 ``*_y.bin`` file: uint8 labels 1..10 → int64 0..9."""
    path = Path(path)
    if not path.is_file():
        raise DataFileMissing(f"{path}: not found")
    raw = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    if raw.size and (raw.min() < 1 or raw.max() > 10):
        raise DataError(f"{path}: labels must lie in 1..10, got [{raw.min()}, {raw.max()}]")
    return raw - 1


def _class_names(folder: Path) -> list[str]:
    file = folder / "class_names.txt"
    if not file.is_file():
        return list(STL10_CLASSES)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{file}: cannot be read as text ({e})") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if names and len(names) != len(STL10_CLASSES):
        raise DataError(f"{file}: {len(names)} class names; STL-10 has {len(STL10_CLASSES)}")
    return names or list(STL10_CLASSES)


def load_stl10(path: str | Path, split: str = "train", limit: int | None = None) -> ImageSet:
    """Load the ``train``, ``test`` or ``unlabeled`` split (the first ``limit`` images).

    Unlabeled images get label 0; ``meta["unlabeled"]`` is then True.

    Returns:
        ImageSet with uint8 images N×3×96×96.
    """
    folder = find_stl10_dir(Path(path)) or Path(path)
    if split not in _FILES:
        raise ValueError(f"unknown split {split!r}; valid: {sorted(_FILES)}")
    x_name, y_name = _FILES[split]
    images = read_images(folder / x_name, limit)
    meta: dict = {"source": str(folder), "split": split}
    if y_name is None:
        labels = np.zeros(len(images), dtype=np.int64)
        meta["unlabeled"] = True
        meta["note"] = "STL-10 unlabeled split: no labels; every label is 0"
    else:
        labels = read_labels(folder / y_name)[: len(images)]
        if len(labels) != len(images):
            raise DataError(f"{folder / y_name}: {len(labels)} labels for {len(images)} images")
    return ImageSet(
        torch.from_numpy(images), torch.from_numpy(labels), _class_names(folder), meta=meta
    )
