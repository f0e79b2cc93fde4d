"""GTSRB, the German Traffic Sign Recognition Benchmark (Stallkamp et al., 2012).

Training: ``GTSRB/Final_Training/Images/000NN/*.ppm`` with ``GT-000NN.csv`` per class.
Test: ``GTSRB/Final_Test/Images/*.ppm`` with the labelled ``GT-final_test.csv`` (distributed
separately; looked for in the Images folder, ``GTSRB/Final_Test``, ``GTSRB`` and beside
``GTSRB/``). The CSVs are semicolon-separated:
``Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId``. Images vary in size and are
resized (bilinear) to ``size``×``size``, optionally after cropping to the sign's ROI.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sslpoison.data.download import Resource
from sslpoison.data.imageset import ImageSet
from sslpoison.data.pictures import read_image
from sslpoison.errors import DataError, DataFileMissing, one_line

NUM_CLASSES = 43
GTSRB_CLASSES = [
    "Speed limit (20km/h)",
    "Speed limit (30km/h)",
    "Speed limit (50km/h)",
    "Speed limit (60km/h)",
    "Speed limit (70km/h)",
    "Speed limit (80km/h)",
    "End of speed limit (80km/h)",
    "Speed limit (100km/h)",
    "Speed limit (120km/h)",
    "No passing",
    "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection",
    "Priority road",
    "Yield",
    "Stop",
    "No vehicles",
    "Vehicles over 3.5 metric tons prohibited",
    "No entry",
    "General caution",
    "Dangerous curve to the left",
    "Dangerous curve to the right",
    "Double curve",
    "Bumpy road",
    "Slippery road",
    "Road narrows on the right",
    "Road work",
    "Traffic signals",
    "Pedestrians",
    "Children crossing",
    "Bicycles crossing",
    "Beware of ice/snow",
    "Wild animals crossing",
    "End of all speed and passing limits",
    "Turn right ahead",
    "Turn left ahead",
    "Ahead only",
    "Go straight or right",
    "Go straight or left",
    "Keep right",
    "Keep left",
    "Roundabout mandatory",
    "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
]
_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"
GTSRB_RESOURCES = (
    Resource(_URL + "GTSRB_Final_Training_Images.zip", None, extract=True),
    Resource(
        _URL + "GTSRB_Final_Test_Images.zip", "c7e4e6327067d32654124b0fe9e82185", extract=True
    ),
    Resource(_URL + "GTSRB_Final_Test_GT.zip", "fe31e9c9270bbcd7b84b7f21a9d9d9e5", extract=True),
)
_TEST_GT = "GT-final_test.csv"


def _base(path: Path) -> Path:
    return path / "GTSRB" if (path / "GTSRB").is_dir() else path


def _train_dir(base: Path) -> Path | None:
    # The "fixed" training archive unpacks to GTSRB/Training instead.
    for candidate in (base / "Final_Training" / "Images", base / "Training"):
        if candidate.is_dir():
            return candidate
    return None


def _test_gt(base: Path) -> Path | None:
    images = base / "Final_Test" / "Images"
    for folder in (images, base / "Final_Test", base, base.parent):
        if (folder / _TEST_GT).is_file():
            return folder / _TEST_GT
    return None


def find_gtsrb_dir(path: Path) -> Path | None:
    """The folder holding ``GTSRB/`` (or ``GTSRB`` itself) at ``path``, or None."""
    base = _base(path)
    if _train_dir(base) or (base / "Final_Test" / "Images").is_dir():
        return path
    return None


#: An image to read: (file, its CSV row or None, its label, where it was listed).
Item = tuple[Path, dict[str, str] | None, int, str]


def _read_csv(file: Path) -> list[tuple[int, dict[str, str]]]:
    """``(line, row)`` of a semicolon-separated GTSRB CSV, which must name ``Filename``."""
    try:
        with open(file, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=";")
            rows = [
                (reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items() if k})
                for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{file}: not a readable CSV ({one_line(e, 200)})") from None
    if rows and "Filename" not in rows[0][1]:
        raise DataError(f"{file}: no Filename column (columns: {', '.join(rows[0][1])})")
    return rows


def _class_id(file: Path, line: int, row: dict[str, str], default: int | None = None) -> int:
    """The row's ClassId (or ``default``), which must lie in 0..42."""
    raw = row.get("ClassId")
    try:
        label = default if raw is None and default is not None else int(raw or "")
    except ValueError:
        raise DataError(f"{file}, line {line}: ClassId {raw!r} is not a number") from None
    if not 0 <= label < NUM_CLASSES:
        raise DataError(f"{file}, line {line}: ClassId {label} is not in 0..{NUM_CLASSES - 1}")
    return label


def _load_image(item: Item, size: int, crop_roi: bool) -> np.ndarray:
    file, row, _, where = item
    im = read_image(file, "RGB", where)
    if crop_roi and row is not None:
        # ROI corners are inclusive pixel coordinates; clamp to the image.
        try:
            x1, y1 = max(0, int(row["Roi.X1"])), max(0, int(row["Roi.Y1"]))
            x2, y2 = min(im.width, int(row["Roi.X2"]) + 1), min(im.height, int(row["Roi.Y2"]) + 1)
        except (KeyError, ValueError) as e:
            raise DataError(f"{where}: no usable Roi.X1..Roi.Y2 ({one_line(e, 100)})") from None
        if x2 > x1 and y2 > y1:
            im = im.crop((x1, y1, x2, y2))
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def _train_items(folder: Path, empty: list[str]) -> list[Item]:
    """Every training image; the class folders without one are added to ``empty``."""
    items: list[Item] = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()):
        label = int(class_dir.name)
        if label >= NUM_CLASSES:
            raise DataError(f"{class_dir}: GTSRB has classes 00000..{NUM_CLASSES - 1:05d}")
        gt = class_dir / f"GT-{class_dir.name}.csv"
        found = len(items)
        if gt.is_file():
            for line, row in _read_csv(gt):
                cls = _class_id(gt, line, row, default=label)
                items.append((class_dir / row["Filename"], row, cls, f"{gt}, line {line}"))
        else:
            items += [(f, None, label, str(class_dir)) for f in sorted(class_dir.glob("*.ppm"))]
        if len(items) == found:
            empty.append(str(class_dir))
    return items


def _test_items(base: Path) -> list[Item]:
    gt = _test_gt(base)
    if gt is None:
        raise DataFileMissing(
            f"{base}: no {_TEST_GT} with test labels (from GTSRB_Final_Test_GT.zip)"
        )
    rows = _read_csv(gt)
    if rows and "ClassId" not in rows[0][1]:
        raise DataError(f"{gt}: no ClassId column; the labelled file is in GTSRB_Final_Test_GT.zip")
    images = base / "Final_Test" / "Images"
    return [
        (images / row["Filename"], row, _class_id(gt, line, row), f"{gt}, line {line}")
        for line, row in rows
    ]


def load_gtsrb(
    path: str | Path, split: str = "train", size: int = 32, crop_roi: bool = False
) -> ImageSet:
    """Load the ``train`` or ``test`` split, each image resized to ``size``×``size``.

    Args:
        path: the folder holding ``GTSRB/`` (or the ``GTSRB`` folder itself).
        split: ``"train"`` or ``"test"``.
        size: output side length.
        crop_roi: crop each image to the sign's bounding box (from the CSV) first.

    Returns:
        ImageSet with uint8 images N×3×size×size and 43 classes.
    """
    base = _base(Path(path))
    empty: list[str] = []
    if split == "train":
        folder = _train_dir(base)
        if folder is None:
            raise DataFileMissing(f"{base}: no Final_Training/Images folder")
        items = _train_items(folder, empty)
    elif split == "test":
        items = _test_items(base)
    else:
        raise ValueError(f"unknown split {split!r}; valid: ['test', 'train']")
    if not items:
        raise DataFileMissing(f"{base}: no GTSRB {split} images")
    images = np.empty((len(items), 3, size, size), dtype=np.uint8)
    for i, item in enumerate(items):
        images[i] = _load_image(item, size, crop_roi)
    labels = np.array([label for _, _, label, _ in items], dtype=np.int64)
    meta = {"source": str(base), "split": split, "crop_roi": crop_roi, "native_shape": None}
    return ImageSet(
        torch.from_numpy(images),
        torch.from_numpy(labels),
        list(GTSRB_CLASSES),
        meta=meta | ({"empty_classes": empty} if empty else {}),
    )
