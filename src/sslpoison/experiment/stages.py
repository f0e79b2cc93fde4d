"""The cached stages of an experiment: pre-train, then (optionally) attack the encoder.

Each stage's output lives in the stage cache under a key that hashes its config slice and its
inputs, so a sweep re-uses what did not change; an interrupted stage resumes from the
engine's checkpoints in its folder.
"""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from sslpoison.attacks.badencoder import Target, run_badencoder
from sslpoison.data.imageset import ImageSet
from sslpoison.data.registry import load_dataset
from sslpoison.experiment.cache import StageCache
from sslpoison.experiment.config import ExperimentConfig
from sslpoison.models import load_encoder, save_encoder
from sslpoison.models.io import load_weights
from sslpoison.ssl.pretrain import build_encoder, pretrain
from sslpoison.train import dist
from sslpoison.utils import module_hash, tensor_hash

log = logging.getLogger(__name__)

#: Settings that cannot change a stage's trained weights stay out of its cache key.
SAME_RESULT = {"progress", "checkpoint_every"}


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
    same_result = {"train": SAME_RESULT}
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


def given_encoder(cfg: ExperimentConfig, channels: int, device: torch.device) -> nn.Module:
    """``attack.encoder``: a saved sslpoison encoder, or a plain state dict mapped onto
    ``pretrain.backbone`` through ``attack.key_map``."""
    path = cfg.attack.encoder
    try:
        if Path(path).with_suffix(".json").exists():
            return load_encoder(path, device)
        model = build_encoder(cfg.pretrain.backbone, channels)
        return load_weights(model, path, cfg.attack.key_map).to(device)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"attack.encoder: {e}") from None


def attack_stage(
    cfg: ExperimentConfig,
    data: ImageSet,
    clean: nn.Module,
    targets: list[Target],
    cache: StageCache,
    device: torch.device,
) -> tuple[nn.Module, dict[str, Any], bool]:
    """The backdoored encoder (BadEncoder), from the cache when this exact stage ran before.

    Returns (backdoored encoder, the stage's record, whether it came from the cache).
    """
    attack = cfg.attack
    shadow = data.take(attack.shadow, seed=cfg.seed, stratified=False)
    key = cache.key(
        "attack",
        attack=attack.model_dump(mode="json", exclude={"train": SAME_RESULT}),
        clean=module_hash(clean),
        shadow=tensor_hash(shadow.images),
        seed=cfg.seed,
    )
    folder = cache.path("attack", key)
    record = cache.done("attack", key)
    if record is not None:
        log.info("attack: reusing the cached backdoored encoder %s", folder)
        return load_encoder(folder / "encoder", device), record, True
    attacked = copy.deepcopy(clean)
    attacked, result, parts = run_badencoder(
        attacked, shadow, targets, attack, seed=cfg.seed, checkpoint_dir=folder / "checkpoints"
    )
    record = {
        "key": key,
        "shadow_images": len(shadow),
        "losses": result.losses,
        "loss_terms": parts,
        "seconds": round(result.seconds, 3),
        "images_per_s": round(result.samples_per_s, 1),
        "resumed_from_epoch": result.resumed_from,
    }
    if dist.rank() == 0:
        save_encoder(attacked, folder / "encoder", attack=attack.model_dump(mode="json"))
        cache.finish("attack", key, record)
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    return attacked, record, False
