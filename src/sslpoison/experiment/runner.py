"""Runs one experiment: data → pre-train → [attack] → evaluate → ``results.json``."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from sslpoison.attacks.badencoder import resolve_targets
from sslpoison.data.registry import DatasetNotFound, locate_dataset
from sslpoison.eval.backdoor import evaluate_backdoor
from sslpoison.eval.downstream import evaluate_encoder, load_downstream
from sslpoison.eval.features import FeatureCache
from sslpoison.experiment.cache import StageCache
from sslpoison.experiment.config import ConfigError, ExperimentConfig
from sslpoison.experiment.results import write_results
from sslpoison.experiment.stages import (
    attack_stage,
    given_encoder,
    pretrain_stage,
    pretraining_data,
)
from sslpoison.models import save_encoder
from sslpoison.ssl.pretrain import build_encoder
from sslpoison.train import dist
from sslpoison.utils import resolve_device

log = logging.getLogger(__name__)


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - t0, 3)


def check_datasets(cfg: ExperimentConfig) -> None:
    """Fail early, naming the key, when a dataset the config uses is not present."""
    wanted = [("data.dataset", cfg.data.dataset, cfg.data.root)]
    wanted += [(f"eval.datasets.{i}", name, None) for i, name in enumerate(cfg.eval.datasets)]
    if cfg.attack is not None:
        wanted += [
            (f"attack.targets.{i}.dataset", t.dataset, None)
            for i, t in enumerate(cfg.attack.targets)
        ]
    for key, name, root in wanted:
        try:
            locate_dataset(name, root)
        except (DatasetNotFound, ValueError) as e:
            raise ConfigError(f"{key}: {e}") from None


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path) -> dict[str, Any] | None:
    """Run ``cfg``; write ``out_dir/results.json`` (rank 0 only) and return its content."""
    out = Path(out_dir)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = dist.init_from_env(resolve_device(cfg.device))
    check_datasets(cfg)
    cache = StageCache(cfg.resolved_cache_dir())
    with timed(timings, "load_data"):
        data = pretraining_data(cfg)
    log.info("pre-training data: %s", data)
    if cfg.attack is not None:  # refuse impossible targets before any training
        try:
            targets = resolve_targets(cfg.attack.targets, data.image_size, data.channels, cfg.seed)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(str(e)) from None
    stages: dict[str, Any] = {}
    artifacts: dict[str, str] = {}
    if cfg.attack is not None and cfg.attack.encoder is not None:  # no pre-training needed
        encoder = given_encoder(cfg, data.channels, device)
        stages["pretrain"] = {"given": cfg.attack.encoder}
    else:
        with timed(timings, "pretrain"):
            encoder, record, cached = pretrain_stage(cfg, data, cache, device)
        stages["pretrain"] = {**record, "cached": cached}
        artifacts["stage_cache"] = str(cache.path("pretrain", record["key"]))
    if cfg.attack is not None:
        clean = encoder
        with timed(timings, "attack"):
            encoder, attack_record, cached = attack_stage(cfg, data, clean, targets, cache, device)
        stages["attack"] = {**attack_record, "cached": cached}
        artifacts["attack_stage_cache"] = str(cache.path("attack", attack_record["key"]))
    if dist.is_distributed():  # evaluation runs on rank 0 alone
        main = dist.rank() == 0
        torch.distributed.destroy_process_group()
        if not main:
            return None
    features = FeatureCache(cache.root / "features")
    size, channels = data.image_size, data.channels
    with timed(timings, "eval"):
        if cfg.attack is not None:
            metrics = evaluate_backdoor(
                clean,
                encoder,
                targets,
                cfg.eval,
                size=size,
                channels=channels,
                cache=features,
                seed=cfg.seed,
            )
        else:
            torch.manual_seed(cfg.seed)
            random_init = build_encoder(cfg.pretrain.backbone, channels).to(device)
            metrics = evaluate_encoder(
                encoder,
                cfg.eval,
                size=size,
                channels=channels,
                cache=features,
                random_init=random_init,
                seed=cfg.seed,
            )
    out.mkdir(parents=True, exist_ok=True)
    if cfg.attack is not None:
        for t in targets:
            _, test = load_downstream(t.dataset, size, channels, 1, test_subset=8, seed=cfg.seed)
            path = out / re.sub(r"[^\w.-]+", "_", f"trigger-{t.dataset}-{t.class_name}.png")
            artifacts[f"trigger:{t.dataset}/{t.class_name}"] = str(
                t.trigger.save_examples(test.images, path, seed=cfg.seed)
            )
    input_card = {"size": size, "channels": channels}
    artifacts["encoder"] = str(
        save_encoder(encoder, out / "encoder", input=input_card, config=cfg.model_dump(mode="json"))
    )
    timings["total"] = round(time.perf_counter() - t0, 3)
    config = cfg.model_dump(mode="json")
    write_results(out, metrics, config, timings, artifacts, stages)
    return {
        "metrics": metrics,
        "config": config,
        "timings": timings,
        "artifacts": artifacts,
        "stages": stages,
    }
