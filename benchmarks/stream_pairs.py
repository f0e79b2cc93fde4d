"""Streaming image–caption pairs from WebDataset shards against reading them into memory:
pairs/s and peak memory, for 1× and 10× the shards.

Writes ``--shards`` × 10 shards of ``--per-shard`` captioned JPEGs (img2dataset's layout:
``KEY.jpg``, ``KEY.txt``, ``KEY.json``; seeded synthetic pattern images at ``--size`` px) in
a temporary folder, then measures each case in a fresh process (its peak RSS is its own):

- ``stream``: :class:`~sslpoison.data.shards.StreamBatches` over the shards (index, then one
  epoch of ``--batch`` batches: decode, shuffle buffer, tokenize), ``--workers`` DataLoader
  processes (their memory is not in the peak; with 0 everything is in the one process);
- ``memory``: the in-memory reader (:func:`~sslpoison.data.pairs.iter_webdataset_samples`
  into one uint8 tensor, captions tokenized), then one epoch of
  :class:`~sslpoison.train.engine.TensorBatches`.

Columns: the time to index the shards (stream: headers and captions) or to load them (memory:
every image decoded), one epoch's time, pairs/s of the first epoch (both included) and of
an epoch alone (later epochs: the stream decodes again, memory only slices), and the peak
RSS. The peak RSS of ``stream`` must stay flat from 1× to 10× the shards; ``memory`` grows
with the pairs.

    python benchmarks/stream_pairs.py                        # 4 and 40 shards of 500, 64 px
    python benchmarks/stream_pairs.py --workers 2 --size 96
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_shards(folder: Path, shards: int, per_shard: int, size: int) -> None:
    """``shards`` tar files of ``per_shard`` seeded pattern images (JPEG) with captions."""
    from sslpoison.data.captions import caption_imageset
    from sslpoison.data.synthetic import synthetic

    data = caption_imageset(synthetic(per_shard, num_classes=4, size=size, channels=3), seed=0)
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                arr = data.images[i].numpy().transpose(1, 2, 0)
                noisy = np.clip(arr + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(noisy).save(buf, "JPEG", quality=90)
                members = {
                    "jpg": buf.getvalue(),
                    "txt": data.captions[i].encode(),
                    "json": json.dumps({"key": key}).encode(),
                }
                for ext, blob in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))


def child(args: argparse.Namespace) -> None:
    """One measurement in this process: prints ``{"pairs", "seconds", "peak_mb"}``."""
    import torch

    from sslpoison.data.pairs import iter_webdataset_samples
    from sslpoison.data.shards import open_stream
    from sslpoison.models.text import Tokenizer
    from sslpoison.train.engine import TensorBatches

    torch.set_num_threads(1)
    pattern = f"{args.folder}/{{00000..{args.count - 1:05d}}}.tar"
    t0 = time.perf_counter()
    pairs = 0
    if args.mode == "stream":
        stream = open_stream(pattern, args.size, 3, buffer=args.buffer, workers=args.workers)
        tokenizer = Tokenizer.from_counts(stream.words, context_length=32)
        batches = stream.batches(args.batch, tokenizer, seed=0)
        prepared = time.perf_counter()
        for images, _ in batches.epoch(0):
            pairs += images.shape[0]
    else:
        images, captions = [], []
        for image, caption, _ in iter_webdataset_samples(pattern, args.size):
            images.append(image)
            captions.append(caption)
        tensor = torch.from_numpy(np.stack(images))
        del images
        tokenizer = Tokenizer.build(captions, context_length=32)
        ids = tokenizer.encode(captions)
        prepared = time.perf_counter()
        for batch, _ in TensorBatches(tensor, ids, batch_size=args.batch, seed=0).epoch(0):
            pairs += batch.shape[0]
    end = time.perf_counter()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"pairs": pairs, "prepare_s": prepared - t0, "epoch_s": end - prepared}
    print(json.dumps(result | {"peak_mb": peak_mb}))


def measure(args: argparse.Namespace, folder: Path, mode: str, count: int) -> dict:
    cmd = [
        sys.executable, __file__, "--child", mode, "--folder", str(folder), "--count",
        str(count), "--size", str(args.size), "--batch", str(args.batch), "--buffer",
        str(args.buffer), "--workers", str(args.workers),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4, help="shards of the 1× case")
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--buffer", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--child", choices=("stream", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mode = args.child
        child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "shards"
        t0 = time.perf_counter()
        write_shards(folder, args.shards * 10, args.per_shard, args.size)
        print(
            f"{args.shards * 10} shards of {args.per_shard} JPEGs at {args.size} px written in "
            f"{time.perf_counter() - t0:.1f} s; batch {args.batch}, buffer {args.buffer}, "
            f"{args.workers} workers, 1 torch thread"
        )
        print(
            "| reader | shards | pairs | index / load (s) | epoch (s) | pairs/s, first epoch "
            "| pairs/s, an epoch | peak RSS (MB) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for mode in ("stream", "memory"):
            for count in (args.shards, args.shards * 10):
                r = measure(args, folder, mode, count)
                first = r["pairs"] / (r["prepare_s"] + r["epoch_s"])
                print(
                    f"| {mode} | {count} | {r['pairs']} | {r['prepare_s']:.1f} | "
                    f"{r['epoch_s']:.1f} | {first:.0f} | {r['pairs'] / r['epoch_s']:.0f} | "
                    f"{r['peak_mb']:.0f} |"
                )


if __name__ == "__main__":
    main()
