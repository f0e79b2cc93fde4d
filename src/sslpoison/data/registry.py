"""The dataset registry: where each dataset's files are, how to load and how to fetch them.

Files are searched, in order: an explicit ``root`` (and ``root/<name>``);
``$SSLPOISON_DATA/<name>`` and ``$SSLPOISON_DATA``; ``~/.cache/sslpoison/<name>``; then
dataset-specific system places (``/usr/share/datasets/fashion-mnist``, from the Debian
package ``dataset-fashion-mnist``). The environment is read at call time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from sslpoison.data import cifar, digits, folder, gtsrb, idx, pairs, stl10, svhn, synthetic
from sslpoison.data.download import DatasetDownloadError, Resource, fetch_resources
from sslpoison.data.imageset import ImageSet
from sslpoison.errors import DataError, DataFileMissing, one_line, warn
from sslpoison.paths import HOME_CACHE, configured_path

ENV_VAR = "SSLPOISON_DATA"

__all__ = [
    "DATASETS",
    "DatasetDownloadError",
    "DatasetNotFound",
    "DatasetSpec",
    "dataset_status",
    "default_download_dir",
    "fetch",
    "load_dataset",
    "locate_dataset",
    "search_paths",
]


class DatasetNotFound(DataFileMissing):
    """A dataset's files are in none of the places searched."""


def default_download_dir(name: str) -> Path:
    """``$SSLPOISON_DATA/<name>`` when that variable is set, else ``~/.cache/sslpoison/<name>``."""
    return configured_path(None, ENV_VAR, HOME_CACHE) / name


def search_paths(
    name: str, root: str | Path | None = None, extra: tuple[str, ...] = ()
) -> list[Path]:
    """The folders searched for dataset ``name``, in order."""
    paths: list[Path] = []
    if root is not None:
        root = Path(root).expanduser()
        paths += [root, root / name]
    env = os.environ.get(ENV_VAR)
    if env:
        paths += [Path(env).expanduser() / name, Path(env).expanduser()]
    paths.append(HOME_CACHE.expanduser() / name)
    paths += [Path(p) for p in extra]
    return list(dict.fromkeys(paths))  # drop repeats, keep order


@dataclass(frozen=True)
class DatasetSpec:
    """How to find, load and fetch one dataset.

    Attributes:
        name: registry key, also the loaded ``ImageSet.name``.
        description: one line for listings.
        splits: the valid split names.
        find: ``folder -> dataset folder | None``: whether the files are at ``folder``.
        load: ``(path, split, **kwargs) -> ImageSet``.
        download: ``dest -> path``, the official download into ``dest``; None if not offered.
        builtin: True when no files are needed (``path`` is then None).
        hint: how to get the files, for error messages.
        system_paths: further folders searched after the usual ones.
        sized: the loader takes ``size`` (images differ in size on disk and are resized
            while loading).
    """

    name: str
    description: str
    splits: tuple[str, ...]
    find: Callable[[Path], Path | None]
    load: Callable[..., ImageSet]
    download: Callable[[Path], Path] | None = None
    builtin: bool = False
    hint: str = ""
    system_paths: tuple[str, ...] = field(default_factory=tuple)
    sized: bool = False

    def searched(self, root: str | Path | None = None) -> list[Path]:
        """The folders searched for this dataset's files, in order."""
        return search_paths(self.name, root, self.system_paths)

    def locate(self, root: str | Path | None = None) -> Path | None:
        """The folder holding this dataset's files, or None (always None when builtin)."""
        if self.builtin:
            return None
        for candidate in self.searched(root):
            if candidate.is_dir() and (found := self.find(candidate)) is not None:
                return found
        return None


def _builtin(_: Path) -> Path | None:
    return None


def _fetcher(name: str, resources: tuple[Resource, ...]) -> Callable[[Path], Path]:
    return partial(fetch_resources, name, resources)


def _fetch_hint(name: str) -> str:
    return f"run `sslpoison fetch {name}` (or pass download=True)"


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        "fashion-mnist",
        "Fashion-MNIST (Xiao et al. 2017): 70k 28×28 grayscale clothing images, 10 classes",
        ("train", "test"),
        idx.find_mnist_dir,
        idx.load_fashion_mnist,
        _fetcher("fashion-mnist", idx.FASHION_MNIST_RESOURCES),
        hint="run `sslpoison fetch fashion-mnist` or `apt-get install dataset-fashion-mnist`",
        system_paths=("/usr/share/datasets/fashion-mnist",),
    ),
    "mnist": DatasetSpec(
        "mnist",
        "MNIST (LeCun et al. 1998): 70k 28×28 grayscale handwritten digits, 10 classes",
        ("train", "test"),
        idx.find_mnist_dir,
        idx.load_mnist,
        _fetcher("mnist", idx.MNIST_RESOURCES),
        hint=_fetch_hint("mnist"),
    ),
    "cifar10": DatasetSpec(
        "cifar10",
        "CIFAR-10 (Krizhevsky 2009): 60k 32×32 colour images, 10 classes",
        ("train", "test"),
        cifar.find_cifar10_dir,
        cifar.load_cifar10,
        _fetcher("cifar10", cifar.CIFAR10_RESOURCES),
        hint=_fetch_hint("cifar10"),
    ),
    "cifar100": DatasetSpec(
        "cifar100",
        "CIFAR-100 (Krizhevsky 2009): 60k 32×32 colour images, 100 classes (20 coarse)",
        ("train", "test"),
        cifar.find_cifar100_dir,
        cifar.load_cifar100,
        _fetcher("cifar100", cifar.CIFAR100_RESOURCES),
        hint=_fetch_hint("cifar100"),
    ),
    "stl10": DatasetSpec(
        "stl10",
        "STL-10 (Coates et al. 2011): 96×96 colour, 5k train / 8k test / 100k unlabeled",
        ("train", "test", "unlabeled"),
        stl10.find_stl10_dir,
        stl10.load_stl10,
        _fetcher("stl10", stl10.STL10_RESOURCES),
        hint=_fetch_hint("stl10"),
    ),
    "svhn": DatasetSpec(
        "svhn",
        "SVHN cropped digits (Netzer et al. 2011): 32×32 colour house numbers, 10 classes",
        ("train", "test"),
        svhn.find_svhn_dir,
        svhn.load_svhn,
        _fetcher("svhn", svhn.SVHN_RESOURCES),
        hint=_fetch_hint("svhn"),
    ),
    "gtsrb": DatasetSpec(
        "gtsrb",
        "GTSRB (Stallkamp et al. 2012): German traffic signs, resized, 43 classes",
        ("train", "test"),
        gtsrb.find_gtsrb_dir,
        gtsrb.load_gtsrb,
        _fetcher("gtsrb", gtsrb.GTSRB_RESOURCES),
        hint=_fetch_hint("gtsrb"),
        sized=True,
    ),
    "imagefolder": DatasetSpec(
        "imagefolder",
        "Any image folder: root/<class>/*.png, or root/train|val/<class>/*",
        ("train", "test", "val"),
        folder.find_image_folder,
        folder.load_image_folder,
        hint="pass root= a folder with one subfolder of images per class",
        sized=True,
    ),
    "captions": DatasetSpec(
        "captions",
        "Image–caption pairs: root/train.csv (+ test.csv) with columns path, caption [, label]",
        ("train", "test"),
        pairs.find_caption_dir,
        pairs.load_caption_split,
        hint="pass root= a folder with train.csv listing (path, caption) pairs",
        sized=True,
    ),
    "digits": DatasetSpec(
        "digits",
        "scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes), built in",
        ("train", "test"),
        _builtin,
        digits.load_digits,
        builtin=True,
    ),
    "synthetic": DatasetSpec(
        "synthetic",
        "Seeded synthetic pattern images (one pattern kind per class), built in",
        ("train", "test"),
        _builtin,
        synthetic.load_synthetic,
        builtin=True,
    ),
}


def _spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}"
        ) from None


def _not_found(spec: DatasetSpec, root: str | Path | None) -> DatasetNotFound:
    where = ", ".join(str(p) for p in spec.searched(root))
    return DatasetNotFound(
        f"dataset {spec.name!r} not found (searched: {where}); to get it: {spec.hint}"
    )


def _check_root(root: str | Path | None) -> None:
    """A ``root`` that is given must be a folder (a typo must not fall through)."""
    if root is not None and not Path(root).expanduser().is_dir():
        raise DatasetNotFound(f"root {str(root)!r}: no such folder")


def locate_dataset(
    name: str, root: str | Path | None = None, only_root: bool = False
) -> Path | None:
    """The folder of a dataset's files (None for built-in ones).

    ``only_root``: with a ``root``, the files must be in it (or in ``root/<name>``), not in
    the other places searched.

    Raises:
        ValueError: unknown dataset.
        DatasetNotFound: ``root`` is not a folder, or the files are in none of the places
            searched.
    """
    spec = _spec(name)
    _check_root(root)
    if spec.builtin:
        if root is not None and only_root:
            raise ValueError(f"root {str(root)!r}: {name!r} is built in and reads no files")
        return None
    if only_root and root is not None:
        root = Path(root).expanduser()
        for candidate in (root, root / name):
            if candidate.is_dir() and (found := spec.find(candidate)) is not None:
                return found
        raise DatasetNotFound(
            f"root {str(root)!r} holds no {name} files (looked in {root} and {root / name})"
        )
    path = spec.locate(root)
    if path is None:
        raise _not_found(spec, root)
    return path


def _load_split(spec: DatasetSpec, path: Path | None, split: str, **kwargs: Any) -> ImageSet:
    """``spec.load``, with a damaged file named: a loader's ``DataError`` names the file; any
    other read failure is reported with the dataset's folder."""
    try:
        return spec.load(path, split, **kwargs)
    except DataError:
        raise
    except (OSError, EOFError, ValueError) as e:
        where = str(path) if path is not None else spec.name
        if where in str(e):
            raise DataError(one_line(e)) from None
        raise DataError(f"{where}: {spec.name} {split} split: {one_line(e, 300)}") from None


def load_dataset(
    name: str,
    split: str = "train",
    root: str | Path | None = None,
    download: bool = False,
    allow_empty_classes: bool = False,
    **kwargs: Any,
) -> ImageSet:
    """Load one split of a registered dataset.

    Args:
        name: a key of :data:`DATASETS`.
        split: one of the dataset's splits.
        root: a folder to search first.
        download: fetch the official files when they are not found.
        allow_empty_classes: keep a class whose folder holds no image (a warning), rather
            than refuse it.
        **kwargs: passed to the dataset's loader (e.g. ``size`` for gtsrb and imagefolder,
            ``limit`` for stl10, ``coarse`` for cifar100, ``n``/``seed`` for synthetic).

    Returns:
        The ImageSet, named ``name``; ``meta`` records the source folder and split.

    Raises:
        ValueError: unknown dataset or split.
        DatasetNotFound: ``root`` is not a folder, or the files are not found (and
            ``download`` is False).
        DataError: a file is damaged (named), or a class folder is empty.
        DatasetDownloadError: the download failed.
    """
    spec = _spec(name)
    if split not in spec.splits:
        raise ValueError(
            f"dataset {name!r} has no split {split!r}; valid: {', '.join(spec.splits)}"
        )
    path = None
    if not spec.builtin:
        _check_root(root)
        path = spec.locate(root)
        if path is None and download and spec.download is not None:
            path = fetch(name)
        if path is None:
            raise _not_found(spec, root)
    data = _load_split(spec, path, split, **kwargs)
    empty = data.meta.get("empty_classes")
    if empty:
        shown = ", ".join(empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
        message = f"{name} {split}: {len(empty)} class folder(s) without images: {shown}"
        if not allow_empty_classes:
            raise DataError(
                f"{message} (remove them, or set allow_empty_classes: true in data: or eval:)"
            )
        warn(f"{message}; kept as empty classes")
    data.name = name
    data.meta.setdefault("split", split)
    if path is not None:
        data.meta.setdefault("source", str(path))
    return data


def load_fitted(
    name: str,
    split: str,
    size: int | None = None,
    channels: int | None = None,
    root: str | Path | None = None,
    allow_empty_classes: bool = False,
) -> ImageSet:
    """One split fitted to an encoder's input (``size``×``size``, ``channels``); datasets
    whose images differ in size on disk (``sized``) are resized while loading.
    ``meta["native_shape"]`` keeps the (C, H, W) of the images on disk (None when they
    differ in size)."""
    kwargs = {"size": size} if size is not None and _spec(name).sized else {}
    data = load_dataset(name, split, root=root, allow_empty_classes=allow_empty_classes, **kwargs)
    native = data.meta.get("native_shape", tuple(data.images.shape[1:]))
    fitted = data.resized(size, channels)
    fitted.meta["native_shape"] = native
    return fitted


def dataset_status() -> list[dict[str, Any]]:
    """One dict per dataset: ``name``, ``present``, ``where`` (folder or None),
    ``description``, and ``error`` (None, or why a folder searched could not be read: the
    other datasets are still listed)."""
    rows = []
    for spec in DATASETS.values():
        error = None
        try:
            where = spec.locate()
        except OSError as e:
            where, error = None, f"{e.filename or e}: {e.strerror or type(e).__name__}"
        rows.append(
            {
                "name": spec.name,
                "present": spec.builtin or where is not None,
                "where": None if where is None else str(where),
                "description": spec.description,
                "error": error,
            }
        )
    return rows


def fetch(name: str, dest: str | Path | None = None) -> Path:
    """Download a dataset's official files into ``dest`` (default: :func:`default_download_dir`).

    Files already complete there are kept. Returns the folder the loader reads.

    Raises:
        ValueError: unknown dataset, or one with nothing to download.
        DatasetDownloadError: on any download, checksum or extraction failure.
    """
    spec = _spec(name)
    if spec.download is None:
        raise ValueError(f"dataset {name!r} has nothing to download ({spec.description})")
    dest = Path(dest).expanduser() if dest is not None else default_download_dir(name)
    if dest.is_dir() and (found := spec.find(dest)) is not None:
        return found
    spec.download(dest)
    found = spec.find(dest)
    if found is None:
        raise DatasetDownloadError(
            f"{name}: downloaded into {dest}, but the expected files are not there"
        )
    return found
