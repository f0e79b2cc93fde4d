"""Feature-extraction throughput through our encoders versus the bare model, on one batch.

Two comparisons, on the same random weights and the same batch of uint8 images:

* ``vit``: :func:`sslpoison.eval.features.extract_features` with our ViT (uint8 → [0, 1] →
  normalisation inside the encoder → forward) versus the bare forward of transformers'
  ``CLIPVisionModel`` holding the same weights, on pixels normalised beforehand;
* ``hf``: ``extract_features`` with :class:`~sslpoison.models.hf.HFEncoder` (the wrapper:
  the same conversion and normalisation, then the wrapped model) versus that model's bare
  forward on pixels normalised beforehand.

Prints images/s of each and the ratio (target ≥ 0.9: the wrapper costs at most a tenth).

    python benchmarks/encoder_wrapper.py                       # a CPU-sized ViT, 64 px
    python benchmarks/encoder_wrapper.py --size 224 --patch 32 --width 768 --depth 12 \\
        --heads 12 --batch 256 --device cuda                   # CLIP ViT-B/32's shape
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from sslpoison.eval.features import extract_features
from sslpoison.models import build_backbone
from sslpoison.models.hf import quiet_transformers, require_transformers
from sslpoison.models.inputs import CLIP_MEAN, CLIP_STD
from sslpoison.models.layouts import LAYOUTS


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(run: Callable[[], object], n: int, device: torch.device, repeats: int) -> float:
    """Images/s of ``run`` (``n`` images a call): the best of ``repeats`` timed calls after one
    warm-up (the best, as the machine may be shared)."""
    run()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return n / best


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tf = require_transformers()
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = tf.CLIPVisionConfig(
        hidden_size=args.width, intermediate_size=4 * args.width, num_hidden_layers=args.depth,
        num_attention_heads=args.heads, image_size=args.size, patch_size=args.patch,
    )  # fmt: skip
    with quiet_transformers():
        bare = tf.CLIPVisionModel(config).to(device).eval()
    vit = build_backbone(
        "vit", image_size=args.size, patch_size=args.patch, width=args.width, depth=args.depth,
        heads=args.heads, act="quick_gelu", eps=1e-5, ln_pre=True, patch_bias=False,
        mean=CLIP_MEAN, std=CLIP_STD,
    ).eval()  # fmt: skip
    state = LAYOUTS["hf-clip"].to_ours(bare.state_dict())
    vit.load_state_dict(state | {"mean": vit.mean, "std": vit.std})
    vit.to(device)
    vision = {**config.to_dict(), "model_type": "clip_vision_model"}
    wrapped = build_backbone("hf", config=vision, output="pooled").eval()
    wrapped.model.load_state_dict(bare.state_dict())
    wrapped.to(device)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8)
    images = images.to(device)
    pixels = (images.float() / 255 - vit.mean) / vit.std  # normalised once, outside the timing

    def bare_forward() -> object:
        return bare(pixel_values=pixels).pooler_output

    n = args.batch
    reference = rate(bare_forward, n, device, args.repeats)
    print(
        f"{device.type}, {torch.get_num_threads()} threads; ViT {args.size} px, patch "
        f"{args.patch}, width {args.width}, depth {args.depth}, batch {n}"
    )
    print(f"{'what':<44} {'images/s':>9} {'ratio':>6}")
    print(f"{'transformers CLIPVisionModel, bare forward':<44} {reference:>9.1f} {1.0:>6.2f}")
    for name, encoder in (
        ("our ViT, extract_features", vit),
        ("HFEncoder, extract_features", wrapped),
    ):
        mine = rate(
            lambda e=encoder: extract_features(e, images, batch_size=n), n, device, args.repeats
        )
        print(f"{name:<44} {mine:>9.1f} {mine / reference:>6.2f}")


if __name__ == "__main__":
    main()
