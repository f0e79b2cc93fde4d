"""STL-10 binaries written in the genuine column-major layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sslpoison.data.stl10 import STL10_CLASSES, find_stl10_dir, load_stl10, read_images

SIDE = 96
PLANE = SIDE * SIDE


def write_x(path: Path, pixels: list[tuple[int, int, int, int, int]], n: int) -> None:
    """Write n images; ``pixels`` are (image, channel, row, column, value).

    MATLAB wrote each 96×96×3 image column-major: within a channel plane the row index varies
    fastest, so (row, column) sits at byte ``column * 96 + row``.
    """
    buf = bytearray(n * 3 * PLANE)
    for image, channel, row, col, value in pixels:
        buf[image * 3 * PLANE + channel * PLANE + col * SIDE + row] = value
    path.write_bytes(bytes(buf))


def make_stl10(root: Path) -> Path:
    base = root / "stl10_binary"
    base.mkdir(parents=True)
    write_x(base / "train_X.bin", [(0, 0, 3, 70, 200), (1, 2, 95, 0, 50)], n=2)
    (base / "train_y.bin").write_bytes(bytes([1, 10]))
    write_x(base / "test_X.bin", [(0, 1, 10, 20, 7)], n=1)
    (base / "test_y.bin").write_bytes(bytes([4]))
    write_x(base / "unlabeled_X.bin", [(i, 0, i, 2 * i, i + 1) for i in range(5)], n=5)
    (base / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")
    return base


def test_known_pixels_land_at_row_and_column(tmp_path: Path) -> None:
    base = make_stl10(tmp_path)
    assert find_stl10_dir(tmp_path) == base
    train = load_stl10(tmp_path, "train")
    assert train.images.shape == (2, 3, 96, 96) and train.images.dtype == torch.uint8
    assert int(train.images[0, 0, 3, 70]) == 200 and int(train.images[0, 0, 70, 3]) == 0
    assert int(train.images[1, 2, 95, 0]) == 50
    assert int(train.images.count_nonzero()) == 2
    assert train.labels.tolist() == [0, 9] and train.labels.dtype == torch.int64
    assert train.classes == STL10_CLASSES
    test = load_stl10(base, "test")
    assert test.labels.tolist() == [3] and int(test.images[0, 1, 10, 20]) == 7


def test_unlabeled_limit_and_meta(tmp_path: Path) -> None:
    make_stl10(tmp_path)
    full = load_stl10(tmp_path, "unlabeled")
    assert len(full) == 5 and full.labels.tolist() == [0] * 5
    assert full.meta["unlabeled"] is True and "no labels" in full.meta["note"]
    part = load_stl10(tmp_path, "unlabeled", limit=3)
    assert part.images.shape == (3, 3, 96, 96)
    assert [int(part.images[i, 0, i, 2 * i]) for i in range(3)] == [1, 2, 3]
    assert len(load_stl10(tmp_path, "unlabeled", limit=0)) == 0
    assert len(load_stl10(tmp_path, "unlabeled", limit=100)) == 5


def test_class_names_file_is_read(tmp_path: Path) -> None:
    base = make_stl10(tmp_path)
    (base / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    assert load_stl10(base).classes == [f"c{i}" for i in range(10)]


def test_errors(tmp_path: Path) -> None:
    base = make_stl10(tmp_path)
    (base / "bad_X.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="whole number"):
        read_images(base / "bad_X.bin")
    (base / "test_y.bin").write_bytes(bytes([0]))
    with pytest.raises(ValueError, match=r"1\.\.10"):
        load_stl10(base, "test")
    with pytest.raises(ValueError, match="unknown split"):
        load_stl10(base, "extra")
    assert read_images(base / "train_X.bin").flags["C_CONTIGUOUS"]
    assert isinstance(read_images(base / "train_X.bin", limit=1), np.ndarray)
