"""SVHN cropped digits (Netzer et al., 2011) from the genuine ``*_32x32.mat`` files.

``X`` is 32×32×3×N (row, column, channel, image); ``y`` is N×1 with digit 0 stored as 10.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sslpoison.data.download import Resource
from sslpoison.data.imageset import ImageSet
from sslpoison.errors import DataError, DataFileMissing, one_line

SVHN_CLASSES = [str(i) for i in range(10)]
_URL = "http://ufldl.stanford.edu/housenumbers/"
SVHN_RESOURCES = (
    Resource(_URL + "train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
    Resource(_URL + "test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
)
_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}


def find_svhn_dir(path: Path) -> Path | None:
    """``path`` when it holds ``train_32x32.mat`` or ``test_32x32.mat``, else None."""
    ok = (path / _FILES["train"]).is_file() or (path / _FILES["test"]).is_file()
    return path if ok else None


def load_svhn(path: str | Path, split: str = "train") -> ImageSet:
    """Load the ``train``, ``test`` (or, when present, ``extra``) split.

    Returns:
        ImageSet with uint8 images N×3×32×32 and labels 0..9 (10 in the file → 0).
    """
    from scipy.io import loadmat

    if split not in _FILES:
        raise ValueError(f"unknown split {split!r}; valid: {sorted(_FILES)}")
    file = Path(path) / _FILES[split]
    if not file.is_file():
        raise DataFileMissing(f"{file}: not found")
    try:
        mat = loadmat(file)
    except NotImplementedError:  # a MATLAB v7.3 (HDF5) file
        raise DataError(f"{file}: a MATLAB v7.3 file; SVHN's are v5 .mat files") from None
    except Exception as e:  # scipy raises many kinds (MatReadError, ValueError, ...)
        raise DataError(f"{file}: not a readable .mat file ({one_line(e, 200)})") from None
    x, y = mat.get("X"), mat.get("y")
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise DataError(f"{file}: expected variables 'X' and 'y'")
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{file}: expected X of shape 32×32×3×N, got {x.shape}")
    try:
        labels = np.asarray(y, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DataError(f"{file}: 'y' is not numeric ({e})") from None
    if labels.shape[0] != x.shape[3]:
        raise DataError(f"{file}: {labels.shape[0]} labels for {x.shape[3]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 10):
        raise DataError(f"{file}: 'y' must lie in 1..10, got [{labels.min()}, {labels.max()}]")
    labels[labels == 10] = 0
    images = np.ascontiguousarray(np.asarray(x, dtype=np.uint8).transpose(3, 2, 0, 1))
    return ImageSet(
        torch.from_numpy(images),
        torch.from_numpy(labels),
        list(SVHN_CLASSES),
        meta={"source": str(Path(path)), "split": split},
    )
