"""Pre-training step throughput per SSL method, and its share of dense-matmul FLOP/s.

For each method: images/s of full engine steps (augmentation, forward, backward, optimizer,
EMA) on random uint8 images, the FLOPs of one step counted by torch's FlopCounterMode, and
the achieved FLOP/s as a share of a dense matmul's FLOP/s (same dtype) measured in the same
run — in fp32, and in bf16 where the hardware has it (a CPU without native bf16 emulates it
many times slower; the column is skipped there, and the line above the table says so). The
first line gives the CPU capability and the fp32 matmul rate; the last, on a CPU, the factor
that scales wall times to the time budgets (fp32 SimCLR images/s at the presets' shape ÷ 350,
the plain machine's; docs/guide.md, "Time budgets").

    python benchmarks/pretrain_throughput.py                 # the CPU presets' shape
    python benchmarks/pretrain_throughput.py --no-channels-last --precision fp32
    python benchmarks/pretrain_throughput.py --size 32 --channels 3 --width 1 --stem-stride 1 \
        --batch 512 --device cuda [--bf16]                   # the paper's CIFAR shape
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
from sslpoison.train.precision import cpu_capability, cpu_has_native_bf16

#: fp32 SimCLR images/s of the plain 2-core AVX2 machine the time budgets are set for.
BUDGET_IMAGES_PER_S = 350

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


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


def precisions(args: argparse.Namespace, device: torch.device) -> tuple[list[str], str | None]:
    """The columns to run, and why bf16 was skipped (None when it was not)."""
    wanted = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    if "bf16" not in wanted or device.type != "cpu" or cpu_has_native_bf16() or args.force_bf16:
        return wanted, None
    why = (
        f"bf16 skipped: this CPU ({cpu_capability()}) has no native bf16 (AVX512-BF16 / AMX), "
        "so torch emulates it many times slower than fp32 (--force-bf16 runs it anyway)"
    )
    return [p for p in wanted if p != "bf16"], why


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=sorted(METHODS))
    p.add_argument("--arch", default="resnet10")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--stem-stride", type=int, default=2)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    p.add_argument(
        "--bf16",
        action="store_const",
        const="bf16",
        dest="precision",
        help="the bf16 column only (same as --precision bf16)",
    )
    p.add_argument(
        "--force-bf16",
        action="store_true",
        help="run the bf16 column even where the CPU emulates bf16 (slow)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="NHWC convolutions (default on, as the presets train)",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    columns, skipped = precisions(args, device)
    peaks = {name: matmul_flops(device, DTYPES[name]) for name in columns}
    fp32 = peaks["fp32"] if "fp32" in peaks else matmul_flops(device, torch.float32)
    cpu = f"CPU capability {cpu_capability()}, native bf16: {cpu_has_native_bf16()}"
    print(
        f"device {device} ({cpu if device.type == 'cpu' else torch.cuda.get_device_name(device)}), "
        f"threads {torch.get_num_threads()}, dense fp32 matmul {fp32 / 1e9:.1f} GFLOP/s"
        + "".join(f", {n} {v / 1e9:.1f}" for n, v in peaks.items() if n != "fp32")
    )
    print(
        f"images {args.channels}×{args.size}², batch {args.batch}, {args.arch} width "
        f"{args.width}, stem stride {args.stem_stride}"
        f"{', channels-last' if args.channels_last else ''}"
    )
    if skipped:
        print(skipped)
    head = "".join(f" {c + ' img/s':>11} {'% matmul':>9}" for c in columns)
    print(f"{'method':<8} {'GFLOP/step':>11}{head}")
    g = torch.Generator().manual_seed(0)
    n = args.batch * (args.steps + 1)
    images = torch.randint(
        0, 256, (n, args.channels, args.size, args.size), dtype=torch.uint8, generator=g
    ).to(device)
    budget_line, fp32_rate = "", 0.0
    for method in args.methods:
        flops = step_flops(build_task(method, args, device), images[: args.batch])
        row = f"{method:<8} {flops / 1e9:>11.2f}"
        for column in columns:
            task = build_task(method, args, device)
            cfg = TrainConfig(
                epochs=1,
                batch_size=args.batch,
                progress=False,
                checkpoint_every=0,
                optimizer=OptimConfig(name="sgd", lr=0.01),
                amp=column == "bf16",
                amp_cpu=column == "bf16",
                channels_last=args.channels_last,
            )
            # one warm-up epoch of one step, then the timed epoch
            fit(task, TensorBatches(images[: args.batch], batch_size=args.batch), cfg)
            sync(device)
            result = fit(task, TensorBatches(images[args.batch :], batch_size=args.batch), cfg)
            sync(device)
            rate = result.samples_per_s
            if column == "fp32":
                fp32_rate = rate
            share = 100 * flops * rate / args.batch / peaks[column]
            row += f" {rate:>11.0f} {share:>8.1f}%"
        print(row, flush=True)
        if method == "simclr" and "fp32" in columns and device.type == "cpu":
            budget_line = (
                f"time budgets: wall s × {fp32_rate / BUDGET_IMAGES_PER_S:.2f} (this machine's "
                f"fp32 simclr {fp32_rate:.0f} img/s ÷ {BUDGET_IMAGES_PER_S}; docs/guide.md)"
            )
    if budget_line:
        print(budget_line)


if __name__ == "__main__":
    main()
