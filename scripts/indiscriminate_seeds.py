"""Repeat an indiscriminate-poisoning preset over seeds, with its null control — a stand-in
until ``sslpoison run CONFIG --seeds`` (issue 26) lands, which this script's output mirrors.

The clean encoder is pre-trained once (``seed`` of the config; from the stage cache when it
ran before); each seed S then draws the downstream labelled set, crafts the poisons and
trains the victims — ``vary: [attack, eval]``. Beside every drop it measures the null control
``<ds>/acc_drop_null[_<victim>][_<countermeasure>]``: as many clean duplicates as there are
poisons (seeded training points with their true labels) appended instead, through the same
victims and countermeasures (the attack's own ``measure_dataset``).

    ATEN_CPU_CAPABILITY=avx2 .venv/bin/python scripts/indiscriminate_seeds.py \\
        configs/cpu-indiscriminate-fmnist.yaml --seeds 0,1,2 --out runs/ft-seeds [--set k=v]

Writes ``OUT/seed-<S>/metrics.json`` (the rows of that seed, null control included),
``OUT/results.json`` (``metrics``: the means; ``aggregate[key] = {mean, std, n, values}``,
sample std) and ``OUT/summary.md`` (mean ± std of the drops and their null controls).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

from sslpoison.attacks.indiscriminate import (
    Crafted,
    IndiscriminateAttack,
    PoisonedDownstream,
)
from sslpoison.attacks.label_flip import pick_base
from sslpoison.data.imageset import ImageSet
from sslpoison.eval.downstream import Downstream
from sslpoison.eval.evaluate import Outcome
from sslpoison.eval.features import FeatureCache
from sslpoison.eval.rows import CLEAN
from sslpoison.experiment.cache import StageCache
from sslpoison.experiment.config import ExperimentConfig, load_config
from sslpoison.experiment.stages import pretrain_stage, pretraining_data
from sslpoison.utils import atomic_write_text, resolve_device

log = logging.getLogger("indiscriminate_seeds")


def duplicates(train: ImageSet, count: int, seed: int) -> PoisonedDownstream:
    """``train`` with ``count`` clean duplicates appended: seeded training points (the ones
    an attack of that seed starts from) with their true labels."""
    base = pick_base(len(train), count, seed)
    images = train.images[base.to(train.device)]
    labels = train.labels[base.to(train.device)]
    crafted = Crafted(images.cpu(), labels.cpu(), base, facts={"null_control": True})
    data = ImageSet(
        torch.cat([train.images, images]), torch.cat([train.labels, labels]),
        list(train.classes), name=train.name,
    )  # fmt: skip
    n = len(train)
    rates = {"rate_of_clean_set": count / n, "rate_of_set": count / (n + count)}
    indices = torch.arange(n, n + count)
    return PoisonedDownstream(data, indices, rates, list(train.classes), crafted=crafted)


def null_rows(
    attack: IndiscriminateAttack, name: str, train: ImageSet, count: int, outcome: Outcome
) -> dict[str, float]:
    """``<ds>/acc_drop_null[...]``: the drops of the null control, measured like the attack's."""
    rows = attack.measure_dataset(name, duplicates(train, count, outcome.seed), outcome)
    prefix = f"{name}/acc_drop"
    return {
        prefix + "_null" + r.key[len(prefix) :]: r.value
        for r in rows
        if r.key.startswith(prefix) and "_features" not in r.key
    }


def run_seed(
    cfg: ExperimentConfig, encoder: torch.nn.Module, data: ImageSet, seed: int, cache: Path
) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics, timings) of one seed: crafting and measuring the attack, and its null
    control, on the downstream labelled set that seed draws."""
    attack = cfg.attack
    assert isinstance(attack, IndiscriminateAttack)
    downstream = Downstream(cfg.eval, data.image_size, data.channels, seed)
    t0 = time.perf_counter()
    poisoned = attack.poison_train_sets(encoder, downstream, seed, pretraining=data)
    t1 = time.perf_counter()
    outcome = Outcome(
        data, None, downstream, poisoned, {CLEAN: encoder}, {}, cfg.eval, FeatureCache(cache),
        seed,
    )  # fmt: skip
    metrics: dict[str, float] = {}
    for name, poisoned_set in poisoned.items():
        metrics |= {r.key: r.value for r in attack.measure_dataset(name, poisoned_set, outcome)}
        metrics |= {f"{name}/facts/{k}": v for k, v in poisoned_set.crafted.facts.items()
                    if isinstance(v, (int, float))}  # fmt: skip
    t2 = time.perf_counter()
    for name, poisoned_set in poisoned.items():
        count = poisoned_set.indices.numel()
        metrics |= null_rows(attack, name, downstream.train(name), count, outcome)
    t3 = time.perf_counter()
    timings = {"craft": t1 - t0, "measure": t2 - t1, "null_control": t3 - t2}
    return metrics, timings


def aggregate(per_seed: list[dict[str, float]]) -> dict[str, dict]:
    """``{key: {mean, std, n, values}}`` over the seeds that have the key (sample std)."""
    keys = sorted({k for m in per_seed for k in m})
    out = {}
    for key in keys:
        values = [m[key] for m in per_seed if key in m and m[key] == m[key]]  # drop NaN
        if not values:
            continue
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        out[key] = {"mean": statistics.fmean(values), "std": std, "n": len(values),
                    "values": values}  # fmt: skip
    return out


def summary(name: str, agg: dict[str, dict], seeds: list[int]) -> str:
    """The drops (points) with their null controls, mean ± std, and the effect test."""
    lines = [
        f"# {name}: {len(seeds)} seeds ({', '.join(map(str, seeds))}), vary: [attack, eval]",
        "",
        "| key | drop (pts) | null control (pts) | effect − control | 3·√(s²ₑ + s²꜀) | clears |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, a in agg.items():
        if "/acc_drop" not in key or "_null" in key:
            continue
        ds, metric = key.split("/", 1)
        null_key = f"{ds}/acc_drop_null{metric[len('acc_drop') :]}"
        effect = f"{100 * a['mean']:.2f} ± {100 * a['std']:.2f}"
        if null_key not in agg:
            lines.append(f"| {key} | {effect} | | | | |")
            continue
        c = agg[null_key]
        gap, bar = a["mean"] - c["mean"], 3 * (a["std"] ** 2 + c["std"] ** 2) ** 0.5
        lines.append(
            f"| {key} | {effect} | {100 * c['mean']:.2f} ± {100 * c['std']:.2f} | "
            f"{100 * gap:.2f} | {100 * bar:.2f} | {'yes' if gap > bar else 'no'} |"
        )
    others = [k for k in agg if "/acc_drop" not in k]
    lines += ["", "| key | mean ± std (n) |", "| --- | --- |"]
    lines += [f"| {k} | {agg[k]['mean']:.4g} ± {agg[k]['std']:.2g} ({agg[k]['n']}) |"
              for k in others]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cfg = load_config(args.config, args.overrides)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    device = resolve_device(cfg.device)
    cache = StageCache(cfg.resolved_cache_dir())
    data = pretraining_data(cfg.data, False, cfg.seed)
    t0 = time.perf_counter()
    encoder, record, cached = pretrain_stage(cfg.pretrain, data, cfg.seed, cache, device)
    log.info("encoder %s (%s)", record["key"], "cached" if cached else "trained")
    per_seed, timings = [], {"pretrain": time.perf_counter() - t0}
    for seed in seeds:
        folder = out / f"seed-{seed}"
        done = folder / "metrics.json"
        if done.exists():  # resume: a finished seed is kept
            saved = json.loads(done.read_text())
            per_seed.append(saved["metrics"])
            continue
        log.info("seed %d", seed)
        metrics, took = run_seed(cfg, encoder, data, seed, cache.root / "features")
        folder.mkdir(parents=True, exist_ok=True)
        content = {"seed": seed, "metrics": metrics, "timings": took}
        atomic_write_text(done, json.dumps(content, indent=1))
        per_seed.append(metrics)
        timings[f"seed-{seed}"] = took
    agg = aggregate(per_seed)
    results = {
        "config": cfg.model_dump(mode="json"),
        "seeds": seeds,
        "vary": ["attack", "eval"],
        "metrics": {k: a["mean"] for k, a in agg.items()},
        "aggregate": agg,
        "timings": timings,
        "encoder": record["key"],
    }
    atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    atomic_write_text(out / "summary.md", summary(cfg.name, agg, seeds))
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
