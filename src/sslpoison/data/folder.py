"""A generic image folder: ``root/<class>/*.png`` (or ``root/train|val|test/<class>/...``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sslpoison.data.imageset import ImageSet
from sslpoison.data.pictures import read_image
from sslpoison.errors import DataError, DataFileMissing

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".webp"})
_SPLIT_DIRS = {"train": ("train",), "test": ("val", "test"), "val": ("val", "test")}


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_root(root: Path, split: str) -> Path:
    has_split_dirs = any((root / d).is_dir() for d in ("train", "val", "test"))
    if not has_split_dirs:
        if split != "train":
            raise DataFileMissing(
                f"{root}: no val/ or test/ subfolder, so there is no {split!r} split "
                "(a flat folder serves only 'train'; split it with ImageSet.split)"
            )
        return root
    for name in _SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    raise DataFileMissing(f"{root}: no {'/ or '.join(_SPLIT_DIRS[split])}/ subfolder")


def find_image_folder(path: Path) -> Path | None:
    """``path`` when it has class subfolders of images (directly or in ``train/``), else None."""
    if not path.is_dir():
        return None
    top = path / "train" if (path / "train").is_dir() else path
    return path if any(_images_in(d) for d in _class_dirs(top)) else None


def load_image_folder(
    path: str | Path, split: str = "train", size: int | None = None, channels: int = 3
) -> ImageSet:
    """Load ``root/<class>/*`` images; classes are the sorted folder names.

    When ``root`` has ``train/`` and ``val/`` (or ``test/``) subfolders, ``split`` picks one;
    class names are then the union over all split folders, so labels agree between splits.

    Args:
        path: the root folder.
        split: ``"train"``, or ``"test"`` / ``"val"`` (the ``val/`` or ``test/`` subfolder).
        size: resize every image (bilinear) to ``size``×``size``; needed when sizes differ.
        channels: 3 (RGB) or 1 (grayscale, ``L``).

    Returns:
        ImageSet with uint8 images N×channels×H×W. ``meta["empty_classes"]`` lists the class
        folders of this split without an image (the registry refuses them unless allowed);
        ``meta["native_shape"]`` is (C, H, W) of the images on disk when they all share a
        size, else None.

    Raises:
        DataError: naming the image that cannot be read, or differs in size (without
            ``size``).
    """
    root = Path(path)
    if split not in _SPLIT_DIRS:
        raise ValueError(f"unknown split {split!r}; valid: {sorted(_SPLIT_DIRS)}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    folder = _split_root(root, split)
    split_dirs = [root / d for d in ("train", "val", "test") if (root / d).is_dir()] or [root]
    classes = sorted({d.name for s in split_dirs for d in _class_dirs(s)})
    files, empty = [], []
    for d in _class_dirs(folder):
        found = _images_in(d)
        files += [(f, classes.index(d.name)) for f in found]
        if not found:
            empty.append(str(d))
    if not files:
        raise DataFileMissing(f"{folder}: no images in class subfolders")
    mode = "RGB" if channels == 3 else "L"
    arrays, sizes = [], set()
    for file, _ in files:
        im = read_image(file, mode)
        sizes.add(im.size)
        if size is not None:
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
        elif len(sizes) > 1:
            first = read_image(files[0][0], mode).size
            raise DataError(
                f"{file}: size {im.size[0]}×{im.size[1]} differs from {first[0]}×"
                f"{first[1]} of {files[0][0]}; pass size= to resize all images"
            )
        arr = np.asarray(im, dtype=np.uint8)
        arrays.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    (width, height), *more = sizes
    meta = {
        "source": str(folder),
        "split": split,
        "native_shape": None if more else (channels, height, width),
    }
    return ImageSet(
        torch.from_numpy(np.stack(arrays)),
        torch.tensor([label for _, label in files], dtype=torch.long),
        classes,
        meta=meta | ({"empty_classes": empty} if empty else {}),
    )
