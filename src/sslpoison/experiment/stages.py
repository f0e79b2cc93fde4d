"""The cached stages of an experiment, each taking its own config slice: pre-train (on clean,
poisoned or filtered data), attack the encoder, filter the pre-training data, defend the
encoder, detect a backdoor in it.

Each stage's output lives in the stage cache under a key that hashes its config slice and its
inputs (:func:`pretrain_key`, :func:`attack_key`, ...), so a sweep re-uses what did not
change; an interrupted stage resumes from the engine's checkpoints in its folder. The cache
logic itself is :func:`cached_stage`, for every stage.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import save_file

from sslpoison.attacks import EncoderAttack
from sslpoison.configbase import Config, checked_count
from sslpoison.data.captions import caption_imageset
from sslpoison.data.imageset import ImageSet
from sslpoison.data.pairs import UNLABELLED
from sslpoison.data.registry import load_fitted
from sslpoison.data.shards import WEBDATASET, PairStream, open_stream
from sslpoison.defenses import EncoderDefense, FilterContext, PretrainingDataDefense
from sslpoison.detectors import DetectorConfig
from sslpoison.errors import ConfigError
from sslpoison.experiment.cache import StageCache, stage_key
from sslpoison.experiment.config import DataConfig
from sslpoison.models import load_encoder, save_encoder
from sslpoison.models.io import read_safetensors
from sslpoison.models.text import Tokenizer
from sslpoison.poisoning import BackdoorTarget, Filtered
from sslpoison.results.plots import plot_trigger
from sslpoison.ssl.clip import CLIP, load_clip, save_clip
from sslpoison.ssl.pretrain import PretrainConfig, pretrain, pretrain_clip
from sslpoison.train import dist
from sslpoison.train.engine import STAGE_KEY, FitResult
from sslpoison.utils import atomic_write_via, module_device, module_hash, stable_hash

log = logging.getLogger(__name__)

#: A stage's result: (its output, its record — key, facts, losses —, whether it was cached).
StageResult = tuple[Any, dict[str, Any], bool]


def key_slice(cfg: Config, device: torch.device, exclude: Any = None) -> dict[str, Any]:
    """``cfg`` as it enters a stage's cache key: every training section holds the precision
    the stage runs at on ``device`` (results differ between bf16 and fp32) and none of the
    settings that cannot change the trained weights (see ``TrainConfig``)."""
    return cfg.model_dump(mode="json", exclude=exclude, context={STAGE_KEY: device})


def pretraining_data(
    data: DataConfig,
    image_text: bool,
    seed: int = 0,
    cache: Path | None = None,
    size: int | None = None,
    channels: int | None = None,
) -> ImageSet | PairStream:
    """The pre-training images (of ``data.classes``; ``data.subset`` of them, named
    ``data.dataset``), fitted to ``size``×``size`` and ``channels`` (default: ``data.size``,
    ``data.channels``; a given encoder's input); for CLIP (``image_text``) with their
    captions — the dataset's own, or a seeded caption template per image filled with its
    class name. ``dataset: webdataset``: the pairs streamed from ``data.shards``
    (:class:`~sslpoison.data.shards.PairStream`; the shards' indexes are kept in
    ``cache/shards``, ``cache`` being the stage cache's folder)."""
    size = data.size if size is None else size
    channels = data.channels if channels is None else channels
    if data.dataset == WEBDATASET:
        return open_stream(
            data.shards,
            size,
            channels or 3,
            buffer=data.shuffle_buffer,
            workers=data.workers,
            cache=None if cache is None else Path(cache) / "shards",
        )
    images = load_fitted(data.dataset, "train", size, channels, data.root, data.allow_empty_classes)
    if data.classes is not None:
        try:
            images = images.with_classes(data.classes, key="data.classes")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if data.subset is not None:
        what = f"the {data.dataset} train split"
        checked_count("data.subset", data.subset, len(images), what, allowed=data.allow_smaller)
        images = images.take(data.subset, seed=seed, stratified=False)
    if image_text and images.captions is None:
        if images.classes == [UNLABELLED]:
            raise ValueError(
                f"data.dataset: {data.dataset!r} has neither captions nor class names "
                f"to write captions from"
            )
        images = caption_imageset(images, seed=seed)
    return images


def data_fingerprint(data: ImageSet | PairStream) -> str:
    """A hash of the pre-training data's content (images, and captions when it has them;
    for streamed pairs :meth:`~sslpoison.data.shards.PairStream.fingerprint`)."""
    if isinstance(data, PairStream):
        return data.fingerprint()
    return stable_hash([data.images_hash(), data.captions])


def cached_stage(
    cache: StageCache,
    stage: str,
    key: str,
    train: Callable[[Path], tuple[Any, FitResult | None, dict[str, Any]]],
    save: Callable[[Any, Path], dict[str, Any] | None],
    load: Callable[[Path], Any],
) -> StageResult:
    """Reuse the cached output of ``stage`` under ``key``, or ``train`` it and cache it.

    ``train(checkpoint_dir)`` returns (the output, the engine's result or None when nothing
    was trained, extra record fields); ``save(output, folder)`` writes it into the stage's
    folder (returning record fields about what it wrote, or None) and ``load(folder)`` reads
    it back. A damaged cache entry is recomputed (and replaced); a stage that another
    process is computing is waited for, then reused. Returns (output, record, cached?).
    """
    hit = cache.reuse(stage, key, load)
    if hit is None:
        # One process computes a stage; another asking for it waits, then reuses it.
        with cache.lock(stage, key, wait=not dist.is_distributed()):
            hit = cache.reuse(stage, key, load)
            if hit is None:
                return _compute_stage(cache, stage, key, train, save)
    return hit[0], hit[1], True


def _compute_stage(
    cache: StageCache,
    stage: str,
    key: str,
    train: Callable[[Path], tuple[Any, FitResult | None, dict[str, Any]]],
    save: Callable[[Any, Path], dict[str, Any] | None],
) -> StageResult:
    """:func:`cached_stage`'s miss: ``train``, then (rank 0) ``save`` and mark it done."""
    folder = cache.path(stage, key)
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
        record |= save(out, folder) or {}
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
) -> StageResult:
    """:func:`cached_stage` for an encoder, saved as ``encoder`` with ``card`` in its JSON."""

    def save(encoder: nn.Module, folder: Path) -> None:
        save_encoder(encoder, folder / "encoder", **card)

    def load(folder: Path) -> nn.Module:
        return load_encoder(folder / "encoder", device)

    return cached_stage(cache, stage, key, train, save, load)


def pretrain_key(
    pretrain: PretrainConfig, data: ImageSet | PairStream, seed: int, device: torch.device
) -> str:
    """The pre-training stage's key: its config (the text tower only for CLIP, so that adding
    it left the view methods' keys alone; the precision on ``device``), the images (and
    captions; for streamed pairs, the stream's fingerprint) and the seed."""
    exclude: dict[str, Any] = {}
    if isinstance(data, PairStream):  # the shards and the stream's settings, not the pixels
        parts: dict[str, Any] = {"stream": data.fingerprint(), "seed": seed}
    elif pretrain.image_text:
        parts = {"data": data.images_hash(), "seed": seed}
        parts["captions"] = stable_hash(data.captions)
    else:
        parts = {"data": data.images_hash(), "seed": seed}
        exclude["text"] = True
    return stage_key("pretrain", pretrain=key_slice(pretrain, device, exclude), **parts)


def pretrain_card(
    pretrain: PretrainConfig, data: ImageSet, about: dict[str, Any] | None
) -> dict[str, Any]:
    """What a pre-trained model's card records: input shape, recipe, dataset, ``about``."""
    return {
        "input": {"size": data.image_size, "channels": data.channels},
        "pretrain": pretrain.model_dump(mode="json"),
        "dataset": data.name,
        **(about or {}),
    }


def pretrain_stage(
    pretrain_cfg: PretrainConfig,
    data: ImageSet,
    seed: int,
    cache: StageCache,
    device: torch.device,
    about: dict[str, Any] | None = None,
) -> StageResult:
    """The model pre-trained on ``data`` (clean, or poisoned: the key hashes the images, and
    the captions for CLIP), from the cache when this exact stage ran before. ``about`` (e.g.
    the poison facts) goes into the record and the model's card.

    The output is the encoder, or for CLIP (``pretrain.method: clip``) the (model, tokenizer)
    pair; the stage folder then holds the model (``clip``) and its image tower (``encoder``).
    Returns (output, the stage's record, whether it came from the cache).
    """
    key = pretrain_key(pretrain_cfg, data, seed, device)
    shape = {"size": data.image_size, "channels": data.channels}
    card = pretrain_card(pretrain_cfg, data, about)
    if not pretrain_cfg.image_text:

        def train(checkpoints: Path) -> tuple[nn.Module, FitResult, dict[str, Any]]:
            encoder, result = pretrain(
                data, pretrain_cfg, seed=seed, device=device, checkpoint_dir=checkpoints
            )
            return encoder, result, {"input": shape, **(about or {})}

        return encoder_stage(cache, "pretrain", key, device, train, card)

    def train_clip(checkpoints: Path) -> tuple[tuple[CLIP, Tokenizer], FitResult, dict[str, Any]]:
        model, tokenizer, result = pretrain_clip(
            data, pretrain_cfg, seed=seed, device=device, checkpoint_dir=checkpoints
        )
        extra = {"input": shape, "vocab_size": tokenizer.vocab_size, **(about or {})}
        return (model, tokenizer), result, extra

    def save(out: tuple[CLIP, Tokenizer], folder: Path) -> None:
        model, tokenizer = out
        save_clip(model, tokenizer, pretrain_cfg.text, folder / "clip", **card)
        save_encoder(model.backbone, folder / "encoder", **card)

    def load(folder: Path) -> tuple[CLIP, Tokenizer]:
        return load_clip(folder / "clip", device)

    return cached_stage(cache, "pretrain", key, train_clip, save, load)


def attack_key(
    attack: EncoderAttack,
    clean: nn.Module,
    shadow: ImageSet,
    targets: list[BackdoorTarget],
    seed: int,
    device: torch.device,
) -> str:
    """The encoder attack stage's key: its config (precision on ``device``), the clean
    encoder's weights, the shadow images, the prepared targets (their references, by index)
    and the seed."""
    return stage_key(
        "attack",
        attack=key_slice(attack, device),
        clean=module_hash(clean),
        shadow=shadow.images_hash(),
        targets=[t.record() for t in targets],
        seed=seed,
    )


def attack_stage(
    attack: EncoderAttack,
    clean: nn.Module,
    shadow: ImageSet,
    targets: list[BackdoorTarget],
    seed: int,
    cache: StageCache,
    device: torch.device,
) -> StageResult:
    """The attacked encoder (``attack.run`` on a copy of ``clean`` with the ``shadow``
    images and the prepared ``targets``), from the cache when this exact stage ran before.
    The record lists the targets (with their reference indices).

    Returns (attacked encoder, the stage's record, whether it came from the cache).
    """
    key = attack_key(attack, clean, shadow, targets, seed, device)

    def train(checkpoints: Path) -> tuple[nn.Module, FitResult | None, dict[str, Any]]:
        done = attack.run(
            copy.deepcopy(clean), shadow, targets, seed=seed, checkpoint_dir=checkpoints
        )
        record = {"shadow_images": len(shadow), "targets": [t.record() for t in targets]}
        return done.encoder, done.fit, {**record, **done.record}

    card = {"attack": attack.model_dump(mode="json")}
    return encoder_stage(cache, "attack", key, device, train, card)


def defense_key(
    defense: EncoderDefense, suspect: nn.Module, clean: ImageSet, seed: int, device: torch.device
) -> str:
    """The defense stage's key: its config but ``control`` and ``seed`` (the resolved seed is
    its own part), the suspect encoder's weights and the clean images."""
    return stage_key(
        "defense",
        defense=key_slice(defense, device, exclude={"control": True, "seed": True}),
        suspect=module_hash(suspect),
        clean=clean.images_hash(),
        seed=seed,
    )


def defense_stage(
    defense: EncoderDefense,
    suspect: nn.Module,
    clean_data: ImageSet,
    seed: int,
    cache: StageCache,
    device: torch.device,
) -> StageResult:
    """``defense`` applied to the suspect encoder with ``defense.clean`` of the clean
    pre-training images, from the cache when this exact stage ran before. The defense's seed
    is ``defense.seed``, or the experiment's ``seed`` when that is unset.

    Returns (defended encoder, the stage's record, whether it came from the cache).
    """
    seed = seed if defense.seed is None else defense.seed
    subset = defense.clean_subset(clean_data, seed=seed)
    key = defense_key(defense, suspect, subset, seed, device)

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


def filter_key(
    defense: PretrainingDataDefense,
    suspect: nn.Module,
    data: ImageSet,
    recipe: PretrainConfig,
    seed: int,
    device: torch.device,
) -> str:
    """The filter stage's key: the defense's config but ``seed`` (the resolved seed is its own
    part), the suspect encoder's weights, the pre-training images (and captions), the
    pre-training recipe (a defense that trains uses it; the precision on ``device``) and the
    seed."""
    parts: dict[str, Any] = {"data": data.images_hash(), "seed": seed}
    if data.captions is not None:
        parts["captions"] = stable_hash(data.captions)
    exclude = None if recipe.image_text else {"text": True}
    return stage_key(
        "filter",
        defense=key_slice(defense, device, exclude={"seed": True}),
        suspect=module_hash(suspect),
        recipe=key_slice(recipe, device, exclude),
        **parts,
    )


def filter_stage(
    defense: PretrainingDataDefense,
    suspect: nn.Module,
    data: ImageSet,
    recipe: PretrainConfig,
    seed: int,
    cache: StageCache,
    device: torch.device,
    suspect_clip: tuple[CLIP, Tokenizer] | None = None,
) -> StageResult:
    """``defense``'s filter of the pre-training set ``data`` (as the ``suspect`` encoder was
    pre-trained on it), from the cache when this exact stage ran before. The defense's seed is
    ``defense.seed``, or the experiment's ``seed`` when that is unset.

    The output is a :class:`~sslpoison.poisoning.Filtered` (with the model, for a defense that
    trains its own); the record holds its record, the counts kept and removed and ``wall_s``.

    Raises:
        ConfigError: the filter would keep no item, or (when the pipeline pre-trains again)
            fewer than ``pretrain.train.batch_size``.
    """
    seed = seed if defense.seed is None else defense.seed
    key = filter_key(defense, suspect, data, recipe, seed, device)

    def run(checkpoints: Path) -> tuple[Filtered, FitResult | None, dict[str, Any]]:
        t0 = time.perf_counter()
        context = FilterContext(recipe, device, checkpoints, suspect_clip)
        filtered = defense.filter(data, suspect, seed, context=context)
        kept, n = int(filtered.kept.sum()), len(data)
        if kept == 0:
            raise ConfigError(f"defenses: {defense.name} would remove all {n} pre-training items")
        if filtered.model is None and recipe.train.drop_last and kept < recipe.train.batch_size:
            raise ConfigError(
                f"defenses: {defense.name} keeps {kept} of {n} pre-training items, fewer than "
                f"pretrain.train.batch_size ({recipe.train.batch_size}) to pre-train again on"
            )
        facts = {"kept": kept, "removed": n - kept, "seed": seed}
        wall = {"wall_s": round(time.perf_counter() - t0, 3)}
        return filtered, filtered.fit, {**facts, **filtered.record, **wall}

    def save(filtered: Filtered, folder: Path) -> dict[str, Any]:
        tensors = {"kept": filtered.kept.to(torch.uint8), "scores": filtered.scores.contiguous()}
        path = folder / "filtered.safetensors"
        atomic_write_via(path, lambda tmp: save_file(tensors, str(tmp)))
        card = {"defense": defense.model_dump(mode="json")}
        if isinstance(filtered.model, tuple):
            model, tokenizer = filtered.model
            save_clip(model, tokenizer, recipe.text, folder / "clip", **card)
            save_encoder(model.backbone, folder / "encoder", **card)
        elif filtered.model is not None:
            save_encoder(filtered.model, folder / "encoder", **card)
        return {}

    def load(folder: Path) -> Filtered:
        tensors = read_safetensors(folder / "filtered.safetensors")
        record = json.loads((folder / "done.json").read_text(encoding="utf-8"))
        model: Any = None
        if (folder / "clip.json").exists():
            model = load_clip(folder / "clip", device)
        elif (folder / "encoder.json").exists():
            model = load_encoder(folder / "encoder", device)
        return Filtered(tensors["kept"].bool(), tensors["scores"], record, model)

    return cached_stage(cache, "filter", key, run, save, load)


def detect_stage(
    detector: DetectorConfig,
    encoder: nn.Module,
    clean_data: ImageSet,
    seed: int,
    cache: StageCache,
) -> StageResult:
    """``detector``'s verdict on ``encoder`` with ``detector.clean`` of the clean pre-training
    images, from the cache when this exact stage ran before.

    Returns (None, the record — ``score``, ``flagged``, the detector's facts, ``wall_s`` and
    ``trigger_png`` when a trigger was inverted —, whether it came from the cache).
    """
    subset = detector.clean_subset(clean_data, seed=seed)
    key = stage_key(
        "detect",
        detector=key_slice(detector, module_device(encoder)),
        encoder=module_hash(encoder),
        clean=subset.images_hash(),
        seed=seed,
    )

    def judge(checkpoints: Path) -> tuple[Any, None, dict[str, Any]]:
        t0 = time.perf_counter()
        found = detector.detect(encoder, subset, seed=seed, checkpoint_dir=checkpoints)
        record = {
            "score": found.score,
            "flagged": found.flagged,
            **({"precision": found.fit.precision} if found.fit is not None else {}),
            **found.record,
            "wall_s": round(time.perf_counter() - t0, 3),
        }
        return found, None, record

    def save(found: Any, folder: Path) -> dict[str, Any]:
        if found.mask is None or found.trigger is None:
            return {}
        title = f"{detector.name}: score {found.score:.4f}, flagged {found.flagged}"
        picture = plot_trigger(found.mask, found.trigger, folder / "trigger.png", title)
        return {"trigger_png": str(picture)}

    _, record, cached = cached_stage(cache, "detect", key, judge, save, load=lambda _: None)
    return None, record, cached
