"""Official-source downloads: urllib with a timeout, md5 checks, atomic writes, safe extraction."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sslpoison.errors import UserError
from sslpoison.utils import atomic_write_via

TIMEOUT_S = 60.0


class DatasetDownloadError(UserError, RuntimeError):
    """A dataset could not be downloaded, verified or extracted."""


@dataclass(frozen=True)
class Resource:
    """One file of a dataset's official distribution.

    Attributes:
        url: where to get it.
        md5: its published md5, or None where not known for sure (then unchecked).
        extract: unpack it (``.tar.gz`` / ``.zip``) into the destination, then delete it.
    """

    url: str
    md5: str | None = None
    extract: bool = False

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


def _one_line(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return " ".join(text.split())


def md5sum(path: Path) -> str:
    """The hex md5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(dataset: str, url: str, dest: Path, md5: str | None = None) -> Path:
    """Download ``url`` to ``dest`` atomically (temp file, then rename), checking ``md5``.

    An existing ``dest`` with the right md5 (or any, when ``md5`` is None) is kept.

    Raises:
        DatasetDownloadError: on any failure, naming the dataset, the URL and the cause.
    """
    dest = Path(dest)
    if dest.is_file() and (md5 is None or md5sum(dest) == md5):
        return dest

    def write(tmp: Path) -> None:
        # Looked up at call time, so tests can monkeypatch ``urllib.request.urlopen``.
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
        if md5 is not None and (got := md5sum(tmp)) != md5:
            raise ValueError(f"md5 mismatch: expected {md5}, got {got}")

    try:
        atomic_write_via(dest, write)
    except Exception as e:
        raise DatasetDownloadError(f"{dataset}: download of {url} failed: {_one_line(e)}") from e
    return dest


def _inside(base: Path, name: str) -> bool:
    target = (base / name).resolve()
    return target == base or base in target.parents


def _safe_extract_tar(archive: Path, into: Path) -> None:
    base = into.resolve()
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            if os.path.isabs(m.name) or not _inside(base, m.name):
                raise ValueError(f"archive member {m.name!r} escapes the target folder")
            if m.issym() or m.islnk():
                link = (
                    m.linkname if m.islnk() else os.path.join(os.path.dirname(m.name), m.linkname)
                )
                if os.path.isabs(m.linkname) or not _inside(base, link):
                    raise ValueError(f"archive link {m.name!r} -> {m.linkname!r} escapes")
            elif not (m.isfile() or m.isdir()):
                raise ValueError(f"archive member {m.name!r} is not a file or folder")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, members=members, filter="data")
        else:  # pragma: no cover - Python < 3.10.12
            tar.extractall(into, members=members)


def _safe_extract_zip(archive: Path, into: Path) -> None:
    base = into.resolve()
    with zipfile.ZipFile(archive) as z:
        for name in z.namelist():
            if name.startswith(("/", "\\")) or ":" in name or not _inside(base, name):
                raise ValueError(f"archive member {name!r} escapes the target folder")
        z.extractall(into)


def extract_archive(dataset: str, archive: Path, dest: Path) -> None:
    """Unpack a ``.tar[.gz]`` or ``.zip`` into ``dest``, refusing members that escape it.

    Extraction happens in a temporary folder inside ``dest``; its top-level entries are then
    moved into place, so an interrupted extraction leaves no half-written dataset behind.

    Raises:
        DatasetDownloadError: on a corrupt or unsafe archive.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
    try:
        if zipfile.is_zipfile(archive):
            _safe_extract_zip(archive, tmp)
        else:
            _safe_extract_tar(archive, tmp)
        for entry in tmp.iterdir():
            target = dest / entry.name
            if target.is_dir() and entry.is_dir():
                shutil.copytree(entry, target, dirs_exist_ok=True)
            else:
                os.replace(entry, target)
    except Exception as e:
        raise DatasetDownloadError(
            f"{dataset}: extracting {archive.name} failed: {_one_line(e)}"
        ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_resources(dataset: str, resources: tuple[Resource, ...], dest: Path) -> Path:
    """Download (and unpack) every resource into ``dest``; returns ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for res in resources:
        path = download_file(dataset, res.url, dest / res.filename, res.md5)
        if res.extract:
            extract_archive(dataset, path, dest)
            path.unlink(missing_ok=True)
    return dest
