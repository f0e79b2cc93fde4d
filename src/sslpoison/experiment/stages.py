"""The cached stages of an experiment: pre-train (on clean or poisoned data), then
(optionally) attack the encoder, then (optionally) defend it.

Each stage's output lives in the stage cache under a key that hashes its config slice and its
inputs, so a sweep re-uses what did not change; an interrupted stage resumes from the
engine's checkpoints in its folder.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from sslpoison.attacks.badencoder import Target, run_badencoder
from sslpoison.configbase import Config
from sslpoison.data.captions import caption_imageset
from sslpoison.data.imageset import ImageSet
from sslpoison.data.pairs import UNLABELLED
from sslpoison.data.registry import load_fitted
from sslpoison.defenses import DefenseConfig
from sslpoison.detectors import DetectorConfig
from sslpoison.experiment.cache import StageCache
from sslpoison.experiment.config import ExperimentConfig
from sslpoison.experiment.plots import plot_trigger
from sslpoison.models import load_encoder, save_encoder
from sslpoison.models.io import load_weights
from sslpoison.models.text import Tokenizer
from sslpoison.ssl.clip import CLIP, load_clip, save_clip
from sslpoison.ssl.pretrain import build_encoder, pretrain, pretrain_clip
from sslpoison.train import dist
from sslpoison.train.engine import STAGE_KEY, FitResult
from sslpoison.utils import module_device, module_hash, stable_hash, tensor_hash

log = logging.getLogger(__name__)


def key_slice(cfg: Config, device: torch.device, exclude: Any = None) -> dict[str, Any]:
    """``cfg`` as it enters a stage's cache key: every training section holds the precision
    the stage runs at on ``device`` (results differ between bf16 and fp32) and none of the
    settings that cannot change the trained weights (see ``TrainConfig``)."""
    return cfg.model_dump(mode="json", exclude=exclude, context={STAGE_KEY: device})


def pretraining_data(cfg: ExperimentConfig) -> ImageSet:
    """The pre-training images (``data.subset`` of them); for CLIP with their captions — the
    dataset's own, or a seeded caption template per image filled with its class name."""
    data = load_fitted(cfg.data.dataset, "train", cfg.data.size, cfg.data.channels, cfg.data.root)
    if cfg.data.subset is not None:
        data = data.take(cfg.data.subset, seed=cfg.seed, stratified=False)
    if cfg.pretrain.image_text and data.captions is None:
        if data.classes == [UNLABELLED]:
            raise ValueError(
                f"data.dataset: {cfg.data.dataset!r} has neither captions nor class names "
                f"to write captions from"
            )
        data = caption_imageset(data, seed=cfg.seed)
    return data


def cached_stage(
    cache: StageCache,
    stage: str,
    key: str,
    train: Callable[[Path], tuple[Any, FitResult | None, dict[str, Any]]],
    save: Callable[[Any, Path], None],
    load: Callable[[Path], Any],
) -> tuple[Any, dict[str, Any], bool]:
    """A stage whose output is a model: reuse the cached one, or ``train`` it and cache it.

    ``train(checkpoint_dir)`` returns (the output, the engine's result or None when nothing
    was trained, extra record fields); ``save(output, folder)`` / ``load(folder)`` write and
    read it in the stage's folder. Returns (output, record, cached?).
    """
    folder = cache.path(stage, key)
    record = cache.done(stage, key)
    if record is not None:
        log.info("%s: reusing the cached output %s", stage, folder)
        return load(folder), record, True
    out, result, extra = train(folder / "checkpoints")
    record = {"key": key, **extra}
    if result is not None:
        record |= {
            "losses": result.losses,
            "seconds": round(result.seconds, 3),
            "images_per_s": round(result.samples_per_s, 1),
            "resumed_from_epoch": result.resumed_from,
            "precision": result.precision,
        }
    if dist.rank() == 0:
        save(out, folder)
        cache.finish(stage, key, record)
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    return out, record, False


def encoder_stage(
    cache: StageCache,
    stage: str,
    key: str,
    device: torch.device,
    train: Callable[[Path], tuple[nn.Module, FitResult | None, dict[str, Any]]],
    card: dict[str, Any],
) -> tuple[nn.Module, dict[str, Any], bool]:
    """:func:`cached_stage` for an encoder, saved as ``encoder`` with ``card`` in its JSON."""
    return cached_stage(
        cache,
        stage,
        key,
        train,
        save=lambda encoder, folder: save_encoder(encoder, folder / "encoder", **card),
        load=lambda folder: load_encoder(folder / "encoder", device),
    )


def pretrain_key(
    cfg: ExperimentConfig, data: ImageSet, cache: StageCache, device: torch.device
) -> str:
    """The pre-training stage's key: its config (the text tower only for CLIP, so that adding
    it left the view methods' keys alone; the precision on ``device``), the images (and
    captions) and the seed."""
    exclude: dict[str, Any] = {}
    parts: dict[str, Any] = {"data": tensor_hash(data.images), "seed": cfg.seed}
    if cfg.pretrain.image_text:
        parts["captions"] = stable_hash(data.captions)
    else:
        exclude["text"] = True
    return cache.key("pretrain", pretrain=key_slice(cfg.pretrain, device, exclude), **parts)


def pretrain_card(
    cfg: ExperimentConfig, data: ImageSet, about: dict[str, Any] | None
) -> dict[str, Any]:
    """What a pre-trained model's card records: input shape, recipe, dataset, ``about``."""
    return {
        "input": {"size": data.image_size, "channels": data.channels},
        "pretrain": cfg.pretrain.model_dump(mode="json"),
        "dataset": cfg.data.dataset,
        **(about or {}),
    }


def pretrain_stage(
    cfg: ExperimentConfig,
    data: ImageSet,
    cache: StageCache,
    device: torch.device,
    about: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any], bool]:
    """The encoder pre-trained on ``data`` (clean, or poisoned: the key hashes the images),
    from the cache when this exact stage ran before. ``about`` (e.g. the poison facts) goes
    into the record and the encoder's card.

    Returns (encoder, the stage's record, whether it came from the cache).
    """
    key = pretrain_key(cfg, data, cache, device)
    shape = {"size": data.image_size, "channels": data.channels}

    def train(checkpoints: Path) -> tuple[nn.Module, FitResult, dict[str, Any]]:
        encoder, result = pretrain(
            data, cfg.pretrain, seed=cfg.seed, device=device, checkpoint_dir=checkpoints
        )
        return encoder, result, {"input": shape, **(about or {})}

    return encoder_stage(cache, "pretrain", key, device, train, pretrain_card(cfg, data, about))


def clip_stage(
    cfg: ExperimentConfig,
    data: ImageSet,
    cache: StageCache,
    device: torch.device,
    about: dict[str, Any] | None = None,
) -> tuple[tuple[CLIP, Tokenizer], dict[str, Any], bool]:
    """The CLIP model pre-trained on ``data``'s image–caption pairs (clean, or poisoned: the
    key hashes images and captions), from the cache when this exact stage ran before. The
    stage folder holds the model (``clip``) and its image tower alone (``encoder``).

    Returns ((model, tokenizer), the stage's record, whether it came from the cache).
    """
    key = pretrain_key(cfg, data, cache, device)
    shape = {"size": data.image_size, "channels": data.channels}
    card = pretrain_card(cfg, data, about)

    def train(checkpoints: Path) -> tuple[tuple[CLIP, Tokenizer], FitResult, dict[str, Any]]:
        model, tokenizer, result = pretrain_clip(
            data, cfg.pretrain, seed=cfg.seed, device=device, checkpoint_dir=checkpoints
        )
        extra = {"input": shape, "vocab_size": tokenizer.vocab_size, **(about or {})}
        return (model, tokenizer), result, extra

    def save(out: tuple[CLIP, Tokenizer], folder: Path) -> None:
        model, tokenizer = out
        save_clip(model, tokenizer, cfg.pretrain.text, folder / "clip", **card)
        save_encoder(model.backbone, folder / "encoder", **card)

    def load(folder: Path) -> tuple[CLIP, Tokenizer]:
        return load_clip(folder / "clip", device)

    return cached_stage(cache, "pretrain", key, train, save, load)


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
        attack=key_slice(attack, device),
        clean=module_hash(clean),
        shadow=tensor_hash(shadow.images),
        seed=cfg.seed,
    )

    def train(checkpoints: Path) -> tuple[nn.Module, FitResult, dict[str, Any]]:
        encoder, result, parts = run_badencoder(
            copy.deepcopy(clean),
            shadow,
            targets,
            attack,
            seed=cfg.seed,
            checkpoint_dir=checkpoints,
        )
        return encoder, result, {"shadow_images": len(shadow), "loss_terms": parts}

    card = {"attack": attack.model_dump(mode="json")}
    return encoder_stage(cache, "attack", key, device, train, card)


def defense_stage(
    cfg: ExperimentConfig,
    defense: DefenseConfig,
    suspect: nn.Module,
    clean_data: ImageSet,
    cache: StageCache,
    device: torch.device,
) -> tuple[nn.Module, dict[str, Any], bool]:
    """``defense`` applied to the suspect encoder with ``defense.clean`` of the clean
    pre-training images, from the cache when this exact stage ran before. The defense's seed
    is ``defense.seed``, or the experiment's when that is unset.

    Returns (defended encoder, the stage's record, whether it came from the cache).
    """
    seed = cfg.seed if defense.seed is None else defense.seed
    subset = defense.clean_subset(clean_data, seed=seed)
    key = cache.key(
        "defense",
        defense=key_slice(defense, device, exclude={"control": True, "seed": True}),
        suspect=module_hash(suspect),
        clean=tensor_hash(subset.images),
        seed=seed,
    )

    def train(checkpoints: Path) -> tuple[nn.Module, FitResult | None, dict[str, Any]]:
        t0 = time.perf_counter()
        done = defense.apply(copy.deepcopy(suspect), subset, seed=seed, checkpoint_dir=checkpoints)
        used = {
            "clean_images": len(subset),
            "clean_share": len(subset) / len(clean_data),
            "seed": seed,
            "wall_s": round(time.perf_counter() - t0, 3),
        }
        return done.encoder, done.fit, {**used, **done.record}

    card = {"defense": defense.model_dump(mode="json")}
    return encoder_stage(cache, "defense", key, device, train, card)


def detect_stage(
    cfg: ExperimentConfig,
    detector: DetectorConfig,
    encoder: nn.Module,
    clean_data: ImageSet,
    cache: StageCache,
) -> tuple[dict[str, Any], bool]:
    """``detector``'s verdict on ``encoder`` with ``detector.clean`` of the clean pre-training
    images, from the cache when this exact stage ran before.

    Returns (the record — ``score``, ``flagged``, the detector's facts, ``wall_s`` and
    ``trigger_png`` when a trigger was inverted — and whether it came from the cache).
    """
    subset = detector.clean_subset(clean_data, seed=cfg.seed)
    key = cache.key(
        "detect",
        detector=key_slice(detector, module_device(encoder)),
        encoder=module_hash(encoder),
        clean=tensor_hash(subset.images),
        seed=cfg.seed,
    )
    record = cache.done("detect", key)
    if record is not None:
        return record, True
    folder = cache.path("detect", key)
    t0 = time.perf_counter()
    found = detector.detect(encoder, subset, seed=cfg.seed, checkpoint_dir=folder / "checkpoints")
    record = {
        "key": key,
        "score": found.score,
        "flagged": found.flagged,
        **({"precision": found.fit.precision} if found.fit is not None else {}),
        **found.record,
        "wall_s": round(time.perf_counter() - t0, 3),
    }
    if dist.rank() == 0:
        if found.mask is not None and found.trigger is not None:
            title = f"{detector.name}: score {found.score:.4f}, flagged {found.flagged}"
            record["trigger_png"] = str(
                plot_trigger(found.mask, found.trigger, folder / "trigger.png", title)
            )
        cache.finish("detect", key, record)
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    return record, False
