"""IDX reading and the MNIST-family loader, on tiny files written in the genuine format."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sslpoison.data.idx import (
    FASHION_MNIST_CLASSES,
    find_mnist_dir,
    load_fashion_mnist,
    load_mnist,
    read_idx,
)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, code: int = 0x08) -> None:
    data = idx_bytes(array, code)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def make_mnist_dir(folder: Path, n_train: int = 3, n_test: int = 2, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[:, 2, 5] = np.arange(n) * 10 + 100  # a known pixel at row 2, column 5
        labels = (np.arange(n) * 3 % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)


@pytest.mark.parametrize("name", ["x.idx", "x.idx.gz"])
def test_read_idx_uint8_round_trip(tmp_path: Path, name: str) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / name, array)
    out = read_idx(tmp_path / name)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, array)


def test_read_idx_big_endian_int32_and_float(tmp_path: Path) -> None:
    ints = np.array([[1, -2], [70000, 3]], dtype=np.int32)
    write_idx(tmp_path / "i.idx", ints, code=0x0C)
    got = read_idx(tmp_path / "i.idx")
    assert got.dtype == np.dtype("int32") and got.dtype.isnative
    np.testing.assert_array_equal(got, ints)
    floats = np.array([0.5, -1.25], dtype=np.float64)
    write_idx(tmp_path / "f.idx", floats, code=0x0E)
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx"), floats)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "magic").write_bytes(b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "magic")
    (tmp_path / "code").write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match="dtype code"):
        read_idx(tmp_path / "code")
    short = idx_bytes(np.zeros((2, 2), dtype=np.uint8), 0x08)[:-1]
    (tmp_path / "short").write_bytes(short)
    with pytest.raises(ValueError, match="payload"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize("gz", [True, False])
def test_load_fashion_mnist_folder(tmp_path: Path, gz: bool) -> None:
    make_mnist_dir(tmp_path, gz=gz)
    assert find_mnist_dir(tmp_path) == tmp_path
    train = load_fashion_mnist(tmp_path, "train")
    assert train.images.shape == (3, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64
    assert train.labels.tolist() == [0, 3, 6]
    assert train.classes == FASHION_MNIST_CLASSES and train.classes[0] == "T-shirt/top"
    assert train.images[:, 0, 2, 5].tolist() == [100, 110, 120]
    assert int(train.images.sum()) == 100 + 110 + 120  # nothing else is set
    test = load_fashion_mnist(tmp_path, "test")
    assert len(test) == 2 and test.labels.tolist() == [0, 3]


def test_load_mnist_classes_and_errors(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path)
    assert load_mnist(tmp_path).classes == [str(i) for i in range(10)]
    with pytest.raises(ValueError, match="unknown split 'val'"):
        load_mnist(tmp_path, "val")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    assert find_mnist_dir(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path, "test")


def test_label_count_mismatch(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(2, dtype=np.uint8))
    with pytest.raises(ValueError, match="labels for 3 images"):
        load_mnist(tmp_path, "train")


def test_real_fashion_mnist() -> None:
    if find_mnist_dir(FASHION_DIR) is None:
        pytest.skip(f"Fashion-MNIST not installed at {FASHION_DIR}")
    train = load_fashion_mnist(FASHION_DIR, "train")
    test = load_fashion_mnist(FASHION_DIR, "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.num_classes == test.num_classes == 10
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
