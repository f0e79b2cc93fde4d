"""Runs one experiment: load data → pre-train (cached) → evaluate → results.json."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from sslpoison.data.imageset import ImageSet
from sslpoison.data.registry import DatasetNotFound, load_dataset, locate_dataset
from sslpoison.eval.downstream import evaluate_encoder
from sslpoison.eval.features import FeatureCache
from sslpoison.experiment.cache import StageCache
from sslpoison.experiment.config import ConfigError, ExperimentConfig
from sslpoison.experiment.results import write_results
from sslpoison.models import load_encoder, save_encoder
from sslpoison.ssl.pretrain import build_encoder, pretrain
from sslpoison.train import dist
from sslpoison.utils import resolve_device, tensor_hash

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
    for key, name, root in wanted:
        try:
            locate_dataset(name, root)
        except (DatasetNotFound, ValueError) as e:
            raise ConfigError(f"{key}: {e}") from None


def pretraining_data(cfg: ExperimentConfig) -> ImageSet:
    data = load_dataset(cfg.data.dataset, "train", root=cfg.data.root)
    data = data.resized(cfg.data.size, cfg.data.channels)
    if cfg.data.subset is not None:
        data = data.take(cfg.data.subset, seed=cfg.seed, stratified=False)
    return data


def pretrain_stage(
    cfg: ExperimentConfig, data: ImageSet, cache: StageCache, device: torch.device
) -> tuple[nn.Module, dict[str, Any], bool]:
    """The pre-trained encoder, from the cache when this exact stage ran before.

    Returns (encoder, the stage's record, whether it came from the cache).
    """
    # Settings that cannot change the trained weights stay out of the key.
    same_result = {"train": {"progress", "checkpoint_every"}}
    key = cache.key(
        "pretrain",
        pretrain=cfg.pretrain.model_dump(mode="json", exclude=same_result),
        data=tensor_hash(data.images),
        seed=cfg.seed,
    )
    folder = cache.path("pretrain", key)
    record = cache.done("pretrain", key)
    if record is not None:
        log.info("pretrain: reusing the cached encoder %s", folder)
        return load_encoder(folder / "encoder", device), record, True
    encoder, result = pretrain(
        data, cfg.pretrain, seed=cfg.seed, device=device, checkpoint_dir=folder / "checkpoints"
    )
    record = {
        "key": key,
        "losses": result.losses,
        "seconds": round(result.seconds, 3),
        "images_per_s": round(result.samples_per_s, 1),
        "resumed_from_epoch": result.resumed_from,
        "input": {"size": data.image_size, "channels": data.channels},
    }
    if dist.rank() == 0:
        save_encoder(
            encoder,
            folder / "encoder",
            input=record["input"],
            pretrain=cfg.pretrain.model_dump(mode="json"),
            dataset=cfg.data.dataset,
        )
        cache.finish("pretrain", key, record)
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    return encoder, record, False


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
    with timed(timings, "pretrain"):
        encoder, record, cached = pretrain_stage(cfg, data, cache, device)
    if dist.is_distributed():  # evaluation runs on rank 0 alone
        main = dist.rank() == 0
        torch.distributed.destroy_process_group()
        if not main:
            return None
    features = FeatureCache(cache.root / "features")
    torch.manual_seed(cfg.seed)
    random_init = build_encoder(cfg.pretrain.backbone, data.channels).to(device)
    with timed(timings, "eval"):
        metrics = evaluate_encoder(
            encoder,
            cfg.eval,
            size=data.image_size,
            channels=data.channels,
            cache=features,
            random_init=random_init,
            seed=cfg.seed,
        )
    out.mkdir(parents=True, exist_ok=True)
    encoder_path = save_encoder(
        encoder,
        out / "encoder",
        input=record["input"],
        pretrain=cfg.pretrain.model_dump(mode="json"),
    )
    timings["total"] = round(time.perf_counter() - t0, 3)
    artifacts = {
        "encoder": str(encoder_path),
        "stage_cache": str(cache.path("pretrain", record["key"])),
    }
    config = cfg.model_dump(mode="json")
    stages = {"pretrain": {**record, "cached": cached}}
    write_results(out, metrics, config, timings, artifacts, stages)
    return {
        "metrics": metrics,
        "config": config,
        "timings": timings,
        "artifacts": artifacts,
        "stages": stages,
    }
