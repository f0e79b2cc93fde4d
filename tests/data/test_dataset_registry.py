"""The dataset registry: search order, errors, status, and (network-free) downloads."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import struct
import tarfile
import urllib.error
import urllib.request
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from sslpoison.data import (
    DATASETS,
    DatasetDownloadError,
    DatasetNotFound,
    dataset_status,
    fetch,
    load_dataset,
)
from sslpoison.data.download import Resource, extract_archive, fetch_resources

NAMES = {
    "fashion-mnist", "mnist", "cifar10", "cifar100", "stl10", "svhn", "gtsrb", "imagefolder",
    "captions", "digits", "synthetic",
}  # fmt: skip
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": (3, 28, 28),
    "train-labels-idx1-ubyte.gz": (3,),
    "t10k-images-idx3-ubyte.gz": (2, 28, 28),
    "t10k-labels-idx1-ubyte.gz": (2,),
}


def idx_gz(shape: tuple[int, ...], fill: int = 1) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, len(shape)) + struct.pack(f">{len(shape)}I", *shape)
    return gzip.compress(header + np.full(shape, fill, dtype=np.uint8).tobytes())


def make_mnist(folder: Path, fill: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, shape in MNIST_FILES.items():
        (folder / name).write_bytes(idx_gz(shape, fill))
    return folder


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A private HOME and SSLPOISON_DATA, both empty."""
    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    data.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SSLPOISON_DATA", str(data))
    return {"home": home, "data": data, "cache": home / ".cache" / "sslpoison"}


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``urlopen`` raises; the URLs asked for are recorded."""
    asked: list[str] = []

    def refuse(url, timeout=None):
        asked.append(url)
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return asked


def serve(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(files[url]))


def test_registry_entries() -> None:
    assert set(DATASETS) == NAMES
    for name, spec in DATASETS.items():
        assert spec.name == name and isinstance(spec.splits, tuple) and "train" in spec.splits
        assert spec.builtin == (name in {"digits", "synthetic"})
        assert (spec.download is None) == (
            name in {"digits", "synthetic", "imagefolder", "captions"}
        )
    with pytest.raises(dataclasses.FrozenInstanceError):
        DATASETS["mnist"].name = "x"  # type: ignore[misc]


def test_search_order(env: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    spec = DATASETS["mnist"]
    assert spec.searched() == [env["data"] / "mnist", env["data"], env["cache"] / "mnist"]
    assert spec.locate() is None
    make_mnist(env["cache"] / "mnist")
    assert spec.locate() == env["cache"] / "mnist"
    make_mnist(env["data"])
    assert spec.locate() == env["data"]
    make_mnist(env["data"] / "mnist")
    assert spec.locate() == env["data"] / "mnist"
    root = make_mnist(tmp_path / "explicit", fill=7)
    assert spec.locate(root) == root
    assert spec.locate(tmp_path / "nothing-here") == env["data"] / "mnist"  # falls through
    data = load_dataset("mnist", "test", root=root)
    assert data.name == "mnist" and len(data) == 2 and int(data.images.max()) == 7
    assert data.meta["source"] == str(root) and data.meta["split"] == "test"
    # The environment is read at call time.
    monkeypatch.delenv("SSLPOISON_DATA")
    assert spec.locate() == env["cache"] / "mnist"
    assert DATASETS["fashion-mnist"].searched()[-1] == Path("/usr/share/datasets/fashion-mnist")


def test_root_subfolder_named_after_dataset(env: dict[str, Path], tmp_path: Path) -> None:
    make_mnist(tmp_path / "all" / "mnist")
    assert load_dataset("mnist", root=tmp_path / "all").meta["source"] == str(
        tmp_path / "all" / "mnist"
    )


def test_not_found_message(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    spec = dataclasses.replace(DATASETS["fashion-mnist"], system_paths=())
    monkeypatch.setitem(DATASETS, "fashion-mnist", spec)
    with pytest.raises(DatasetNotFound) as info:
        load_dataset("fashion-mnist")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError) and "\n" not in message
    assert "'fashion-mnist' not found" in message
    assert str(env["data"] / "fashion-mnist") in message and str(env["cache"]) in message
    assert "sslpoison fetch fashion-mnist" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_unknown_name_and_split() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'.*cifar10.*synthetic"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="no split 'validation'; valid: train, test"):
        load_dataset("cifar10", "validation")
    with pytest.raises(ValueError, match="unknown dataset"):
        fetch("imagenet")


def test_builtin_sets_load_by_name() -> None:
    syn = load_dataset("synthetic", "test", n=32, size=12)
    assert syn.name == "synthetic" and syn.images.shape == (32, 1, 12, 12)
    assert syn.meta["split"] == "test"
    assert load_dataset("digits", "test").name == "digits"
    with pytest.raises(ValueError, match="nothing to download"):
        fetch("digits")


def test_dataset_status(env: dict[str, Path]) -> None:
    make_mnist(env["data"] / "mnist")
    rows = dataset_status()
    assert [r["name"] for r in rows] == list(DATASETS)
    for row in rows:
        assert set(row) == {"name", "present", "where", "description", "error"}
        assert row["error"] is None
        assert isinstance(row["present"], bool) and row["description"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["mnist"]["present"] is True
    assert by_name["mnist"]["where"] == str(env["data"] / "mnist")
    assert by_name["cifar10"]["present"] is False and by_name["cifar10"]["where"] is None
    assert by_name["digits"]["present"] is True and by_name["synthetic"]["where"] is None


def test_download_failure_message(env: dict[str, Path], offline: list[str], tmp_path: Path) -> None:
    url = "http://ufldl.stanford.edu/housenumbers/train_32x32.mat"
    with pytest.raises(DatasetDownloadError) as info:
        fetch("svhn", dest=tmp_path / "svhn")
    message = str(info.value)
    assert isinstance(info.value, RuntimeError) and "\n" not in message
    assert "svhn" in message and url in message and "network is unreachable" in message
    assert offline == [url]
    assert list((tmp_path / "svhn").iterdir()) == []  # no partial or temporary file left


def test_load_with_download_uses_data_dir(env: dict[str, Path], offline: list[str]) -> None:
    with pytest.raises(DatasetDownloadError, match=r"cifar-10-python\.tar\.gz"):
        load_dataset("cifar10", download=True)
    assert (env["data"] / "cifar10").is_dir()


def test_fetch_keeps_present_files(env: dict[str, Path], offline: list[str], tmp_path) -> None:
    dest = make_mnist(tmp_path / "m")
    assert fetch("mnist", dest=dest) == dest and offline == []


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_download_and_extract_then_load(env: dict[str, Path], monkeypatch) -> None:
    archive = _tar_gz({f"mnist/{n}": idx_gz(s, 5) for n, s in MNIST_FILES.items()})
    url = "https://example.invalid/mnist.tar.gz"
    serve(monkeypatch, {url: archive})
    res = (Resource(url, hashlib.md5(archive).hexdigest(), extract=True),)
    find = DATASETS["mnist"].find
    spec = dataclasses.replace(
        DATASETS["mnist"],
        find=lambda p: find(p / "mnist"),
        download=partial(fetch_resources, "mnist", res),
    )
    monkeypatch.setitem(DATASETS, "mnist", spec)
    data = load_dataset("mnist", "train", download=True)
    assert len(data) == 3 and int(data.images.min()) == 5
    assert data.meta["source"] == str(env["data"] / "mnist" / "mnist")
    assert not (env["data"] / "mnist" / "mnist.tar.gz").exists()  # archive removed


def test_md5_mismatch(tmp_path: Path, monkeypatch) -> None:
    url = "https://example.invalid/f.bin"
    serve(monkeypatch, {url: b"payload"})
    with pytest.raises(DatasetDownloadError, match="md5 mismatch"):
        fetch_resources("demo", (Resource(url, "0" * 32),), tmp_path / "d")
    assert list((tmp_path / "d").iterdir()) == []
    fetch_resources("demo", (Resource(url, hashlib.md5(b"payload").hexdigest()),), tmp_path / "d")
    assert (tmp_path / "d" / "f.bin").read_bytes() == b"payload"


def test_unsafe_archives_are_refused(tmp_path: Path) -> None:
    dest = tmp_path / "a" / "b"
    bad_tar = tmp_path / "bad.tar.gz"
    bad_tar.write_bytes(_tar_gz({"ok.txt": b"1", "../../evil.txt": b"2"}))
    with pytest.raises(DatasetDownloadError, match="escapes"):
        extract_archive("demo", bad_tar, dest)
    link_tar = tmp_path / "link.tar"
    with tarfile.open(link_tar, "w") as tar:
        info = tarfile.TarInfo("innocent")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DatasetDownloadError, match="escapes"):
        extract_archive("demo", link_tar, dest)
    bad_zip = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad_zip, "w") as z:
        z.writestr("../evil.txt", "x")
    with pytest.raises(DatasetDownloadError, match="escapes"):
        extract_archive("demo", bad_zip, dest)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "a" / "evil.txt").exists()
    assert list(dest.iterdir()) == []


def test_zip_extraction_merges_folders(tmp_path: Path) -> None:
    for i, name in enumerate(["one.zip", "two.zip"]):
        with zipfile.ZipFile(tmp_path / name, "w") as z:
            z.writestr(f"GTSRB/part{i}/x.txt", str(i))
        extract_archive("gtsrb", tmp_path / name, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "GTSRB").iterdir()) == ["part0", "part1"]
