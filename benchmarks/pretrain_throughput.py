"""Pre-training step throughput per SSL method, and its share of dense-matmul FLOP/s.

For each method: images/s of full engine steps (augmentation, forward, backward, optimizer,
EMA) on random uint8 images, the FLOPs of one step counted by torch's FlopCounterMode, and
the achieved FLOP/s as a share of a dense matmul's FLOP/s (same dtype) measured in the same run.

    python benchmarks/pretrain_throughput.py                 # the CPU presets' shape, fp32
    python benchmarks/pretrain_throughput.py --bf16 --channels-last   # as the presets train
    python benchmarks/pretrain_throughput.py --size 32 --channels 3 --width 1 --stem-stride 1 \
        --batch 256 --device cuda                            # the paper's CIFAR shape
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from sslpoison.data.augment import ViewAugment
from sslpoison.ssl import METHODS
from sslpoison.ssl.pretrain import PretrainConfig, PretrainTask, build_encoder
from sslpoison.train.engine import TensorBatches, TrainConfig, fit
from sslpoison.train.optim import OptimConfig


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_flops(
    device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 10
) -> float:
    """FLOP/s of an n×n matmul in ``dtype`` (2n³ FLOPs each)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def build_task(method: str, args: argparse.Namespace, device: torch.device) -> PretrainTask:
    cfg = PretrainConfig.model_validate(
        {
            "method": method,
            "backbone": {"width": args.width, "stem_stride": args.stem_stride, "arch": args.arch},
        }
    )
    torch.manual_seed(0)
    m = METHODS[method](build_encoder(cfg.backbone, args.channels))
    views = ViewAugment(m.augmentation, args.size, args.channels)
    return PretrainTask(m, views).to(device)


def step_flops(task: PretrainTask, images: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter:
        task(images).backward()
    task.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=sorted(METHODS))
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--stem-stride", type=int, default=2)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (amp / amp_cpu)")
    p.add_argument("--channels-last", action="store_true", help="NHWC convolutions")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    peak = matmul_flops(device, dtype)
    print(
        f"device {device}, threads {torch.get_num_threads()}, dense {str(dtype)[6:]} matmul "
        f"{peak / 1e9:.1f} GFLOP/s; images {args.channels}×{args.size}², batch {args.batch}, "
        f"{args.arch} width {args.width}, stem stride {args.stem_stride}"
        f"{', channels-last' if args.channels_last else ''}"
    )
    print(f"{'method':<8} {'images/s':>9} {'GFLOP/step':>11} {'GFLOP/s':>8} {'% of matmul':>12}")
    g = torch.Generator().manual_seed(0)
    n = args.batch * (args.steps + 1)
    images = torch.randint(
        0, 256, (n, args.channels, args.size, args.size), dtype=torch.uint8, generator=g
    ).to(device)
    for method in args.methods:
        task = build_task(method, args, device)
        flops = step_flops(task, images[: args.batch])
        cfg = TrainConfig(
            epochs=1,
            batch_size=args.batch,
            progress=False,
            checkpoint_every=0,
            optimizer=OptimConfig(name="sgd", lr=0.01),
            amp=args.bf16,
            amp_cpu=args.bf16,
            channels_last=args.channels_last,
        )
        # one warm-up epoch of one step, then the timed epoch
        fit(task, TensorBatches(images[: args.batch], batch_size=args.batch), cfg)
        sync(device)
        result = fit(task, TensorBatches(images[args.batch :], batch_size=args.batch), cfg)
        sync(device)
        rate = result.samples_per_s
        achieved = flops * rate / args.batch
        print(
            f"{method:<8} {rate:>9.0f} {flops / 1e9:>11.2f} {achieved / 1e9:>8.1f} "
            f"{100 * achieved / peak:>11.1f}%"
        )


if __name__ == "__main__":
    main()
