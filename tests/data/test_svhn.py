"""SVHN ``.mat`` files written with scipy in the genuine 32×32×3×N layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

from sslpoison.data.svhn import find_svhn_dir, load_svhn


def write_svhn(path: Path, n: int, labels: list[int]) -> np.ndarray:
    x = np.zeros((32, 32, 3, n), dtype=np.uint8)  # row, column, channel, image
    x[3, 7, 0, 1] = 200
    x[31, 0, 2, n - 1] = 99
    savemat(path, {"X": x, "y": np.array(labels, dtype=np.uint8).reshape(n, 1)})
    return x


def test_load_svhn_layout_and_labels(tmp_path: Path) -> None:
    write_svhn(tmp_path / "train_32x32.mat", 3, [10, 1, 9])
    write_svhn(tmp_path / "test_32x32.mat", 2, [5, 10])
    assert find_svhn_dir(tmp_path) == tmp_path
    train = load_svhn(tmp_path, "train")
    assert train.images.shape == (3, 3, 32, 32) and train.images.dtype == torch.uint8
    assert int(train.images[1, 0, 3, 7]) == 200 and int(train.images[1, 0, 7, 3]) == 0
    assert int(train.images[2, 2, 31, 0]) == 99
    assert int(train.images.count_nonzero()) == 2
    assert train.labels.tolist() == [0, 1, 9] and train.labels.dtype == torch.int64
    assert train.classes == [str(i) for i in range(10)]
    assert load_svhn(tmp_path, "test").labels.tolist() == [5, 0]


def test_svhn_errors(tmp_path: Path) -> None:
    assert find_svhn_dir(tmp_path) is None
    with pytest.raises(FileNotFoundError, match=r"extra_32x32\.mat"):
        load_svhn(tmp_path, "extra")
    with pytest.raises(ValueError, match="unknown split"):
        load_svhn(tmp_path, "val")
    savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((3, 32, 32, 2), np.uint8), "y": [[1]]})
    with pytest.raises(ValueError, match="32×32×3×N"):
        load_svhn(tmp_path, "train")
