"""How long the HTML report takes to build from a store of many runs (the goal: under 5 s for
100 runs).

Makes ``--runs`` synthetic run folders (no training: ``results.json`` files written by the
library's own writer, with typed rows, stage records and PNG pictures of realistic sizes) in
a temporary folder, indexes them in a fresh SQLite store, then times building the report
from that store (open, query, every table and figure, write), ``--repeat`` times. The runs
mix the kinds of the CPU presets: BadEncoder with and without five defenses and DECREE, an
SSL-Backdoor sweep over the poison rate, CLIP backdoor, indiscriminate poisoning over ε, and
plain pre-training, each over several seeds.

    python benchmarks/report_build.py                # 100 runs
    python benchmarks/report_build.py --runs 300 --keep runs/bench-store
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sslpoison.eval.backdoor import backdoor_row
from sslpoison.eval.encoder import probe_key
from sslpoison.eval.rows import Row
from sslpoison.eval.zero_shot import ZERO_SHOT, zs_key
from sslpoison.experiment.results import Results, write_results
from sslpoison.results.html_report import write_report
from sslpoison.results.store import ResultsStore

DATASETS = ("fashion-mnist", "digits")
DEFENSES = ("mimic", "distill", "feature_distill", "finetune", "fineprune")


def picture(path: Path, side: int, rng: np.random.Generator) -> str:
    """A noisy greyscale PNG (``side`` px: 64 ≈ a trigger strip, 240 ≈ a confusion matrix)."""
    pixels = (rng.random((side, side)) * 64 + 128).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def backdoor(rng: random.Random, encoders: tuple[str, ...]) -> list[Row]:
    rows = []
    for d in DATASETS:
        for e in encoders:
            asr = rng.uniform(0.9, 1) if e == "attacked" else rng.uniform(0, 0.05)
            rows.append(backdoor_row(e, d, "mlp", "acc", rng.uniform(0.8, 0.98)))
            rows.append(backdoor_row(e, d, "mlp", "asr", asr))
            rows.append(backdoor_row(e, d, "linear", "acc", rng.uniform(0.8, 0.98), "_linear"))
    return rows


def make_run(root: Path, i: int, seed: int, rng: random.Random, nrng) -> Path:
    """The ``i``-th synthetic run (its kind cycles through the presets' kinds)."""
    kind = i // 4 % 5
    config: dict[str, Any] = {
        "name": f"bench-{kind}",
        "seed": seed,
        "data": {"dataset": DATASETS[0]},
    }
    config["eval"] = {"datasets": list(DATASETS), "probes": ["mlp", "linear"]}
    stages: dict[str, Any] = {"pretrain": {"key": "k", "precision": "fp32", "cached": True}}
    out = root / f"run{i:03d}"
    out.mkdir(parents=True)
    artifacts: dict[str, str] = {}
    if kind in (0, 1):  # BadEncoder, with defenses and DECREE for kind 1
        defenses = DEFENSES if kind == 1 else ()
        config["attack"] = {"name": "badencoder", "lambda2": 1.0 + i // 20}
        config["defenses"] = [{"name": d, "clean": 0.04} for d in defenses]
        config["detectors"] = [{"name": "decree"}] if kind == 1 else []
        rows = backdoor(rng, ("clean", "attacked", *defenses))
        for d in defenses:
            stages[f"defense:{d}"] = {"clean_images": 2400, "wall_s": rng.uniform(40, 180)}
        for role in ("clean", "attacked") if kind == 1 else ():
            rows.append(Row(None, role, "decree", "pl1", rng.random() / 5, f"decree/{role}_pl1"))
            flagged = int(role == "attacked")
            rows.append(Row(None, role, "decree", "flagged", flagged, f"decree/{role}_flagged"))
            artifacts[f"trigger_inverted:decree/{role}"] = picture(
                out / f"decree-{role}.png", 120, nrng
            )
        for d in DATASETS:
            artifacts[f"trigger:{d}/0"] = picture(out / f"trigger-{d}-0.png", 64, nrng)
            artifacts[f"confusion:{d}/0"] = picture(out / f"confusion-{d}-0.png", 240, nrng)
    elif kind == 2:  # SSL-Backdoor over the poison rate
        config["attack"] = {"name": "ssl_backdoor", "poison": [0.1, 0.25, 0.5][i % 3]}
        rows = backdoor(rng, ("clean", "attacked"))
        rows += [
            backdoor_row(e, d, "mlp", "fp", rng.randrange(100))
            for e in ("clean", "attacked")
            for d in DATASETS
        ]
        artifacts["trigger:fashion-mnist/1"] = picture(out / "trigger.png", 64, nrng)
    elif kind == 3:  # CLIP backdoor (zero-shot) or indiscriminate poisoning over epsilon
        if i % 2:
            config["attack"] = {"name": "clip_backdoor", "poison": 600}
            rows = backdoor(rng, ("clean", "attacked"))
            for role in ("clean", "attacked"):
                for m in ("zs_acc", "zs_asr"):
                    rows.append(
                        Row(
                            DATASETS[0],
                            role,
                            ZERO_SHOT,
                            m,
                            rng.random(),
                            zs_key(role, DATASETS[0], m),
                        )
                    )
        else:
            config["attack"] = {"name": "gc", "epsilon": [0.01, 0.03, 0.1][i % 3]}
            rows = []
            for d in DATASETS:
                for m in ("acc_clean", "acc_poisoned", "acc_drop"):
                    rows.append(Row(d, "clean", "linear", m, rng.random(), f"{d}/{m}"))
    else:  # plain pre-training and evaluation
        config["pretrain"] = {"train": {"epochs": 1 + i % 3}}
        who = ("clean", "random_init", "pixels")
        rows = [
            Row(d, w, p, "acc", rng.random(), probe_key(d, p, w))
            for d in DATASETS for w in who for p in ("linear", "knn")
        ]  # fmt: skip
    results = Results(
        rows, config, {"pretrain": 100.0, "eval": 30.0, "total": 130.0}, artifacts, stages, [],
        {"seed": seed, "precision": "fp32", "torch": "bench", "device": "cpu"},
    )  # fmt: skip
    write_results(out, results)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=4, help="seeds per setting")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", help="keep the runs, the store and the report in this folder")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="report-bench-"))
    try:
        rng, nrng = random.Random(0), np.random.default_rng(0)
        folders = [make_run(root / "runs", i, i % args.seeds, rng, nrng) for i in range(args.runs)]
        t0 = time.perf_counter()
        with ResultsStore(root / "results.sqlite") as store:
            store.add_folders(folders)
        imported = time.perf_counter() - t0
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            with ResultsStore(root / "results.sqlite", read_only=True) as store:
                runs = store.runs()
            page = write_report(runs, root / "report.html")
            times.append(time.perf_counter() - t0)
        size = page.stat().st_size / 1e6
        print(f"{'runs':>5}  {'settings':>8}  {'import s':>8}  {'build s (median)':>16}  "
              f"{'build s (max)':>13}  {'HTML MB':>7}")  # fmt: skip
        settings = len({r.settings for r in runs})
        median = statistics.median(times)
        print(f"{len(runs):>5}  {settings:>8}  {imported:>8.2f}  {median:>16.2f}  "
              f"{max(times):>13.2f}  {size:>7.1f}")  # fmt: skip
        if args.keep:
            print(f"report: {page}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
