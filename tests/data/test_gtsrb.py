"""GTSRB: .ppm images with the semicolon-separated ground-truth CSVs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslpoison.data.gtsrb import GTSRB_CLASSES, find_gtsrb_dir, load_gtsrb

HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def sign(width: int, height: int, roi: tuple[int, int, int, int], inside, outside) -> Image.Image:
    """An image of colour ``outside`` with the inclusive ROI box filled with ``inside``."""
    a = np.empty((height, width, 3), dtype=np.uint8)
    a[:] = outside
    x1, y1, x2, y2 = roi
    a[y1 : y2 + 1, x1 : x2 + 1] = inside
    return Image.fromarray(a)


def write_class(images_dir: Path, class_id: int, items: list[tuple[str, Image.Image, tuple]]):
    folder = images_dir / f"{class_id:05d}"
    folder.mkdir(parents=True)
    lines = [HEADER]
    for name, im, roi in items:
        im.save(folder / name)
        lines.append(f"{name};{im.width};{im.height};{';'.join(map(str, roi))};{class_id}")
    (folder / f"GT-{class_id:05d}.csv").write_text("\n".join(lines) + "\n")


def make_gtsrb(root: Path) -> None:
    train = root / "GTSRB" / "Final_Training" / "Images"
    roi = (5, 5, 34, 30)
    write_class(train, 0, [("00000_00000.ppm", sign(40, 36, roi, GREEN, RED), roi)])
    exact = np.zeros((32, 32, 3), dtype=np.uint8)
    exact[4, 9] = (10, 20, 30)  # a known pixel at row 4, column 9 (no resize at 32×32)
    write_class(
        train,
        2,
        [
            ("00000_00000.ppm", Image.fromarray(exact), (0, 0, 31, 31)),
            ("00000_00001.ppm", sign(30, 50, (1, 1, 28, 48), BLUE, BLUE), (1, 1, 28, 48)),
        ],
    )
    test = root / "GTSRB" / "Final_Test" / "Images"
    test.mkdir(parents=True)
    sign(45, 45, (0, 0, 44, 44), BLUE, BLUE).save(test / "00000.ppm")
    sign(33, 35, (3, 3, 20, 20), GREEN, RED).save(test / "00001.ppm")
    # The test images archive ships an unlabelled CSV; the labelled one comes separately.
    (test / "GT-final_test.test.csv").write_text(HEADER.rsplit(";", 1)[0] + "\n")
    gt = [HEADER, "00000.ppm;45;45;0;0;44;44;42", "00001.ppm;33;35;3;3;20;20;7"]
    (root / "GT-final_test.csv").write_text("\n".join(gt) + "\n")


def test_train_split(tmp_path: Path) -> None:
    make_gtsrb(tmp_path)
    assert find_gtsrb_dir(tmp_path) == tmp_path
    train = load_gtsrb(tmp_path, "train")
    assert train.images.shape == (3, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [0, 2, 2]
    assert train.num_classes == 43 and train.classes == GTSRB_CLASSES
    assert train.images[1, :, 4, 9].tolist() == [10, 20, 30]
    assert int(train.images[1].count_nonzero()) == 3
    assert (train.images[2, 2] == 255).all() and (train.images[2, :2] == 0).all()
    # Without cropping, the red border survives the resize.
    assert train.images[0, 0, 0, 0] == 255 and train.images[0, 1, 16, 16] == 255


def test_crop_roi_and_size(tmp_path: Path) -> None:
    make_gtsrb(tmp_path)
    cropped = load_gtsrb(tmp_path / "GTSRB", "train", size=16, crop_roi=True)
    assert cropped.images.shape == (3, 3, 16, 16)
    assert (cropped.images[0, 1] == 255).all() and (cropped.images[0, 0] == 0).all()
    assert cropped.meta["crop_roi"] is True


def test_test_split_uses_labelled_csv(tmp_path: Path) -> None:
    make_gtsrb(tmp_path)
    test = load_gtsrb(tmp_path, "test", crop_roi=True)
    assert test.labels.tolist() == [42, 7]
    assert (test.images[0, 2] == 255).all()
    assert (test.images[1, 1] == 255).all() and (test.images[1, 0] == 0).all()


def test_test_split_without_labels(tmp_path: Path) -> None:
    make_gtsrb(tmp_path)
    (tmp_path / "GT-final_test.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"GT-final_test\.csv"):
        load_gtsrb(tmp_path, "test")
    with pytest.raises(ValueError, match="unknown split"):
        load_gtsrb(tmp_path, "val")
