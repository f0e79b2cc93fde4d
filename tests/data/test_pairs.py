"""Image–caption pairs: a CSV of (path, caption) and streamed WebDataset shards."""

from __future__ import annotations

import io
import logging
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from sslpoison.data.pairs import (
    UNLABELLED,
    expand_shards,
    iter_webdataset,
    load_caption_csv,
)
from sslpoison.data.registry import DatasetNotFound, load_dataset, load_fitted

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (12, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def write_csv(tmp_path, rows: list[str], header: str = "path,caption,label") -> str:
    (tmp_path / "img").mkdir(exist_ok=True)
    for i, colour in enumerate(COLOURS[:3]):
        (tmp_path / "img" / f"{i}.png").write_bytes(png_bytes(colour))
    path = tmp_path / "pairs.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def test_csv_reads_images_captions_and_labels(tmp_path) -> None:
    rows = ['img/0.png,"a red thing, barely worn",red', "img/1.png,green grass,green"]
    rows.append(f"{tmp_path}/img/2.png,blue sky,blue")  # absolute paths are kept
    data = load_caption_csv(write_csv(tmp_path, rows), size=6, label_column="label")
    assert data.images.shape == (3, 3, 6, 6) and data.images.dtype == torch.uint8
    assert data.captions == ["a red thing, barely worn", "green grass", "blue sky"]
    for i, colour in enumerate(COLOURS[:3]):
        assert data.images[i, :, 3, 3].tolist() == list(colour)
    assert data.classes == ["blue", "green", "red"] and data.labels.tolist() == [2, 1, 0]
    plain = load_caption_csv(write_csv(tmp_path, rows), size=4, channels=1)
    assert plain.classes == [UNLABELLED] and plain.labels.tolist() == [0, 0, 0]
    assert plain.images.shape == (3, 1, 4, 4) and plain.name == "pairs"


def test_csv_custom_columns_and_tsv(tmp_path) -> None:
    path = write_csv(tmp_path, ["a photo\timg/1.png"], header="text\tfile")
    data = load_caption_csv(path, 4, path_column="file", caption_column="text", delimiter="\t")
    assert data.captions == ["a photo"] and data.images[0, :, 0, 0].tolist() == [0, 255, 0]


def test_csv_errors_name_file_column_and_line(tmp_path) -> None:
    path = write_csv(tmp_path, ["img/0.png,red,r"])
    with pytest.raises(ValueError, match=r"pairs\.csv: no column 'caption_text'"):
        load_caption_csv(path, 4, caption_column="caption_text")
    path = write_csv(tmp_path, ["img/0.png,red,r", "img/9.png,missing,m"])
    with pytest.raises(FileNotFoundError, match=r"pairs\.csv, line 3: image not found: .*9\.png"):
        load_caption_csv(path, 4)
    (tmp_path / "img" / "bad.png").write_bytes(b"not an image")
    path = write_csv(tmp_path, ["img/bad.png,broken,b"])
    with pytest.raises(ValueError, match=r"line 2: cannot read image .*bad\.png"):
        load_caption_csv(path, 4)
    with pytest.raises(FileNotFoundError, match="caption CSV not found"):
        load_caption_csv(tmp_path / "nope.csv", 4)


def write_shard(path, samples: list[tuple[str, dict[str, bytes]]]) -> str:
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def sample(i: int, **extra: bytes) -> tuple[str, dict[str, bytes]]:
    members = {"png": png_bytes(COLOURS[i % 5], (10, 20)), "txt": f"caption {i}\n".encode()}
    return f"{i:06d}", {**members, **extra}


def test_webdataset_streams_batches_across_shards(tmp_path, caplog) -> None:
    write_shard(tmp_path / "s-000000.tar", [sample(0), sample(1, json=b"{}"), sample(2)])
    no_caption = ("000099", {"png": png_bytes((1, 2, 3))})
    write_shard(tmp_path / "s-000001.tar", [sample(3), no_caption, sample(4)])
    with caplog.at_level(logging.WARNING):
        batches = list(iter_webdataset(str(tmp_path / "s-{000000..000001}.tar"), 2, size=4))
    assert [b[0].shape for b in batches] == [(2, 3, 4, 4), (2, 3, 4, 4), (1, 3, 4, 4)]
    images = torch.cat([b[0] for b in batches])
    assert images.dtype == torch.uint8
    assert [c for b in batches for c in b[1]] == [f"caption {i}" for i in range(5)]
    for i in range(5):
        assert images[i, :, 2, 2].tolist() == list(COLOURS[i])
    assert "skipped 1 samples" in caplog.text and "s-000001.tar" in caplog.text
    dropped = list(iter_webdataset(str(tmp_path / "s-*.tar"), 2, size=4, drop_last=True))
    assert len(dropped) == 2
    gray = next(iter_webdataset([tmp_path / "s-000000.tar"], 3, size=5, channels=1, crop=False))
    assert gray[0].shape == (3, 1, 5, 5)
    assert np.allclose(gray[0][0].float().numpy(), 76, atol=1)  # luma of pure red


def test_webdataset_is_lazy_and_errors_name_shard_and_member(tmp_path) -> None:
    path = write_shard(
        tmp_path / "bad.tar", [sample(0), sample(1), ("000002", {"png": b"xx", "txt": b"x"})]
    )
    batches = iter_webdataset(path, 2, size=4)
    assert next(batches)[1] == ["caption 0", "caption 1"]  # read before the bad member
    with pytest.raises(ValueError, match=r"bad\.tar: cannot decode image member 000002\.png"):
        next(batches)
    (tmp_path / "text.tar").write_text("not a tar file at all")
    with pytest.raises(ValueError, match=r"text\.tar: not a readable tar file"):
        next(iter_webdataset(tmp_path / "text.tar", 2, size=4))
    write_shard(tmp_path / "s-000002.tar", [sample(0)])
    assert expand_shards(str(tmp_path / "s-{000002..000002}.tar")) == [tmp_path / "s-000002.tar"]
    with pytest.raises(FileNotFoundError, match=r"shard not found: .*s-000003\.tar"):
        expand_shards(str(tmp_path / "s-{000002..000003}.tar"))


def test_registry_captions_dataset_reads_split_csvs(tmp_path) -> None:
    write_csv(tmp_path, [])
    (tmp_path / "train.csv").write_text("path,caption\nimg/0.png,a red thing\nimg/1.png,grass\n")
    (tmp_path / "test.csv").write_text("path,caption,label\nimg/2.png,sky,blue\n")
    train = load_fitted("captions", "train", size=5, root=str(tmp_path))
    assert train.name == "captions" and train.images.shape == (2, 3, 5, 5)
    assert train.captions == ["a red thing", "grass"] and train.classes == [UNLABELLED]
    test = load_dataset("captions", "test", root=str(tmp_path))
    assert test.images.shape == (1, 3, 64, 64) and test.classes == ["blue"]
    (tmp_path / "train.csv").unlink()
    with pytest.raises(DatasetNotFound, match=r"train\.csv"):
        load_dataset("captions", "train", root=str(tmp_path))
