"""Generators of small valid files in every supported format, and of damaged or hostile
variants of them, for the robustness suite."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

# ---- generic damage ----


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Keep the first ``keep`` share of ``path``'s bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def garbage(path: Path, n: int = 700) -> Path:
    """``n`` seeded random bytes (not the file's format)."""
    path.write_bytes(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


#: A 400-byte YAML "billion laughs": nine levels of nine aliases (9**9 values expanded).
BOMB = "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['lol'] * 9)}]\n"
    for p, c in zip([None, *"abcdefgh"], "abcdefghi", strict=True)
)


# ---- hostile pickles ----


class Payload:
    """Unpickles into ``call(*args)``: ``os.system("touch sentinel")`` and the like."""

    def __init__(self, call, *args) -> None:
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def raw_global_pickle(module: str, name: str, arg: str) -> bytes:
    """A protocol-2 pickle calling ``module.name(arg)`` written opcode by opcode (as a hand-
    made payload would be, whatever the pickler)."""
    return (
        b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X" + struct.pack("<I", len(arg))
        + arg.encode() + b"\x85R."
    )  # fmt: skip


def hostile_pickles(sentinel: Path) -> dict[str, bytes]:
    """Pickled dicts that would create ``sentinel`` (or run code) if unpickled unsafely."""
    import subprocess

    touch = f"touch {sentinel}"
    return {
        "os.system": pickle.dumps({b"data": Payload(os.system, touch)}, protocol=2),
        "builtins.eval": pickle.dumps(
            {b"data": Payload(eval, f"open({str(sentinel)!r}, 'w')")}, protocol=4
        ),
        "subprocess.Popen": pickle.dumps(
            {b"data": Payload(subprocess.Popen, ["touch", str(sentinel)])}, protocol=2
        ),
        "posix.system-raw": raw_global_pickle("posix", "system", touch),
        "builtins.exec-raw": raw_global_pickle("builtins", "exec", f"open({str(sentinel)!r}, 'w')"),
        "codecs-rot13": raw_global_pickle("_codecs", "encode", "abc")[:-3]
        + b"X\x05\x00\x00\x00rot13\x86R.",
        "object-array": pickle.dumps(
            {b"data": np.array([Payload(os.system, touch)], dtype=object)}, protocol=2
        ),
    }


# ---- IDX (MNIST family) ----

MNIST_SHAPES = {
    "train-images-idx3-ubyte": (12, 28, 28),
    "train-labels-idx1-ubyte": (12,),
    "t10k-images-idx3-ubyte": (8, 28, 28),
    "t10k-labels-idx1-ubyte": (8,),
}


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(root: Path, gz: bool = True) -> Path:
    """A valid MNIST-family folder (images of 28×28, labels 0..9)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, shape in MNIST_SHAPES.items():
        high = 10 if len(shape) == 1 else 256
        array = rng.integers(0, high, shape, dtype=np.uint8)
        data = idx_bytes(array)
        if gz:
            (root / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (root / stem).write_bytes(data)
    return root


# ---- CIFAR ----


def cifar_batch(n: int = 6, label_max: int = 9) -> dict:
    rng = np.random.default_rng(n)
    return {
        b"batch_label": b"training batch",
        b"labels": [int(i) % (label_max + 1) for i in range(n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def write_cifar10(root: Path, protocol: int = 2) -> Path:
    """A valid ``cifar-10-batches-py`` folder, pickled by this Python at ``protocol``."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    meta = {b"label_names": [f"class{c}".encode() for c in range(10)], b"num_vis": 3072}
    (base / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (base / name).write_bytes(pickle.dumps(cifar_batch(), protocol=protocol))
    return base


# ---- SVHN ----


def svhn_arrays(n: int = 6) -> dict:
    rng = np.random.default_rng(1)
    return {
        "X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
        "y": (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8),
    }


def write_svhn(root: Path, **changes) -> Path:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        savemat(root / f"{split}_32x32.mat", {**svhn_arrays(), **changes})
    return root


# ---- STL-10 ----


def write_stl10(root: Path, n: int = 4) -> Path:
    base = root / "stl10_binary"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    for split in ("train", "test"):
        (base / f"{split}_X.bin").write_bytes(
            rng.integers(0, 256, n * 3 * 96 * 96, dtype=np.uint8).tobytes()
        )
        (base / f"{split}_y.bin").write_bytes((np.arange(n) % 10 + 1).astype(np.uint8).tobytes())
    return base


# ---- images: image folder, GTSRB, captions ----


def png_bytes(size: int = 12, value: int = 0, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    rgb = np.full((size, size, 3), value, dtype=np.uint8)
    rgb[: size // 2] = 255 - value
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


def write_image_folder(root: Path, classes: int = 2, per_class: int = 3, size: int = 12) -> Path:
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.png``."""
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (folder / f"{i}.png").write_bytes(png_bytes(size, 40 * c + i))
    return root


GTSRB_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"


def write_gtsrb(root: Path) -> Path:
    """``GTSRB/Final_Training/Images/0000N/`` (PPM + CSV) and ``Final_Test`` with its GT."""
    train = root / "GTSRB" / "Final_Training" / "Images"
    for c in range(2):
        folder = train / f"{c:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        rows = [GTSRB_HEADER]
        for i in range(2):
            (folder / f"{i}.ppm").write_bytes(png_bytes(14, 50 * c + i, "PPM"))
            rows.append(f"{i}.ppm;14;14;1;1;12;12;{c}")
        (folder / f"GT-{c:05d}.csv").write_text("\n".join(rows) + "\n")
    test = root / "GTSRB" / "Final_Test" / "Images"
    test.mkdir(parents=True, exist_ok=True)
    rows = [GTSRB_HEADER]
    for i in range(3):
        (test / f"{i}.ppm").write_bytes(png_bytes(14, 30 * i, "PPM"))
        rows.append(f"{i}.ppm;14;14;1;1;12;12;{i % 2}")
    (test / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return root


def write_captions(root: Path, n: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = ["path,caption,label"]
    for i in range(n):
        (root / f"{i}.png").write_bytes(png_bytes(16, 20 * i))
        lines.append(f"{i}.png,a photo number {i},c{i % 2}")
    for split in ("train", "test"):
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


# ---- model files ----


def write_encoder(path: Path, width: float = 0.125, channels: int = 1) -> Path:
    """A saved sslpoison encoder ``path.safetensors`` + ``path.json``; returns the stem."""
    from sslpoison.models import save_encoder
    from sslpoison.models.backbone import BackboneConfig, build_encoder

    torch.manual_seed(0)
    save_encoder(build_encoder(BackboneConfig(width=width), channels), path)
    return path


def edit_card(stem: Path, **changes) -> None:
    card_path = stem.with_suffix(".json")
    card = json.loads(card_path.read_text())
    for key, value in changes.items():
        if key == "args":
            card["args"].update(value)
        else:
            card[key] = value
    card_path.write_text(json.dumps(card))


def write_weights(path: Path, state: dict[str, torch.Tensor]) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
