"""Runs one experiment: data → [poison] → pre-train → [attack] → [defend] → evaluate →
``results.json`` (plus the artifacts: encoders, trigger examples, poisoned indices,
confusion matrices)."""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from sslpoison.attacks.badencoder import resolve_targets
from sslpoison.attacks.clip_poison import (
    PoisonedPairs,
    draw_trials,
    poison_backdoor,
    poison_targeted,
)
from sslpoison.attacks.ssl_backdoor import PoisonedSet, evaluation_trigger, poison
from sslpoison.data.imageset import ImageSet
from sslpoison.data.registry import DatasetNotFound, load_fitted, locate_dataset
from sslpoison.eval.backdoor import (
    ATTACKED,
    CLEAN,
    ON_CLEAN,
    BackdoorEvaluation,
    BackdoorTarget,
    evaluate_backdoor,
)
from sslpoison.eval.downstream import evaluate_encoder, load_downstream
from sslpoison.eval.features import FeatureCache
from sslpoison.eval.zero_shot import evaluate_targeted, evaluate_zero_shot
from sslpoison.experiment.cache import StageCache
from sslpoison.experiment.config import ConfigError, ExperimentConfig
from sslpoison.experiment.plots import bar_plot, plot_confusions
from sslpoison.experiment.report import (
    backdoor_rows,
    format_backdoor_table,
    format_detections,
    format_zero_shot,
)
from sslpoison.experiment.results import write_results
from sslpoison.experiment.stages import (
    attack_stage,
    clip_stage,
    defense_stage,
    detect_stage,
    given_encoder,
    pretrain_stage,
    pretraining_data,
)
from sslpoison.models import save_encoder
from sslpoison.ssl.clip import save_clip
from sslpoison.ssl.pretrain import build_encoder
from sslpoison.train import dist
from sslpoison.triggers import PatchTrigger
from sslpoison.utils import atomic_write_json, atomic_write_text, resolve_device

log = logging.getLogger(__name__)


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - t0, 3)


def check_datasets(cfg: ExperimentConfig) -> None:
    """Fail early, naming the key, when a dataset the config uses is not present."""
    wanted = [("data.dataset", cfg.data.dataset, cfg.data.root)]
    wanted += [
        (f"eval.datasets.{i}", name, cfg.eval.roots.get(name))
        for i, name in enumerate(cfg.eval.datasets)
    ]
    if cfg.attack is not None and cfg.attack.name == "badencoder":
        wanted += [
            (f"attack.targets.{i}.dataset", t.dataset, None)
            for i, t in enumerate(cfg.attack.targets)
        ]
    for key, name, root in wanted:
        try:
            locate_dataset(name, root)
        except (DatasetNotFound, ValueError) as e:
            raise ConfigError(f"{key}: {e}") from None


def attack_test_split(cfg: ExperimentConfig, data: ImageSet) -> ImageSet:
    """The test split of the dataset a CLIP attack is measured on (``attack.dataset``, by
    default the pre-training dataset), fitted to the pre-training images."""
    name = cfg.attack.dataset or cfg.data.dataset
    return load_fitted(name, "test", data.image_size, data.channels, cfg.eval.roots.get(name))


def resolve_attack(
    cfg: ExperimentConfig, data: ImageSet
) -> tuple[list[BackdoorTarget], PoisonedSet | PoisonedPairs | None]:
    """The attack's evaluation targets (and, for data poisoning, the poisoned set), checked
    before any training so that an impossible attack fails at once."""
    attack = cfg.attack
    try:
        if attack is None:
            return [], None
        if attack.name == "badencoder":
            return resolve_targets(attack.targets, data.image_size, data.channels, cfg.seed), None
        if attack.name == "clip_targeted":
            test = attack_test_split(cfg, data)
            trials = draw_trials(attack, test, seed=cfg.seed)
            return [], poison_targeted(data, test, trials, attack.pairs, seed=cfg.seed)
        if attack.name == "clip_backdoor":
            test = attack_test_split(cfg, data)
            poisoned = poison_backdoor(data, attack, seed=cfg.seed, measured_on=test)
            trigger = PatchTrigger(attack.trigger, data.channels, data.image_size)
            target = poisoned.target_class
            dataset = attack.dataset or cfg.data.dataset
            return [BackdoorTarget(dataset, target, test.classes[target], trigger)], poisoned
        poisoned = poison(data, attack, seed=cfg.seed)
        trigger = evaluation_trigger(attack, data.channels, data.image_size)
        target = BackdoorTarget(
            cfg.data.dataset, poisoned.target_class, data.classes[poisoned.target_class], trigger
        )
        return [target], poisoned
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None


def poison_record(poisoned: PoisonedSet | PoisonedPairs, positions: bool = True) -> dict[str, Any]:
    """What the poisoning changed; with ``positions`` (for ``poison.json``) the poisoned
    indices into the pre-training set (after ``data.subset``; appended pairs come after the
    original ones), each patch's top-left (row, col), and the targeted trials."""
    record: dict[str, Any] = {"count": int(poisoned.indices.numel()), **poisoned.rates}
    classes = getattr(poisoned, "classes", poisoned.data.classes)
    if poisoned.target_class is not None:
        record["target_class"] = poisoned.target_class
        record["target_name"] = classes[poisoned.target_class]
    trials = getattr(poisoned, "trials", [])
    if trials:
        record["trials"] = len(trials)
    if positions:
        record["indices"] = poisoned.indices.tolist()
        if poisoned.corners is not None:
            record["corners"] = poisoned.corners.tolist()
        if trials:
            record["targeted"] = [
                {
                    "test_index": t.index,
                    "true_class": classes[t.true_class],
                    "target_class": classes[t.target_class],
                }
                for t in trials
            ]
    return record


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
    targets, poisoned = resolve_attack(cfg, data)
    stages: dict[str, Any] = {}
    artifacts: dict[str, str] = {}
    encoders: dict[str, nn.Module] = {}
    clips: dict[str, Any] = {}  # CLIP pre-training: role -> (model, tokenizer)

    def pretrained(role: str, images: ImageSet, about: dict[str, Any] | None = None):
        if not cfg.pretrain.image_text:
            return pretrain_stage(cfg, images, cache, device, about)
        clips[role], record, cached = clip_stage(cfg, images, cache, device, about)
        return clips[role][0].backbone, record, cached

    if getattr(cfg.attack, "encoder", None) is not None:  # attack a given encoder
        encoders[CLEAN] = given_encoder(cfg, data.channels, device)
        stages["pretrain"] = {"given": cfg.attack.encoder}
    else:
        with timed(timings, "pretrain"):
            encoders[CLEAN], record, cached = pretrained(CLEAN, data)
        stages["pretrain"] = {**record, "cached": cached}
        artifacts["stage_cache"] = str(cache.path("pretrain", record["key"]))
    if poisoned is not None:  # data poisoning: the same pre-training on the poisoned set
        about = {"poison": poison_record(poisoned, positions=False)}
        with timed(timings, "pretrain_poisoned"):
            encoders[ATTACKED], record, cached = pretrained(ATTACKED, poisoned.data, about)
        stages["pretrain_poisoned"] = {**record, "cached": cached}
        artifacts["poisoned_stage_cache"] = str(cache.path("pretrain", record["key"]))
    elif cfg.attack is not None:  # BadEncoder: backdoor the clean encoder
        with timed(timings, "attack"):
            encoders[ATTACKED], record, cached = attack_stage(
                cfg, data, encoders[CLEAN], targets, cache, device
            )
        stages["attack"] = {**record, "cached": cached}
        artifacts["attack_stage_cache"] = str(cache.path("attack", record["key"]))
    for defense in cfg.defenses:
        runs = {defense.name: encoders[ATTACKED]}
        if defense.control:  # the same defense on the clean encoder
            runs[f"{defense.name}{ON_CLEAN}"] = encoders[CLEAN]
        for name, suspect in runs.items():
            with timed(timings, f"defense:{name}"):
                encoders[name], record, cached = defense_stage(
                    cfg, defense, suspect, data, cache, device
                )
            stages[f"defense:{name}"] = {**record, "cached": cached}
    detected: dict[str, float | int] = {}
    for detector in cfg.detectors:
        for role in (CLEAN, ATTACKED):
            if role not in encoders:
                continue
            with timed(timings, f"detect:{detector.name}"):
                record, cached = detect_stage(cfg, detector, encoders[role], data, cache)
            stages[f"detect:{detector.name}:{role}"] = {**record, "cached": cached}
            for k, v in detector.metrics(record).items():
                detected[f"{detector.name}/{role}_{k}"] = v
            detected[f"{detector.name}/{role}_flagged"] = int(record["flagged"])

    if dist.is_distributed():  # evaluation runs on rank 0 alone
        main = dist.rank() == 0
        torch.distributed.destroy_process_group()
        if not main:
            return None
    features = FeatureCache(cache.root / "features")
    size, channels = data.image_size, data.channels
    with timed(timings, "eval"):
        if cfg.attack is not None:
            evaluation = evaluate_backdoor(
                encoders,
                targets,
                cfg.eval,
                size=size,
                channels=channels,
                cache=features,
                seed=cfg.seed,
                count_fp=isinstance(poisoned, PoisonedSet),
            )
            metrics = evaluation.metrics
            targeted = getattr(poisoned, "trials", None)
            if set(clips) == {CLEAN, ATTACKED}:
                metrics |= evaluate_zero_shot(
                    clips, targets, cfg.eval, size=size, channels=channels, seed=cfg.seed
                )
            if targeted:
                found, per_trial = evaluate_targeted(
                    clips,
                    {r: encoders[r] for r in (CLEAN, ATTACKED)},
                    targeted,
                    attack_test_split(cfg, data),
                    cfg.attack.dataset or cfg.data.dataset,
                    cfg.eval,
                    cache=features,
                    seed=cfg.seed,
                )
                metrics |= found
        else:
            torch.manual_seed(cfg.seed)
            random_init = build_encoder(cfg.pretrain.backbone, channels).to(device)
            metrics = evaluate_encoder(
                encoders[CLEAN],
                cfg.eval,
                size=size,
                channels=channels,
                cache=features,
                random_init=random_init,
                seed=cfg.seed,
            )
            if clips:
                metrics |= evaluate_zero_shot(
                    clips, [], cfg.eval, size=size, channels=channels, seed=cfg.seed
                )
    metrics |= detected
    out.mkdir(parents=True, exist_ok=True)
    if cfg.attack is not None:
        artifacts |= write_backdoor_artifacts(
            cfg, out, targets, poisoned, evaluation, size, channels
        )
        artifacts |= write_summary(cfg, out, metrics, stages)
        if targeted:
            atomic_write_json(out / "targeted.json", per_trial)
            artifacts["targeted"] = str(out / "targeted.json")
    input_card = {"size": size, "channels": channels}
    config = cfg.model_dump(mode="json")
    if clips:  # the attacked CLIP model, or the only one
        model, tokenizer = clips.get(ATTACKED, clips[CLEAN])
        artifacts["clip"] = str(
            save_clip(model, tokenizer, cfg.pretrain.text, out / "clip", config=config)
        )
    for role, encoder in encoders.items():
        if role == CLEAN and cfg.attack is not None:
            continue  # the clean encoder stays in the stage cache
        stem = "encoder" if role in (CLEAN, ATTACKED) else f"encoder-{role}"
        artifacts[stem] = str(save_encoder(encoder, out / stem, input=input_card, config=config))
    timings["total"] = round(time.perf_counter() - t0, 3)
    write_results(out, metrics, config, timings, artifacts, stages)
    return {
        "metrics": metrics,
        "config": config,
        "timings": timings,
        "artifacts": artifacts,
        "stages": stages,
    }


def write_backdoor_artifacts(
    cfg: ExperimentConfig,
    out: Path,
    targets: list[BackdoorTarget],
    poisoned: PoisonedSet | None,
    evaluation: BackdoorEvaluation,
    size: int,
    channels: int,
) -> dict[str, str]:
    """Trigger examples, the poisoned indices, and the confusion matrices (JSON + PNG)."""
    artifacts: dict[str, str] = {}
    for t in targets:
        _, test = load_downstream(
            t.dataset, size, channels, 1, 8, cfg.seed, cfg.eval.roots.get(t.dataset)
        )
        path = out / re.sub(r"[^\w.-]+", "_", f"trigger-{t.dataset}-{t.class_name}.png")
        artifacts[f"trigger:{t.dataset}/{t.class_name}"] = str(
            t.trigger.save_examples(test.images, path, seed=cfg.seed)
        )
    if poisoned is not None:
        atomic_write_json(out / "poison.json", poison_record(poisoned))
        artifacts["poison"] = str(out / "poison.json")
    atomic_write_json(out / "confusion.json", evaluation.confusion)
    artifacts["confusion"] = str(out / "confusion.json")
    for name, conf in evaluation.confusion.items():
        for cls, per_encoder in conf["triggered"].items():
            path = out / re.sub(r"[^\w.-]+", "_", f"confusion-{name}-{cls}.png")
            title = f"{name}: triggered test images, target {cls!r}"
            artifacts[f"confusion:{name}/{cls}"] = str(
                plot_confusions(per_encoder, conf["classes"], path, title)
            )
    return artifacts


def write_summary(
    cfg: ExperimentConfig, out: Path, metrics: dict[str, Any], stages: dict[str, Any]
) -> dict[str, str]:
    """``summary.md`` (the per-encoder table, each defense's cost, the detectors' verdicts),
    ``defenses.png`` (accuracy and ASR of every encoder, per dataset) when there are
    defenses, and each detector's inverted trigger as ``<detector>-<encoder>.png``."""
    artifacts: dict[str, str] = {}
    parts = [f"# {cfg.name}", "", "```", format_backdoor_table(metrics, stages) or "", "```"]
    for extra in (format_zero_shot, format_detections):
        if (text := extra(metrics)) is not None:
            parts += ["", "```", text, "```"]
    atomic_write_text(out / "summary.md", "\n".join(parts) + "\n")
    artifacts["summary"] = str(out / "summary.md")
    if cfg.defenses:
        panels: dict[str, dict[str, dict[str, float]]] = {}
        for dataset, encoder, v in backdoor_rows(metrics):
            bars = {"accuracy": v["acc"]} | ({"ASR": v["asr"]} if v["asr"] is not None else {})
            panels.setdefault(dataset, {})[encoder] = bars
        title = f"{cfg.name}: accuracy (CA/BA) and ASR per encoder"
        artifacts["defenses_plot"] = str(bar_plot(panels, "share", out / "defenses.png", title))
    for name, record in stages.items():
        if name.startswith("detect:") and record.get("trigger_png"):
            _, detector, role = name.split(":")
            path = out / f"{detector}-{role}.png"
            shutil.copyfile(record["trigger_png"], path)
            artifacts[f"trigger_inverted:{detector}/{role}"] = str(path)
    return artifacts
