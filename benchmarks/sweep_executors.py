"""A sweep of 8 tiny cells under ``serial`` against ``local --jobs 2``: wall time, end to end.

The cells are the tiny synthetic run of the tests (one SimCLR epoch on ``--images`` images,
k-NN evaluation), one per seed — each pre-trains its own encoder, so nothing is shared and
the cells are independent: the case where parallel processes help most. ``--shared`` varies
the evaluation instead (one pre-training for all: the plan runs it first, alone). Each
executor runs ``sslpoison sweep`` in a fresh process with a fresh stage cache. Every cell
runs on ``--threads`` torch threads (default 1: both executors do the same arithmetic, so
their metrics must agree; ``--threads 0`` leaves ``threads:`` unset: serial cells then use
every core, local ones share the cores between the jobs).

    python benchmarks/sweep_executors.py                  # 8 cells, 2 jobs
    python benchmarks/sweep_executors.py --shared --epochs 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def base_config(args: argparse.Namespace) -> dict:
    return {
        "name": "bench-cells",
        "seed": 0,
        **({"threads": args.threads} if args.threads else {}),
        "data": {"dataset": "synthetic", "subset": args.images},
        "pretrain": {
            "method": "simclr",
            "backbone": {"width": 0.125},
            "train": {"epochs": args.epochs, "batch_size": 64, "progress": False},
        },
        "eval": {
            "datasets": ["synthetic"],
            "labelled": 128,
            "test_subset": 64,
            "probes": ["knn"],
            "knn": {"k": 5},
            "baselines": [],
        },
    }


def run_sweep(folder: Path, sweep: Path, executor: list[str]) -> tuple[float, list[float]]:
    """Wall seconds of ``sslpoison sweep`` and the cells' metric (in grid order)."""
    env = {**os.environ, "SSLPOISON_CACHE": str(folder / "cache"),
           "SSLPOISON_RESULTS": str(folder / "results.sqlite")}  # fmt: skip
    out = folder / "out"
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "sslpoison.cli", "sweep", str(sweep), "--out", str(out), *executor],
        env=env,
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - t0
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    return wall, [r["synthetic/knn_acc"] for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--shared", action="store_true", help="one pre-training for all")
    parser.add_argument("--threads", type=int, default=1, help="per cell; 0: unset")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "base.yaml").write_text(yaml.safe_dump(base_config(args)))
        grid = (
            {"eval.knn.k": list(range(3, 3 + args.cells))}
            if args.shared
            else {"seed": list(range(args.cells))}
        )
        sweep = {"name": "bench", "base": "base.yaml", "grid": grid,
                 "metrics": ["synthetic/knn_acc"]}  # fmt: skip
        (root / "sweep.yaml").write_text(yaml.safe_dump(sweep))
        cases = {
            "serial": [],
            f"local --jobs {args.jobs}": ["--executor", "local", "--jobs", str(args.jobs)],
        }
        print(
            f"{args.cells} cells ({'one shared pre-training' if args.shared else 'independent'}"
            f", {args.epochs} SimCLR epochs on {args.images} images each, "
            f"{args.threads or 'default'} torch threads per cell); {os.cpu_count()} CPU cores"
        )
        print("| executor | wall (s) | per cell (s) | same metrics as serial |")
        print("|---|---|---|---|")
        first = None
        for name, flags in cases.items():
            wall, metrics = run_sweep(root / name.split()[0], root / "sweep.yaml", flags)
            first = metrics if first is None else first
            same = "yes" if metrics == first else "NO"
            print(f"| {name} | {wall:.1f} | {wall / args.cells:.1f} | {same} |")


if __name__ == "__main__":
    main()
