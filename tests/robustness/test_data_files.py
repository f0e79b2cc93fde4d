"""Damaged and hostile data files, in every supported format, as the pre-training set or a
downstream set of ``sslpoison run``: each fails before any training with exit 2 and one
line naming the file; a pickle payload never runs. Valid data (CIFAR batches pickled again
by Python 3, at every protocol) is accepted."""

from __future__ import annotations

import gzip
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from damaged_files import (
    MNIST_SHAPES,
    cifar_batch,
    empty,
    garbage,
    hostile_pickles,
    idx_bytes,
    png_bytes,
    svhn_arrays,
    truncate,
    write_captions,
    write_cifar10,
    write_gtsrb,
    write_image_folder,
    write_mnist,
    write_stl10,
    write_svhn,
)
from user_errors import assert_user_error, trained_stages

from sslpoison.data import load_dataset

#: A case: (dataset, its root, the texts the error must name, "data" or "eval" — where the
#: dataset is used).
Case = tuple[str, Path, tuple[str, ...], str]


def _idx(root: Path, stem: str, array: np.ndarray, code: int = 0x08) -> Path:
    path = root / f"{stem}.gz"
    path.write_bytes(gzip.compress(idx_bytes(array, code)))
    return path


def idx_not_gzip(tmp: Path) -> Case:
    root = write_mnist(tmp / "mnist")
    bad = root / "train-images-idx3-ubyte.gz"
    bad.write_bytes(idx_bytes(np.zeros(MNIST_SHAPES["train-images-idx3-ubyte"], np.uint8)))
    return "mnist", root, (str(bad), "gzip"), "data"


def idx_truncated_gz(tmp: Path) -> Case:
    root = write_mnist(tmp / "mnist")
    bad = truncate(root / "train-images-idx3-ubyte.gz", 0.6)
    return "mnist", root, (str(bad),), "data"


def idx_empty_gz(tmp: Path) -> Case:
    root = write_mnist(tmp / "mnist")
    bad = empty(root / "train-labels-idx1-ubyte.gz")
    return "mnist", root, (str(bad),), "data"


def idx_garbage_raw(tmp: Path) -> Case:
    root = write_mnist(tmp / "mnist", gz=False)
    bad = garbage(root / "train-images-idx3-ubyte")
    return "mnist", root, (str(bad), "magic"), "data"


def idx_unknown_dtype(tmp: Path) -> Case:
    root = write_mnist(tmp / "mnist")
    bad = _idx(root, "train-images-idx3-ubyte", np.zeros((12, 28, 28), np.uint8), code=0x07)
    return "mnist", root, (str(bad), "dtype"), "data"


def idx_short_payload(tmp: Path) -> Case:
    root = write_mnist(tmp / "mnist", gz=False)
    bad = truncate(root / "train-images-idx3-ubyte", 0.9)
    return "mnist", root, (str(bad), "payload"), "data"


def idx_trailing_bytes(tmp: Path) -> Case:
    root = write_mnist(tmp / "mnist", gz=False)
    bad = root / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes() + b"\x00" * 10)
    return "mnist", root, (str(bad), "payload"), "data"


def idx_label_out_of_range(tmp: Path) -> Case:
    root = write_mnist(tmp / "mnist")
    bad = _idx(root, "train-labels-idx1-ubyte", np.full(12, 12, np.uint8))
    return "mnist", root, (str(bad), "0..9"), "data"


def idx_label_count(tmp: Path) -> Case:
    root = write_mnist(tmp / "mnist")
    bad = _idx(root, "train-labels-idx1-ubyte", np.zeros(11, np.uint8))
    return "mnist", root, (str(bad), "labels for 12 images"), "data"


def idx_damaged_test_split(tmp: Path) -> Case:
    root = write_mnist(tmp / "mnist")
    bad = truncate(root / "t10k-images-idx3-ubyte.gz", 0.5)
    return "mnist", root, (str(bad),), "eval"


def idx_test_split_other_size(tmp: Path) -> Case:
    root = write_mnist(tmp / "mnist")
    _idx(root, "t10k-images-idx3-ubyte", np.zeros((8, 32, 32), np.uint8))
    return "mnist", root, (str(root), "eval.allow_split_mismatch"), "eval"


def _cifar(tmp: Path) -> tuple[Path, Path]:
    return tmp / "c10", write_cifar10(tmp / "c10")


def cifar_truncated(tmp: Path) -> Case:
    root, base = _cifar(tmp)
    return "cifar10", root, (str(truncate(base / "data_batch_3")), "truncated"), "data"


def cifar_empty(tmp: Path) -> Case:
    root, base = _cifar(tmp)
    return "cifar10", root, (str(empty(base / "data_batch_1")),), "data"


def cifar_garbage(tmp: Path) -> Case:
    root, base = _cifar(tmp)
    return "cifar10", root, (str(garbage(base / "data_batch_2")), "pickle"), "data"


def cifar_meta_without_names(tmp: Path) -> Case:
    root, base = _cifar(tmp)
    (base / "batches.meta").write_bytes(pickle.dumps({b"num_vis": 3072}, protocol=2))
    return "cifar10", root, (str(base / "batches.meta"), "label_names"), "data"


def cifar_wrong_shape(tmp: Path) -> Case:
    root, base = _cifar(tmp)
    batch = cifar_batch() | {b"data": np.zeros((6, 100), np.uint8)}
    (base / "data_batch_4").write_bytes(pickle.dumps(batch, protocol=2))
    return "cifar10", root, (str(base / "data_batch_4"), "3072"), "data"


def cifar_label_out_of_range(tmp: Path) -> Case:
    root, base = _cifar(tmp)
    batch = cifar_batch() | {b"labels": [10] * 6}
    (base / "data_batch_5").write_bytes(pickle.dumps(batch, protocol=2))
    return "cifar10", root, (str(base / "data_batch_5"), "labels"), "data"


def cifar_not_a_dict(tmp: Path) -> Case:
    root, base = _cifar(tmp)
    (base / "data_batch_1").write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    return "cifar10", root, (str(base / "data_batch_1"), "dict"), "data"


def cifar_batch_is_a_fifo(tmp: Path) -> Case:
    """A named pipe with no writer: reading it would wait forever."""
    root, base = _cifar(tmp)
    (base / "data_batch_2").unlink()
    os.mkfifo(base / "data_batch_2")
    return "cifar10", root, (str(base / "data_batch_2"), "not a regular file"), "data"


def idx_file_is_a_fifo(tmp: Path) -> Case:
    """A named pipe in place of an IDX file is not taken for it (nor read)."""
    root = write_mnist(tmp / "mnist")
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    os.mkfifo(root / "t10k-labels-idx1-ubyte.gz")
    return "mnist", root, (str(root), "holds no mnist files"), "eval"


def cifar_damaged_test_batch(tmp: Path) -> Case:
    root, base = _cifar(tmp)
    return "cifar10", root, (str(truncate(base / "test_batch", 0.3)),), "eval"


def _svhn(tmp: Path) -> tuple[Path, Path]:
    root = write_svhn(tmp / "svhn")
    return root, root / "train_32x32.mat"


def svhn_truncated(tmp: Path) -> Case:
    root, mat = _svhn(tmp)
    return "svhn", root, (str(truncate(mat)),), "data"


def svhn_empty(tmp: Path) -> Case:
    root, mat = _svhn(tmp)
    return "svhn", root, (str(empty(mat)),), "data"


def svhn_garbage(tmp: Path) -> Case:
    root, mat = _svhn(tmp)
    return "svhn", root, (str(garbage(mat)),), "data"


def svhn_without_x(tmp: Path) -> Case:
    from scipy.io import savemat

    root, mat = _svhn(tmp)
    savemat(mat, {"y": svhn_arrays()["y"]})
    return "svhn", root, (str(mat), "'X'"), "data"


def svhn_wrong_shape(tmp: Path) -> Case:
    root = write_svhn(tmp / "svhn", X=np.zeros((28, 28, 3, 6), np.uint8))
    return "svhn", root, (str(root / "train_32x32.mat"), "32×32×3×N"), "data"


def svhn_label_out_of_range(tmp: Path) -> Case:
    root = write_svhn(tmp / "svhn", y=np.full((6, 1), 11, np.uint8))
    return "svhn", root, (str(root / "train_32x32.mat"), "1..10"), "data"


def stl_partial_image(tmp: Path) -> Case:
    base = write_stl10(tmp / "stl")
    bad = base / "train_X.bin"
    bad.write_bytes(bad.read_bytes()[:-5])
    return "stl10", tmp / "stl", (str(bad), "whole number"), "data"


def stl_labels_out_of_range(tmp: Path) -> Case:
    base = write_stl10(tmp / "stl")
    (base / "test_y.bin").write_bytes(bytes([0, 1, 2, 3]))
    return "stl10", tmp / "stl", (str(base / "test_y.bin"), "1..10"), "eval"


def stl_labels_short(tmp: Path) -> Case:
    base = write_stl10(tmp / "stl")
    (base / "test_y.bin").write_bytes(bytes([1, 2]))
    return "stl10", tmp / "stl", (str(base / "test_y.bin"), "2 labels for 4 images"), "eval"


def stl_class_names(tmp: Path) -> Case:
    base = write_stl10(tmp / "stl")
    (base / "class_names.txt").write_text("plane\nbird\n")
    return "stl10", tmp / "stl", (str(base / "class_names.txt"), "class names"), "eval"


def _gtsrb(tmp: Path) -> tuple[Path, Path]:
    root = write_gtsrb(tmp / "gtsrb")
    return root, root / "GTSRB" / "Final_Training" / "Images" / "00001"


def gtsrb_garbage_ppm(tmp: Path) -> Case:
    root, folder = _gtsrb(tmp)
    return "gtsrb", root, (str(garbage(folder / "1.ppm")), "cannot read image"), "data"


def gtsrb_empty_ppm(tmp: Path) -> Case:
    root, folder = _gtsrb(tmp)
    return "gtsrb", root, (str(empty(folder / "0.ppm")),), "data"


def gtsrb_truncated_ppm(tmp: Path) -> Case:
    root, folder = _gtsrb(tmp)
    return "gtsrb", root, (str(truncate(folder / "0.ppm", 0.5)),), "data"


def gtsrb_class_out_of_range(tmp: Path) -> Case:
    root, folder = _gtsrb(tmp)
    csv = folder / "GT-00001.csv"
    csv.write_text(csv.read_text().replace(";1\n", ";43\n"))
    return "gtsrb", root, (f"{csv}, line 2", "ClassId 43"), "data"


def gtsrb_class_not_a_number(tmp: Path) -> Case:
    root, _ = _gtsrb(tmp)
    csv = root / "GTSRB" / "Final_Test" / "Images" / "GT-final_test.csv"
    csv.write_text(csv.read_text().replace(";1\n", ";one\n"))
    return "gtsrb", root, (f"{csv}, line 3", "'one'"), "eval"


def gtsrb_csv_without_filename(tmp: Path) -> Case:
    root, folder = _gtsrb(tmp)
    csv = folder / "GT-00001.csv"
    csv.write_text(csv.read_text().replace("Filename;", "Name;"))
    return "gtsrb", root, (str(csv), "Filename"), "data"


def gtsrb_csv_lists_a_missing_image(tmp: Path) -> Case:
    root, folder = _gtsrb(tmp)
    (folder / "1.ppm").unlink()
    return "gtsrb", root, (f"{folder / 'GT-00001.csv'}, line 3", str(folder / "1.ppm")), "data"


def _folder(tmp: Path) -> tuple[Path, Path]:
    root = write_image_folder(tmp / "images")
    return root, root / "train" / "c1"


def folder_zero_byte_png(tmp: Path) -> Case:
    root, folder = _folder(tmp)
    return "imagefolder", root, (str(empty(folder / "1.png")),), "data"


def folder_truncated_png(tmp: Path) -> Case:
    root, folder = _folder(tmp)
    return "imagefolder", root, (str(truncate(folder / "2.png", 0.7)),), "data"


def folder_garbage_png(tmp: Path) -> Case:
    root, folder = _folder(tmp)
    return "imagefolder", root, (str(garbage(folder / "0.png")), "cannot read image"), "data"


def folder_empty_class(tmp: Path) -> Case:
    root, _ = _folder(tmp)
    (root / "train" / "c2").mkdir()
    return "imagefolder", root, (str(root / "train" / "c2"), "without images"), "data"


def folder_empty_class_in_val(tmp: Path) -> Case:
    root, _ = _folder(tmp)
    for png in (root / "val" / "c0").iterdir():
        png.unlink()
    return "imagefolder", root, (str(root / "val" / "c0"), "without images"), "eval"


def folder_val_of_another_size(tmp: Path) -> Case:
    root, _ = _folder(tmp)
    for png in (root / "val").rglob("*.png"):
        png.write_bytes(png_bytes(20))
    return "imagefolder", root, (str(root / "val"), "20×20", "12×12"), "eval"


def captions_damaged_image(tmp: Path) -> Case:
    root = write_captions(tmp / "caps")
    return "captions", root, (f"{root / 'train.csv'}, line 3", str(garbage(root / "1.png"))), "data"


def captions_missing_column(tmp: Path) -> Case:
    root = write_captions(tmp / "caps")
    (root / "train.csv").write_text("file,caption\n0.png,a photo\n")
    return "captions", root, (str(root / "train.csv"), "'path'"), "data"


CASES: list[Callable[[Path], Case]] = [
    idx_not_gzip, idx_truncated_gz, idx_empty_gz, idx_garbage_raw, idx_unknown_dtype,
    idx_short_payload, idx_trailing_bytes, idx_label_out_of_range, idx_label_count,
    idx_damaged_test_split, idx_test_split_other_size,
    cifar_truncated, cifar_empty, cifar_garbage, cifar_meta_without_names, cifar_wrong_shape,
    cifar_label_out_of_range, cifar_not_a_dict, cifar_batch_is_a_fifo, idx_file_is_a_fifo,
    cifar_damaged_test_batch,
    svhn_truncated, svhn_empty, svhn_garbage, svhn_without_x, svhn_wrong_shape,
    svhn_label_out_of_range,
    stl_partial_image, stl_labels_out_of_range, stl_labels_short, stl_class_names,
    gtsrb_garbage_ppm, gtsrb_empty_ppm, gtsrb_truncated_ppm, gtsrb_class_out_of_range,
    gtsrb_class_not_a_number, gtsrb_csv_without_filename, gtsrb_csv_lists_a_missing_image,
    folder_zero_byte_png, folder_truncated_png, folder_garbage_png, folder_empty_class,
    folder_empty_class_in_val, folder_val_of_another_size,
    captions_damaged_image, captions_missing_column,
]  # fmt: skip


def configure(cfg: dict, dataset: str, root: Path, role: str) -> dict:
    """``cfg`` with ``dataset`` (at ``root``) as its pre-training or its downstream set."""
    if role == "data":
        cfg["data"] = {"dataset": dataset, "root": str(root), "size": 16, "channels": 1}
    else:
        cfg["eval"] |= {"datasets": [dataset], "roots": {dataset: str(root)}, "labelled": 1.0}
        cfg["eval"]["knn"]["k"] = 1
        cfg["eval"].pop("test_subset")
    return cfg


@pytest.mark.parametrize("case", CASES, ids=lambda f: f.__name__.replace("_", "-"))
def test_a_damaged_data_file_is_named_before_any_training(
    case, tmp_path, tiny_run, write_yaml, cli, cache_dir
):
    dataset, root, names, role = case(tmp_path)
    out = tmp_path / "out"
    cfg = write_yaml(configure(tiny_run, dataset, root, role))
    assert_user_error(*cli("run", cfg, "--out", out)[::2], *names)
    assert not (out / "results.json").exists()
    assert trained_stages(cache_dir) == []


@pytest.mark.parametrize("payload", list(hostile_pickles(Path("x"))), ids=lambda p: f"pickle-{p}")
@pytest.mark.parametrize("role", ["data", "eval"])
def test_a_pickle_payload_in_a_cifar_batch_is_refused_and_never_runs(
    payload, role, tmp_path, tiny_run, write_yaml, cli, sentinel
):
    root, base = _cifar(tmp_path)
    batch = base / ("data_batch_2" if role == "data" else "test_batch")
    batch.write_bytes(hostile_pickles(sentinel)[payload])
    cfg = write_yaml(configure(tiny_run, "cifar10", root, role))
    line = assert_user_error(*cli("run", cfg, "--out", tmp_path / "out")[::2], batch)
    assert "refusing" in line
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5], ids=lambda p: f"cifar-protocol-{p}")
def test_genuine_cifar_batches_pickled_again_by_python3_are_accepted(tmp_path, protocol):
    base = write_cifar10(tmp_path / "c10", protocol=protocol)
    train = load_dataset("cifar10", "train", root=tmp_path / "c10")
    assert train.images.shape == (30, 3, 32, 32) and train.classes[9] == "class9"
    want = pickle.loads((base / "data_batch_1").read_bytes())[b"data"]
    assert np.array_equal(train.images[:6].reshape(6, -1).numpy(), want)


def test_what_the_config_allows_runs_and_is_recorded(tmp_path, tiny_run, write_yaml, cli):
    """An empty class folder and a test split of another size, both allowed: the run
    finishes and ``results.json`` records both."""
    root = write_image_folder(tmp_path / "images", per_class=20)
    (root / "train" / "c2").mkdir()
    for png in (root / "val").rglob("*.png"):
        png.write_bytes(png_bytes(20))
    tiny_run["data"] = {
        "dataset": "imagefolder", "root": str(root), "size": 12, "channels": 1,
        "allow_empty_classes": True,
    }  # fmt: skip
    tiny_run["eval"] |= {"datasets": ["imagefolder"], "labelled": 1.0, "test_subset": 4}
    tiny_run["eval"] |= {"allow_split_mismatch": True, "allow_empty_classes": True}
    out = tmp_path / "out"
    code, _, err = cli("run", write_yaml(tiny_run), "--out", out)
    assert code == 0, err
    warnings = json.loads((out / "results.json").read_text())["warnings"]
    assert any(str(root / "train" / "c2") in w and "empty" in w for w in warnings), warnings
    assert any("20×20" in w and "resized" in w for w in warnings), warnings
