"""IDX files (the MNIST / Fashion-MNIST format) and the MNIST-family folder loader.

An IDX file is: two zero bytes, a dtype code, the number of dimensions ``d``, ``d`` big-endian
uint32 sizes, then the values in row-major order (big-endian). Files may be gzipped.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from sslpoison.data.download import Resource
from sslpoison.data.imageset import ImageSet
from sslpoison.errors import DataError, DataFileMissing, one_line

_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_CLASSES = [str(i) for i in range(10)]

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FASHION_MNIST_RESOURCES = (
    Resource(_FASHION_URL + "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    Resource(_FASHION_URL + "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
    Resource(_FASHION_URL + "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
    Resource(_FASHION_URL + "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
)
MNIST_RESOURCES = (
    Resource(_MNIST_URL + "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    Resource(_MNIST_URL + "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    Resource(_MNIST_URL + "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    Resource(_MNIST_URL + "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
)


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzipped when its name ends in ``.gz``).

    Returns:
        The array, in native byte order, with the shape stored in the file.

    Raises:
        DataError: (a ValueError) naming the file: missing or unreadable, not gzip or a
            truncated gzip stream, a bad magic number, an unknown dtype code, or a payload
            whose length is not the one the header declares.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        if path.exists() and not path.is_file():  # a folder, a pipe, a device
            raise DataError(f"{path}: not a regular file")
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file")
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise DataError(f"{path}: not an IDX file (bad magic number)")
            code, ndim = head[2], head[3]
            if code not in _DTYPES:
                raise DataError(f"{path}: unknown IDX dtype code 0x{code:02x}")
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX header")
            dims = struct.unpack(f">{ndim}I", dims_raw)
            dtype = np.dtype(_DTYPES[code])
            expected = math.prod(dims) * dtype.itemsize
            payload = f.read(expected + 1)  # one byte more shows trailing data
    except DataError:
        raise
    except FileNotFoundError:
        raise DataFileMissing(f"{path}: not found") from None
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        kind = "gzip stream" if opener is gzip.open else "file"
        raise DataError(f"{path}: damaged or truncated {kind} ({one_line(e, 200)})") from None
    if len(payload) != expected:
        got = f"{len(payload)}" if len(payload) <= expected else f"more than {expected}"
        raise DataError(
            f"{path}: IDX payload has {got} bytes, expected {expected} for shape {dims}"
        )
    array = np.frombuffer(payload, dtype=dtype).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def _idx_path(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_mnist_dir(path: Path) -> Path | None:
    """``path`` when it holds the four MNIST-family IDX files (gzipped or not), else None."""
    ok = all(_idx_path(path, stem) for pair in _FILES.values() for stem in pair)
    return path if ok else None


def load_mnist_family(path: str | Path, split: str, classes: list[str]) -> ImageSet:
    """Load the ``train`` or ``test`` split of an MNIST-family folder.

    Returns:
        ImageSet with uint8 images N×1×28×28 and int64 labels N.
    """
    folder = Path(path)
    if split not in _FILES:
        raise ValueError(f"unknown split {split!r}; valid: {sorted(_FILES)}")
    arrays = []
    for stem in _FILES[split]:
        file = _idx_path(folder, stem)
        if file is None:
            raise DataFileMissing(f"{folder}: no {stem} or {stem}.gz")
        arrays.append((file, read_idx(file)))
    (img_file, images), (lbl_file, labels) = arrays
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{img_file}: expected uint8 N×H×W images, got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{lbl_file}: {labels.shape} labels for {images.shape[0]} images in {img_file.name}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(
            f"{lbl_file}: labels must lie in 0..{len(classes) - 1}, "
            f"got [{labels.min()}, {labels.max()}]"
        )
    return ImageSet(
        torch.from_numpy(images).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        list(classes),
        meta={"source": str(folder), "split": split},
    )


def load_fashion_mnist(path: str | Path, split: str = "train") -> ImageSet:
    """Fashion-MNIST (Xiao et al., 2017) from a folder of its IDX files."""
    return load_mnist_family(path, split, FASHION_MNIST_CLASSES)


def load_mnist(path: str | Path, split: str = "train") -> ImageSet:
    """MNIST (LeCun et al., 1998) from a folder of its IDX files."""
    return load_mnist_family(path, split, MNIST_CLASSES)
