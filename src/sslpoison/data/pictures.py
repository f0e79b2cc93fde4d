"""Pictures of images: rows of uint8 images side by side, as one PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from sslpoison.utils import atomic_write_via


def save_rows(rows: Sequence[torch.Tensor], path: str | Path) -> Path:
    """One PNG of ``rows`` (each B×C×H×W uint8, the same shape), each row's images left to
    right, rows top to bottom."""
    grid = torch.cat([torch.cat(list(row.cpu()), dim=2) for row in rows], dim=1)
    arr = grid.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    path = Path(path)
    atomic_write_via(path, lambda tmp: img.save(tmp, format="PNG"))
    return path


__all__ = ["save_rows"]
