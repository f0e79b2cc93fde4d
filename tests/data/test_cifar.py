"""CIFAR-10/100 pickle batches, written as the genuine Python 2 protocol-2 pickles."""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from sslpoison.data.cifar import (
    RestrictedUnpickler,
    find_cifar10_dir,
    find_cifar100_dir,
    load_cifar10,
    load_cifar100,
    read_batch,
)


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING), as cPickle did for the real batches."""

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_py2_str


def py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # Python 2 era numpy lived at numpy.core; numpy 2 writes numpy._core.
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar_rows(n: int, start: int) -> np.ndarray:
    """N×3072 rows: R plane, G plane, B plane, each 32×32 row-major; one known pixel each."""
    data = np.zeros((n, 3072), dtype=np.uint8)
    for i in range(n):
        channel, row, col = i % 3, 4 + i, 9
        data[i, channel * 1024 + row * 32 + col] = start + i
    return data


def write_cifar10(folder: Path, per_batch: int = 2) -> Path:
    base = folder / "cifar-10-batches-py"
    base.mkdir(parents=True)
    names = [f"class{c}".encode() for c in range(10)]
    meta = {b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    (base / "batches.meta").write_bytes(py2_pickle(meta))
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        batch = {
            b"batch_label": f"batch {k}".encode(),
            b"labels": [(k + i) % 10 for i in range(per_batch)],
            b"data": cifar_rows(per_batch, 10 * k + 1),
            b"filenames": [f"img_{k}_{i}.png".encode() for i in range(per_batch)],
        }
        (base / name).write_bytes(py2_pickle(batch))
    return base


def test_py2_pickle_uses_only_the_genuine_globals() -> None:
    blob = py2_pickle({b"data": np.zeros((1, 3072), np.uint8)})
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in blob
    assert b"_codecs" not in blob and b"numpy._core" not in blob


def test_load_cifar10(tmp_path: Path) -> None:
    base = write_cifar10(tmp_path)
    assert find_cifar10_dir(tmp_path) == base
    train = load_cifar10(tmp_path, "train")
    assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert train.classes == [f"class{c}" for c in range(10)]
    # batch k, image i: value 10k+1+i at channel i%3, row 4+i, column 9
    assert int(train.images[0, 0, 4, 9]) == 1 and int(train.images[1, 1, 5, 9]) == 2
    assert int(train.images[9, 1, 5, 9]) == 42
    assert int(train.images.count_nonzero()) == 10
    test = load_cifar10(base, "test")  # the batches folder itself works too
    assert len(test) == 2 and test.labels.tolist() == [5, 6]
    assert int(test.images[1, 1, 5, 9]) == 52


def test_load_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    meta = {
        b"fine_label_names": [f"fine{c}".encode() for c in range(100)],
        b"coarse_label_names": [f"coarse{c}".encode() for c in range(20)],
    }
    (base / "meta").write_bytes(py2_pickle(meta))
    for name, n in (("train", 4), ("test", 3)):
        batch = {
            b"filenames": [b"x.png"] * n,
            b"batch_label": name.encode(),
            b"fine_labels": [99 - i for i in range(n)],
            b"coarse_labels": [19 - i for i in range(n)],
            b"data": cifar_rows(n, 100),
        }
        (base / name).write_bytes(py2_pickle(batch))
    assert find_cifar100_dir(tmp_path) == base
    train = load_cifar100(tmp_path, "train")
    assert train.num_classes == 100 and train.labels.tolist() == [99, 98, 97, 96]
    assert train.classes[99] == "fine99"
    assert int(train.images[2, 2, 6, 9]) == 102
    coarse = load_cifar100(tmp_path, "test", coarse=True)
    assert coarse.num_classes == 20 and coarse.labels.tolist() == [19, 18, 17]


def test_python3_pickles_load_too(tmp_path: Path) -> None:
    batch = {"data": cifar_rows(2, 7), "labels": [3, 4]}
    (tmp_path / "b").write_bytes(pickle.dumps(batch, protocol=4))
    got = read_batch(tmp_path / "b")
    assert got["labels"] == [3, 4] and got["data"].shape == (2, 3072)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "data_batch_1"
    evil.write_bytes(pickle.dumps({b"data": _Evil(marker)}, protocol=4))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle (posix|os|nt)\.system"):
        read_batch(evil)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.eval"):
        RestrictedUnpickler(io.BytesIO(pickle.dumps(eval))).load()


def test_missing_keys_and_bad_split(tmp_path: Path) -> None:
    base = write_cifar10(tmp_path)
    (base / "test_batch").write_bytes(py2_pickle({b"labels": [1]}))
    with pytest.raises(ValueError, match="missing 'data'"):
        load_cifar10(base, "test")
    with pytest.raises(ValueError, match="unknown split"):
        load_cifar10(base, "unlabeled")
