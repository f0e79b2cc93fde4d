"""Generic image folders of PNG / JPEG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslpoison.data.folder import find_image_folder, load_image_folder


def save(path: Path, size: tuple[int, int] = (8, 6), pixel=None, colour=(0, 0, 0)) -> None:
    """An RGB image of ``size`` (width, height); ``pixel`` is (row, col, rgb)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.empty((size[1], size[0], 3), dtype=np.uint8)
    a[:] = colour
    if pixel is not None:
        row, col, rgb = pixel
        a[row, col] = rgb
    Image.fromarray(a).save(path)


def test_flat_folder(tmp_path: Path) -> None:
    save(tmp_path / "dog" / "b.png", pixel=(1, 6, (1, 2, 3)))
    save(tmp_path / "dog" / "a.PNG")
    save(tmp_path / "cat" / "x.bmp", colour=(9, 9, 9))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    assert find_image_folder(tmp_path) == tmp_path
    data = load_image_folder(tmp_path)
    assert data.classes == ["cat", "dog", "empty"]
    assert data.images.shape == (3, 3, 6, 8) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [0, 1, 1]
    assert data.images[2, :, 1, 6].tolist() == [1, 2, 3]  # b.png sorts after a.PNG
    assert (data.images[0] == 9).all()
    with pytest.raises(FileNotFoundError, match="no val/ or test/"):
        load_image_folder(tmp_path, "test")


def test_sizes_differ(tmp_path: Path) -> None:
    save(tmp_path / "a" / "1.png", size=(8, 8), colour=(200, 100, 50))
    save(tmp_path / "b" / "2.jpg", size=(10, 12), colour=(0, 0, 0))
    with pytest.raises(ValueError, match=r"2\.jpg.*pass size="):
        load_image_folder(tmp_path)
    data = load_image_folder(tmp_path, size=4)
    assert data.images.shape == (2, 3, 4, 4)
    assert data.images[0, :, 2, 2].tolist() == [200, 100, 50]
    gray = load_image_folder(tmp_path, size=4, channels=1)
    assert gray.images.shape == (2, 1, 4, 4)
    assert int(gray.images[0, 0, 0, 0]) == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)


def test_train_val_layout(tmp_path: Path) -> None:
    save(tmp_path / "train" / "a" / "1.png")
    save(tmp_path / "train" / "c" / "1.png")
    save(tmp_path / "val" / "b" / "1.png")
    save(tmp_path / "val" / "c" / "2.png")
    assert find_image_folder(tmp_path) == tmp_path
    train = load_image_folder(tmp_path, "train")
    test = load_image_folder(tmp_path, "test")
    assert train.classes == test.classes == ["a", "b", "c"]
    assert train.labels.tolist() == [0, 2] and test.labels.tolist() == [1, 2]
    assert load_image_folder(tmp_path, "val").labels.tolist() == [1, 2]
    with pytest.raises(ValueError, match="channels"):
        load_image_folder(tmp_path, channels=2)
    with pytest.raises(ValueError, match="unknown split 'extra'"):
        load_image_folder(tmp_path, "extra")


def test_no_images(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert find_image_folder(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no images"):
        load_image_folder(tmp_path)
