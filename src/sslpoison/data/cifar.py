"""CIFAR-10 / CIFAR-100 (Krizhevsky, 2009) from their genuine python pickle batches.

The batches are pickled dicts of lists, bytes and numpy arrays. They are read with a
restricted unpickler that resolves only what a numpy array needs — the genuine Python 2
batches, and the same batches pickled again by Python 3 (at protocol 2 its bytes arrive
through ``_codecs.encode``, accepted only as latin-1 text to bytes) —; anything else
(``os.system``, ``builtins.eval``, ...) is refused. A damaged or refused file raises
:class:`~sslpoison.errors.DataError` naming it.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslpoison.data.download import Resource
from sslpoison.data.imageset import ImageSet
from sslpoison.errors import DataError, DataFileMissing, one_line

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]

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


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes at protocol 2: latin-1 text → bytes;
    any other use is refused."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(
            "refusing _codecs.encode other than latin-1 text to bytes (protocol-2 bytes)"
        )
    return codecs.encode(text, "latin1")


def _dtype(spec: Any, *args: Any) -> np.dtype:
    """``numpy.dtype`` of a type code (what a pickled array names); object arrays refused."""
    if not isinstance(spec, (str, bytes)):
        raise pickle.UnpicklingError(f"refusing numpy.dtype({type(spec).__name__})")
    dtype = np.dtype(spec.decode("latin1") if isinstance(spec, bytes) else spec, *args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("refusing numpy arrays of Python objects")
    return dtype


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy's protocol-5 array rebuilder, for a bytes buffer and a plain dtype only."""
    if not (
        isinstance(buf, (bytes, bytearray, memoryview))
        and isinstance(dtype, np.dtype)
        and not dtype.hasobject
        and isinstance(shape, tuple)
        and order in ("C", "F")
    ):
        raise pickle.UnpicklingError("refusing numpy _frombuffer of anything but plain bytes")
    return np.frombuffer(buf, dtype).reshape(shape, order=order).copy()


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): scalar,
    ("numpy._core.multiarray", "scalar"): scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_bytes,
}


class UnsafePickle(DataError, pickle.UnpicklingError):
    """A pickle that names a callable outside the allow-list (refused, never called)."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy's array-rebuilding names (and latin-1
    ``_codecs.encode``, for bytes pickled by Python 3 at protocol 2)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: only numpy arrays are allowed"
            ) from None


def read_batch(path: str | Path) -> dict[str, Any]:
    """Unpickle one CIFAR batch (``encoding="bytes"``); bytes keys are decoded to str.

    Raises:
        UnsafePickle: (a DataError and an UnpicklingError) the file names a callable
            outside the allow-list; nothing was called.
        DataError: the file is missing, empty, truncated or not a pickled dict.
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # a folder, a pipe, a device
        raise DataError(f"{path}: not a regular file")
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataFileMissing(f"{path}: CIFAR batch not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    except pickle.UnpicklingError as e:
        if str(e).startswith("refusing"):
            raise UnsafePickle(f"{path}: {e}") from None
        raise DataError(f"{path}: damaged pickle ({one_line(e, 200)})") from None
    except EOFError:
        raise DataError(f"{path}: empty or truncated pickle") from None
    except Exception as e:  # any failure of a restricted unpickle: the file is damaged
        raise DataError(
            f"{path}: damaged pickle ({type(e).__name__}: {one_line(e, 200)})"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _names(path: Path, batch: dict[str, Any], key: str) -> list[str]:
    """The class names under ``key`` of a meta file (DataError naming it if absent)."""
    values = batch.get(key)
    if not isinstance(values, (list, tuple)) or not values:
        raise DataError(f"{path}: no list of class names {key!r} (keys: {sorted(map(str, batch))})")
    return [v.decode("latin1") if isinstance(v, bytes) else str(v) for v in values]


def _to_imageset(batches: list[tuple[Path, dict]], label_key: str, classes: list[str]) -> ImageSet:
    images, labels = [], []
    for path, batch in batches:
        if "data" not in batch or label_key not in batch:
            raise DataError(f"{path}: missing 'data' or {label_key!r} (keys: {sorted(batch)})")
        try:
            data = np.asarray(batch["data"], dtype=np.uint8)
            lab = np.asarray(batch[label_key], dtype=np.int64)
        except (TypeError, ValueError, OverflowError) as e:
            raise DataError(f"{path}: 'data' or {label_key!r} is not numeric ({e})") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{path}: expected data of shape N×3072, got {data.shape}")
        if lab.shape != (data.shape[0],):
            raise DataError(f"{path}: {lab.shape} labels for {data.shape[0]} images")
        if lab.size and (lab.min() < 0 or lab.max() >= len(classes)):
            raise DataError(
                f"{path}: {label_key!r} must lie in 0..{len(classes) - 1}, "
                f"got [{lab.min()}, {lab.max()}]"
            )
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
    classes = _names(folder / "batches.meta", read_batch(folder / "batches.meta"), "label_names")
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
    classes = _names(folder / "meta", read_batch(folder / "meta"), f"{kind}_label_names")
    out = _to_imageset([(folder / split, read_batch(folder / split))], f"{kind}_labels", classes)
    out.meta.update(source=str(folder), split=split, labels=kind)
    return out
