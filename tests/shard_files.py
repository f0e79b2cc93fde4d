"""Writing WebDataset shards as img2dataset does, for the tests and the benchmarks."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image

from sslpoison.data.imageset import ImageSet


def png(image) -> bytes:
    """A uint8 C×H×W tensor (or array) as PNG bytes (lossless: it reads back the same)."""
    arr = image.numpy() if hasattr(image, "numpy") else image
    buf = io.BytesIO()
    Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(buf, "PNG")
    return buf.getvalue()


def write_shards(
    data: ImageSet, folder: Path, per_shard: int, *, drop_caption: tuple[int, ...] = ()
) -> str:
    """``data`` (with captions) as img2dataset's shards ``folder/00000.tar``, ...: per pair
    ``<key>.png``, ``<key>.txt`` and ``<key>.json``, the key being the pair's index
    (``000123``); pairs in ``drop_caption`` get no ``.txt`` (a failed sample). Returns the
    shards' brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(data)
    shards = (n + per_shard - 1) // per_shard
    for s in range(shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for i in range(s * per_shard, min(n, (s + 1) * per_shard)):
                members = {"png": png(data.images[i]), "json": json.dumps({"key": i}).encode()}
                if i not in drop_caption:
                    members["txt"] = data.captions[i].encode()
                for ext, blob in members.items():
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
    return f"{folder}/{{00000..{shards - 1:05d}}}.tar"
