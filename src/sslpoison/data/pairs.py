"""Image–caption pairs from disk: a CSV of (path, caption), or WebDataset tar shards.

Both are the formats of uncurated image–text corpora such as Conceptual Captions (Sharma et
al., ACL 2018), the data that Carlini & Terzis (ICLR 2022) poison:

- **CSV** (or TSV): one row per pair, a header naming the columns; image paths are relative to
  the CSV's folder (absolute paths are kept). :func:`load_caption_csv` reads it whole into an
  :class:`ImageSet` with captions, for sets that fit in memory.
- **WebDataset** shards (``img2dataset``'s output): tar files whose members ``KEY.jpg`` (or
  ``.png``, ...) and ``KEY.txt`` share a key. :func:`iter_webdataset` streams them (tar
  ``r|*`` mode: one member at a time, never a whole shard in memory) and yields batches of
  ``(uint8 images B×C×size×size, list of B captions)``.

Images are converted to RGB (or grayscale) and made square: by default the shorter side is
resized to ``size`` and the centre is cropped (CLIP's preprocessing), or, with
``crop=False``, the whole image is stretched.
"""

from __future__ import annotations

import csv
import glob
import io
import logging
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from sslpoison.data.imageset import ImageSet
from sslpoison.data.pictures import read_image
from sslpoison.errors import DataError, DataFileMissing

log = logging.getLogger(__name__)

#: Member extensions read as the image of a WebDataset sample (first found wins).
IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "ppm", "bmp")
#: The class of pairs loaded without a label column.
UNLABELLED = "unlabelled"


def image_array(image: Image.Image, size: int, channels: int = 3, crop: bool = True) -> np.ndarray:
    """A PIL image as a uint8 C×size×size array.

    Args:
        image: any PIL image (converted to RGB, or ``L`` when ``channels`` is 1).
        size: the output side length.
        channels: 3 or 1.
        crop: resize the shorter side to ``size`` and crop the centre (keeps the aspect
            ratio); ``False`` stretches the whole image to ``size``×``size``.
    """
    im = image.convert("RGB" if channels == 3 else "L")
    if im.size != (size, size):
        if crop:
            im = ImageOps.fit(im, (size, size), Image.Resampling.BILINEAR)
        else:
            im = im.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _check(size: int, channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if size < 1:
        raise ValueError(f"size must be ≥ 1, got {size}")


# ---- CSV ---------------------------------------------------------------------------------


def load_caption_csv(
    path: str | Path,
    size: int,
    *,
    channels: int = 3,
    path_column: str = "path",
    caption_column: str = "caption",
    label_column: str | None = None,
    delimiter: str = ",",
    crop: bool = True,
    name: str | None = None,
) -> ImageSet:
    """Read every (image, caption) pair listed in a CSV file into memory.

    Args:
        path: the CSV file; its first row names the columns.
        size: images are made ``size``×``size`` (see :func:`image_array`).
        channels: 3 (RGB) or 1 (grayscale).
        path_column, caption_column: the columns holding the image path (relative to the
            CSV's folder, or absolute) and the caption.
        label_column: optional column of class names; classes are its sorted distinct values.
            Without it every pair gets label 0 of the single class :data:`UNLABELLED`.
        delimiter: ``","``, or ``"\\t"`` for a TSV.
        crop: centre-crop to a square (``True``) or stretch (``False``).
        name: the set's name (default: the CSV's stem).

    Returns:
        ImageSet with uint8 images N×channels×size×size, labels N and N captions.

    Raises:
        FileNotFoundError: the CSV or an image it lists is missing (names file and row).
        ValueError: a column is missing, a row is short, or an image cannot be decoded.
    """
    _check(size, channels)
    csv_path = Path(path)
    if not csv_path.is_file():
        raise DataFileMissing(f"caption CSV not found: {csv_path}")
    try:
        rows = _read_rows(csv_path, delimiter, path_column, caption_column, label_column)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{csv_path}: not a readable CSV ({e})") from None
    if not rows:
        raise DataError(f"{csv_path}: no rows after the header")
    images = np.empty((len(rows), channels, size, size), dtype=np.uint8)
    for i, (line, image_path, *_) in enumerate(rows):
        file = csv_path.parent / image_path
        if not file.is_file():
            raise DataFileMissing(f"{csv_path}, line {line}: image not found: {file}")
        try:
            images[i] = image_array(read_image(file, "RGB"), size, channels, crop)
        except DataError as e:
            raise DataError(f"{csv_path}, line {line}: cannot read image {e}") from None
    if label_column:
        names = [r[3] for r in rows]
        classes = sorted(set(names))
        labels = torch.tensor([classes.index(n) for n in names], dtype=torch.long)
    else:
        classes = [UNLABELLED]
        labels = torch.zeros(len(rows), dtype=torch.long)
    return ImageSet(
        torch.from_numpy(images),
        labels,
        classes,
        captions=[r[2] for r in rows],
        name=name or csv_path.stem,
        meta={"source": str(csv_path), "native_shape": None},
    )


def _read_rows(
    csv_path: Path,
    delimiter: str,
    path_column: str,
    caption_column: str,
    label_column: str | None,
) -> list[tuple]:
    """``(line, path, caption[, label])`` of each row of a pairs CSV."""
    with csv_path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = list(reader.fieldnames or [])
        wanted = [path_column, caption_column] + ([label_column] if label_column else [])
        for col in wanted:
            if col not in columns:
                raise DataError(
                    f"{csv_path}: no column {col!r} in the header (columns: {', '.join(columns)})"
                )
        rows = []
        for row in reader:
            values = [row.get(c) for c in wanted]
            if any(v is None for v in values):
                raise DataError(f"{csv_path}, line {reader.line_num}: the row has too few fields")
            rows.append((reader.line_num, *values))
    return rows


def find_caption_dir(folder: Path) -> Path | None:
    """``folder`` when it holds ``train.csv`` (the registry's ``captions`` dataset)."""
    return folder if (folder / "train.csv").is_file() else None


def load_caption_split(path: Path, split: str = "train", size: int = 64) -> ImageSet:
    """The ``captions`` dataset: ``path/<split>.csv`` with columns ``path`` and ``caption``
    (and ``label``, class names, when present), images resized to ``size`` px, RGB."""
    csv_path = Path(path) / f"{split}.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"caption dataset: {csv_path} not found")
    with csv_path.open(newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    label = "label" if "label" in header else None
    return load_caption_csv(csv_path, size, label_column=label, name="captions")


# ---- WebDataset ----------------------------------------------------------------------------

_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_shards(shards: str | Path | Sequence[str | Path]) -> list[Path]:
    """Shard paths from a path, a list, a glob (``shards/*.tar``) or a brace range.

    A brace range is WebDataset's notation: ``cc3m-{000000..000099}.tar`` names 100 shards,
    zero-padded to the width of the first number.

    Raises:
        FileNotFoundError: a named shard (or every shard of a glob) is missing.
    """
    if isinstance(shards, (str, Path)):
        shards = [shards]
    out: list[Path] = []
    for item in shards:
        text = str(item)
        m = _BRACES.search(text)
        if m:
            lo, hi, width = int(m.group(1)), int(m.group(2)), len(m.group(1))
            if hi < lo:
                raise ValueError(f"shard range {m.group(0)!r} runs backwards")
            names = [
                text[: m.start()] + f"{i:0{width}d}" + text[m.end() :] for i in range(lo, hi + 1)
            ]
            out.extend(expand_shards(names))
        elif any(c in text for c in "*?["):
            found = sorted(glob.glob(text))
            if not found:
                raise FileNotFoundError(f"no shard matches {text!r}")
            out.extend(Path(p) for p in found)
        else:
            if not Path(text).is_file():
                raise FileNotFoundError(f"WebDataset shard not found: {text}")
            out.append(Path(text))
    return out


def _split_key(member: str) -> tuple[str, str]:
    """WebDataset's key and extension: ``dir/000123.jpg`` → (``dir/000123``, ``jpg``).

    The extension starts at the first dot of the file name (``a.seg.png`` → ``seg.png``).
    """
    folder, _, base = member.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


def iter_webdataset_samples(
    shards: str | Path | Sequence[str | Path],
    size: int,
    *,
    channels: int = 3,
    crop: bool = True,
    caption_ext: str = "txt",
) -> Iterator[tuple[np.ndarray, str, str]]:
    """Stream ``(uint8 C×size×size image, caption, key)`` samples from WebDataset shards.

    Shards are read in the given order, each in tar streaming mode (one member in memory at a
    time). A sample is the run of consecutive members that share a key; it needs an image
    (:data:`IMAGE_EXTENSIONS`) and a caption member (``KEY.txt``, UTF-8); other members
    (``.json``, ...) are ignored, and samples lacking an image or a caption are skipped (a
    warning gives the count per shard), as ``img2dataset`` leaves failed downloads out.

    Raises:
        FileNotFoundError: a shard is missing.
        ValueError: a shard is not a tar file, or a member cannot be decoded (names both).
    """
    _check(size, channels)
    for shard in expand_shards(shards):
        yield from shard_samples(shard, size, channels=channels, crop=crop, caption_ext=caption_ext)


def shard_samples(
    shard: Path, size: int, *, channels: int = 3, crop: bool = True, caption_ext: str = "txt"
) -> Iterator[tuple[np.ndarray, str, str]]:
    """:func:`iter_webdataset_samples` of one shard: ``(image, caption, key)`` per sample that
    has an image and a caption, in the shard's order."""
    caption_ext = caption_ext.lower()
    skipped = 0
    for key, parts in _shard_groups(shard, (*IMAGE_EXTENSIONS, caption_ext)):
        image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
        text = parts.get(caption_ext)
        if image is None or text is None:
            skipped += 1
            continue
        try:
            with Image.open(io.BytesIO(image[1])) as im:
                arr = image_array(im, size, channels, crop)
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{shard}: cannot decode image member {image[0]}: {e}") from None
        yield arr, _caption(shard, text), key
    if skipped:
        log.warning("%s: skipped %d samples without an image or a caption", shard, skipped)


def _caption(shard: Path, member: tuple[str, bytes]) -> str:
    try:
        return member[1].decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise ValueError(f"{shard}: caption member {member[0]} is not UTF-8: {e}") from None


def scan_shard(
    shard: Path, caption_ext: str = "txt"
) -> Iterator[tuple[str, str | None, list[tuple[str, int]]]]:
    """Every key of one shard, in order, without decoding an image: ``(key, caption or None
    when the sample has no image or no caption, [(member name, size), ...])``. The tar is
    read by its headers, skipping the image bytes (a seek each), so indexing a shard costs
    little more than its captions."""
    caption_ext = caption_ext.lower()

    def read(tar: tarfile.TarFile, member: tarfile.TarInfo, ext: str) -> str | None:
        if ext != caption_ext:
            return None
        f = tar.extractfile(member)
        return _caption(shard, (member.name, f.read() if f is not None else b""))

    for key, group in _tar_groups(shard, "r:*", read):
        image = any(ext in IMAGE_EXTENSIONS for _, ext, _ in group)
        caption = next((text for _, ext, text in group if ext == caption_ext), None)
        yield key, caption if image else None, [(m.name, m.size) for m, _, _ in group]


def _tar_groups(
    shard: Path, mode: str, read: Callable[[tarfile.TarFile, tarfile.TarInfo, str], Any]
) -> Iterator[tuple[str, list[tuple[tarfile.TarInfo, str, Any]]]]:
    """One tar shard as runs of members sharing a key: (key, [(member, extension,
    ``read(tar, member, extension)``), ...]), ``read`` called as each member passes (in
    streaming mode ``r|*`` its bytes can be read only then)."""
    try:
        tar = tarfile.open(shard, mode=mode)  # noqa: SIM115 - closed by the `with` below
    except tarfile.TarError as e:
        raise ValueError(f"{shard}: not a readable tar file: {e}") from None
    with tar:
        key: str | None = None
        group: list[tuple[tarfile.TarInfo, str, Any]] = []
        try:
            for member in tar:
                if not member.isfile():
                    continue
                k, ext = _split_key(member.name)
                if k != key:
                    if key is not None:
                        yield key, group
                    key, group = k, []
                group.append((member, ext, read(tar, member, ext)))
        except tarfile.TarError as e:
            raise ValueError(f"{shard}: broken tar file: {e}") from None
        if key is not None:
            yield key, group


def _shard_groups(
    shard: Path, keep: tuple[str, ...]
) -> Iterator[tuple[str, dict[str, tuple[str, bytes]]]]:
    """Stream one tar shard as (key, {extension: (member name, bytes)}) per run of members
    sharing a key; only extensions in ``keep`` are read."""

    def read(tar: tarfile.TarFile, member: tarfile.TarInfo, ext: str) -> bytes | None:
        if ext not in keep:
            return None
        f = tar.extractfile(member)
        return f.read() if f is not None else b""

    for key, group in _tar_groups(shard, "r|*", read):
        yield key, {ext: (m.name, data) for m, ext, data in group if data is not None}


def iter_webdataset(
    shards: str | Path | Sequence[str | Path],
    batch_size: int,
    size: int,
    *,
    channels: int = 3,
    crop: bool = True,
    caption_ext: str = "txt",
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Stream batches of image–caption pairs from WebDataset shards.

    Batches run across shard boundaries; only one batch of decoded images is held at a time.
    The order is the shards' order (shuffle the shard list for a new order per epoch).

    Args:
        shards: paths, a glob or a brace range (see :func:`expand_shards`).
        batch_size: pairs per batch.
        size: images are made ``size``×``size`` (see :func:`image_array`).
        channels: 3 (RGB) or 1 (grayscale).
        crop: centre-crop to a square (``True``) or stretch (``False``).
        caption_ext: the extension of the caption members.
        drop_last: leave out a last batch smaller than ``batch_size``.

    Yields:
        (uint8 images B×channels×size×size, list of B captions).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    buffer = np.empty((batch_size, channels, size, size), dtype=np.uint8)
    captions: list[str] = []
    for arr, caption, _ in iter_webdataset_samples(
        shards, size, channels=channels, crop=crop, caption_ext=caption_ext
    ):
        buffer[len(captions)] = arr
        captions.append(caption)
        if len(captions) == batch_size:
            yield torch.from_numpy(buffer.copy()), captions
            captions = []
    if captions and not drop_last:
        yield torch.from_numpy(buffer[: len(captions)].copy()), captions


__all__ = [
    "IMAGE_EXTENSIONS",
    "UNLABELLED",
    "expand_shards",
    "find_caption_dir",
    "image_array",
    "iter_webdataset",
    "iter_webdataset_samples",
    "load_caption_csv",
    "load_caption_split",
    "scan_shard",
    "shard_samples",
]
