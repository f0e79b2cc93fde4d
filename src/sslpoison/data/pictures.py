"""Image files: reading one (:func:`read_image`, errors naming the file) and pictures of
images (rows of uint8 images side by side, as one PNG)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from sslpoison.errors import DataError, DataFileMissing, one_line
from sslpoison.utils import atomic_write_via


def read_image(file: str | Path, mode: str = "RGB", where: str | None = None) -> Image.Image:
    """The image file ``file`` decoded in full and converted to ``mode`` (``RGB``, ``L``).

    Raises:
        DataFileMissing: no such file (``where``, e.g. the CSV line listing it, is named).
        DataError: naming the file: empty, truncated, damaged or not an image.
    """
    file = Path(file)
    if file.exists() and not file.is_file() and not file.is_dir():  # a pipe, a device
        raise DataError(f"{file}: not a regular file")
    try:
        with Image.open(file) as im:
            return im.convert(mode)  # decodes every pixel: a truncated file fails here
    except FileNotFoundError:
        raise DataFileMissing(f"{where or file.parent}: image not found: {file}") from None
    except IsADirectoryError:
        raise DataError(f"{file}: a folder, not an image file") from None
    except UnidentifiedImageError:
        raise DataError(f"{file}: cannot read image (empty, or not an image format)") from None
    except (OSError, SyntaxError, ValueError, zlib.error, Image.DecompressionBombError) as e:
        raise DataError(f"{file}: cannot read image ({one_line(e, 200)})") from None


def save_rows(rows: Sequence[torch.Tensor], path: str | Path) -> Path:
    """One PNG of ``rows`` (each B×C×H×W uint8, the same shape), each row's images left to
    right, rows top to bottom."""
    grid = torch.cat([torch.cat(list(row.cpu()), dim=2) for row in rows], dim=1)
    arr = grid.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    path = Path(path)
    atomic_write_via(path, lambda tmp: img.save(tmp, format="PNG"))
    return path


__all__ = ["read_image", "save_rows"]
