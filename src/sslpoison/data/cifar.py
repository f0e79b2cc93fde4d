"""CIFAR-10 / CIFAR-100 (Krizhevsky, 2009) from their genuine python pickle batches.

The batches are pickled dicts of lists, bytes and numpy arrays. They are read with a
restricted unpickler that resolves only the three numpy names an array needs; anything
else (``os.system``, ``builtins.eval``, ...) is refused.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslpoison.data.download import Resource
from sslpoison.data.imageset import ImageSet

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
CIFAR10_RESOURCES = (
    Resource(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        extract=True,
    ),
)
CIFAR100_RESOURCES = (
    Resource(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        extract=True,
    ),
)

_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy's array-rebuilding names."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: only numpy arrays are allowed"
            ) from None


def read_batch(path: str | Path) -> dict[str, Any]:
    """Unpickle one CIFAR batch (``encoding="bytes"``); bytes keys are decoded to str."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            obj = RestrictedUnpickler(f, encoding="bytes").load()
        except pickle.UnpicklingError as e:
            raise pickle.UnpicklingError(f"{path}: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _names(values: list) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _to_imageset(batches: list[tuple[Path, dict]], label_key: str, classes: list[str]) -> ImageSet:
    images, labels = [], []
    for path, batch in batches:
        if "data" not in batch or label_key not in batch:
            raise ValueError(f"{path}: missing 'data' or {label_key!r} (keys: {sorted(batch)})")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{path}: expected data of shape N×3072, got {data.shape}")
        lab = np.asarray(batch[label_key], dtype=np.int64)
        if lab.shape != (data.shape[0],):
            raise ValueError(f"{path}: {lab.shape} labels for {data.shape[0]} images")
        # Each row is the red plane, then green, then blue; each plane row-major 32×32.
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    return ImageSet(
        torch.from_numpy(np.concatenate(images)),
        torch.from_numpy(np.concatenate(labels)),
        classes,
    )


def _folder(path: Path, sub: str, probe: str) -> Path | None:
    for candidate in (path / sub, path):
        if (candidate / probe).is_file():
            return candidate
    return None


def find_cifar10_dir(path: Path) -> Path | None:
    """The ``cifar-10-batches-py`` folder at or under ``path``, or None."""
    return _folder(path, CIFAR10_DIR, "batches.meta")


def find_cifar100_dir(path: Path) -> Path | None:
    """The ``cifar-100-python`` folder at or under ``path``, or None."""
    return _folder(path, CIFAR100_DIR, "meta")


def load_cifar10(path: str | Path, split: str = "train") -> ImageSet:
    """CIFAR-10: ``data_batch_1..5`` (train) or ``test_batch`` (test); 3×32×32 images."""
    folder = find_cifar10_dir(Path(path)) or Path(path)
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    if split not in names:
        raise ValueError(f"unknown split {split!r}; valid: {sorted(names)}")
    classes = _names(read_batch(folder / "batches.meta")["label_names"])
    batches = [(folder / n, read_batch(folder / n)) for n in names[split]]
    out = _to_imageset(batches, "labels", classes)
    out.meta.update(source=str(folder), split=split)
    return out


def load_cifar100(path: str | Path, split: str = "train", coarse: bool = False) -> ImageSet:
    """CIFAR-100: ``train`` / ``test`` files; fine labels (100) or, with ``coarse``, 20."""
    folder = find_cifar100_dir(Path(path)) or Path(path)
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; valid: ['test', 'train']")
    kind = "coarse" if coarse else "fine"
    classes = _names(read_batch(folder / "meta")[f"{kind}_label_names"])
    out = _to_imageset([(folder / split, read_batch(folder / split))], f"{kind}_labels", classes)
    out.meta.update(source=str(folder), split=split, labels=kind)
    return out
