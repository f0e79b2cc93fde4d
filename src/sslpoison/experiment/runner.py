"""Runs one experiment, top to bottom as docs/design.md's pipeline: data → [poison pre-training
data] → pre-train → [attack the encoder] → [defend: filter the pre-training data and pre-train
again on what is kept; or defend the encoder] → [detect] → downstream data → [poison
downstream data; measured against the downstream-data defenses] → evaluate →
``results.json`` (plus the artifacts: encoders, trigger examples, poisoned indices, confusion
matrices, summary). Which defense runs where follows its hook point
(:class:`~sslpoison.hooks.Hook`), never its name.

Process-level set-up (CPU threads, the ``torchrun`` process group) is the launcher's
(:mod:`sslpoison.cli`): it hands :func:`run_experiment` the device and ``training_done``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from sslpoison.attacks import AttackConfig, EncoderAttack, Hook, Measured, strikes
from sslpoison.data.imageset import ImageSet
from sslpoison.data.pairs import expand_shards
from sslpoison.data.registry import DatasetNotFound, locate_dataset
from sslpoison.data.shards import WEBDATASET, PairStream
from sslpoison.defenses import EncoderDefense, PretrainingDataDefense
from sslpoison.defenses.base import reinitialise
from sslpoison.detectors import DetectorConfig
from sslpoison.errors import collecting_warnings
from sslpoison.eval.downstream import Downstream
from sslpoison.eval.evaluate import Outcome, evaluate
from sslpoison.eval.features import FeatureCache
from sslpoison.eval.rows import ATTACKED, CLEAN, ON_CLEAN, Evaluation, Row
from sslpoison.experiment.cache import StageCache
from sslpoison.experiment.config import GROUPS, ConfigError, ExperimentConfig, StageGroup
from sslpoison.experiment.outputs import (
    Detection,
    save_models,
    write_attack_files,
    write_backdoor_artifacts,
    write_exports,
    write_summary,
)
from sslpoison.experiment.preflight import preflight
from sslpoison.experiment.provenance import provenance
from sslpoison.experiment.results import (
    Results,
    defense_stage_name,
    detect_stage_name,
    write_results,
)
from sslpoison.experiment.stages import (
    StageResult,
    attack_stage,
    defense_stage,
    detect_stage,
    filter_stage,
    pretrain_stage,
    pretraining_data,
)
from sslpoison.models.backbone import BackboneConfig, build_encoder
from sslpoison.models.hf import PairedCLIP
from sslpoison.models.sources import LoadedEncoder, load_source
from sslpoison.models.text import Tokenizer
from sslpoison.poisoning import BackdoorTarget, Filtered, PoisonedSet
from sslpoison.results.report import defense_panels, format_summary, summary_tables
from sslpoison.results.store import store_finished_run
from sslpoison.ssl.clip import CLIP
from sslpoison.ssl.pretrain import PretrainConfig
from sslpoison.train import dist
from sslpoison.train.tracker import tracking
from sslpoison.utils import resolve_device, seeded

log = logging.getLogger(__name__)


def check_datasets(cfg: ExperimentConfig) -> None:
    """Fail early, naming the key, when a dataset the config uses is not present."""
    wanted = [("data.dataset", cfg.data.dataset, cfg.data.root)]
    if cfg.data.dataset == WEBDATASET:  # pairs streamed from shards, not a registered dataset
        try:
            expand_shards(cfg.data.shards)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"data.shards: {e}") from None
        wanted = []
    wanted += [
        (f"eval.datasets.{i}", name, cfg.eval.roots.get(name))
        for i, name in enumerate(cfg.eval.datasets)
    ]
    for key, name, root in wanted:
        try:
            locate_dataset(name, root, only_root=True)
        except (DatasetNotFound, ValueError) as e:
            raise ConfigError(f"{key}: {e}") from None


@contextmanager
def config_errors() -> Iterator[None]:
    """A ``ValueError`` or missing file (e.g. an impossible attack) as a :class:`ConfigError`."""
    try:
        yield
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None


def prepare_attack(
    attack: AttackConfig | None, data: ImageSet, downstream: Downstream, seed: int
) -> tuple[PoisonedSet | None, list[BackdoorTarget]]:
    """The poisoned pre-training set (pre-training data attacks) and the attack's backdoor
    targets, made before any training so that an impossible attack fails at once."""
    with config_errors():
        poisoned = None
        if strikes(attack, Hook.PRETRAINING_DATA):
            poisoned = attack.poison_pretraining(data, downstream, seed)
        return poisoned, attack.backdoor_targets(data, downstream, seed) if attack else []


def random_encoder(
    backbone: BackboneConfig,
    channels: int,
    seed: int,
    device: torch.device,
    size: int | None = None,
) -> nn.Module:
    """The untrained baseline: ``backbone`` drawn from ``seed``."""
    with seeded(seed):
        return build_encoder(backbone, channels, size).to(device)


def given_encoder(cfg: ExperimentConfig, device: torch.device) -> LoadedEncoder | None:
    """The clean encoder of ``cfg.encoder`` (None without one), loaded before anything is
    written; says so when it overrides a ``pretrain:`` section the config sets."""
    if cfg.encoder is None:
        return None
    if "pretrain" in cfg.model_fields_set:
        log.info("encoder: given, so it takes precedence over the pretrain: section (not run)")
    try:
        return load_source(cfg.encoder, device)
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise ConfigError(f"encoder: {e}") from None


def fitted_shape(cfg: ExperimentConfig, given: LoadedEncoder | None) -> dict[str, int | None]:
    """The side and channels the pre-training (and so the downstream) images are fitted to:
    the given encoder's input (a ``data.size`` or ``data.channels`` set otherwise is an
    error naming it), else ``data.size`` and ``data.channels``."""
    if given is None:
        return {"size": cfg.data.size, "channels": cfg.data.channels}
    wanted = {"size": given.input.size, "channels": given.input.channels}
    for key, value in wanted.items():
        mine = getattr(cfg.data, key)
        if value is not None and mine is not None and mine != value:
            raise ConfigError(
                f"data.{key}: {mine}, but the encoder takes {value} (the images are fitted to "
                "the encoder's input: leave data.{key} out)".replace("{key}", key)
            )
    return {"size": wanted["size"] or cfg.data.size, "channels": wanted["channels"]}


def zero_shot_models(
    given: LoadedEncoder | None, encoders: dict[str, nn.Module]
) -> dict[str, tuple[PairedCLIP, Any]]:
    """With a given CLIP model's text tower: the clean and the attacked image encoder, each
    paired with it, for the zero-shot evaluation (else none)."""
    if given is None or given.text is None:
        return {}
    return {
        role: (PairedCLIP(encoders[role], given.text), given.text.tokenizer)
        for role in (CLEAN, ATTACKED)
        if role in encoders
    }


@dataclass
class Run:
    """One run as it goes: the stage cache, the device, the seed of each stage group
    (:class:`~sslpoison.experiment.config.StageSeeds`), and what each stage made (``encoders``
    and ``clips`` by role) and did (``stages``, ``timings``, ``artifacts``)."""

    cache: StageCache
    device: torch.device
    seeds: dict[StageGroup, int]
    encoders: dict[str, nn.Module] = field(default_factory=dict)
    clips: dict[str, tuple[CLIP, Tokenizer]] = field(default_factory=dict)
    stages: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    detections: list[Detection] = field(default_factory=list)
    filtered: dict[str, Filtered] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    warnings: list[str] = field(default_factory=list)  # what `warn` records (this run's)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the block's wall time to ``timings[name]``."""
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 3)

    def stage(
        self, name: str, call: Callable[..., StageResult], *args: Any, timing: str | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """``call(*args)``, a stage function, timed as ``timing`` (default ``name``), its
        record kept as ``stages[name]``; returns (its output, its record)."""
        with self.timed(timing or name):
            out, record, cached = call(*args)
        self.stages[name] = {**record, "cached": cached}
        return out, record

    @property
    def seed(self) -> int:
        """The seed of what the attacker, defender and detectors do (the ``attack`` group)."""
        return self.seeds["attack"]

    def pretrain(
        self, role: str, name: str, cfg: PretrainConfig, data: ImageSet, about: Any = None
    ) -> str:
        """Pre-train the ``role`` encoder (and CLIP model) on ``data`` as stage ``name``; the
        clean one with the ``pretrain`` group's seed, the one on poisoned data with the
        ``attack`` group's. Returns the stage's cache folder."""
        seed = self.seeds["pretrain" if role == CLEAN else "attack"]
        args = (cfg, data, seed, self.cache, self.device, about)
        out, record = self.stage(name, pretrain_stage, *args)
        if cfg.image_text:
            self.clips[role], out = out, out[0].backbone
        self.encoders[role] = out
        return str(self.cache.path("pretrain", record["key"]))

    def attack(
        self, attack: EncoderAttack, data: ImageSet, targets: list[BackdoorTarget]
    ) -> tuple[str, list[BackdoorTarget]]:
        """The ``attacked`` encoder: ``attack`` on the clean one with its shadow images of the
        pre-training set ``data``; returns its cache folder and the prepared targets."""
        clean = self.encoders[CLEAN]
        with self.timed("attack"):
            shadow = attack.shadow_subset(data, seed=self.seed)
            targets = attack.prepare_targets(clean, shadow, targets, self.seed)
        args = (attack, clean, shadow, targets, self.seed, self.cache, self.device)
        self.encoders[ATTACKED], record = self.stage("attack", attack_stage, *args)
        return str(self.cache.path("attack", record["key"])), targets

    def filter(
        self,
        defense: PretrainingDataDefense,
        data: ImageSet,
        poisoned: PoisonedSet | None,
        recipe: PretrainConfig,
    ) -> None:
        """``defense``'s filter of the pre-training set as the suspect was pre-trained on it
        (the poisoned set and the attacked encoder, or without an attack the clean ones),
        then — unless the defense trained its model itself — the same pre-training on what it
        kept, as stage ``pretrain:<name>``; the model becomes encoder (and CLIP) ``<name>``."""
        role, name = (ATTACKED if poisoned is not None else CLEAN), defense.name
        judged = poisoned.data if poisoned is not None else data
        args = (defense, self.encoders[role], judged, recipe, self.seed, self.cache, self.device)
        stage = defense_stage_name(name)
        filtered, record = self.stage(stage, filter_stage, *args, self.clips.get(role))
        filtered.record = dict(record)
        model = filtered.model
        if model is None:
            about = {"filtered_by": name, "kept": int(filtered.kept.sum()), "of": len(judged)}
            self.pretrain(name, f"pretrain:{name}", recipe, judged.where(filtered.kept), about)
            seconds = self.stages[f"pretrain:{name}"].get("seconds")
            if isinstance(seconds, (int, float)):
                filtered.record["retrain_s"] = self.stages[stage]["retrain_s"] = seconds
        elif isinstance(model, tuple):  # a CLIP model and its tokenizer
            self.clips[name], self.encoders[name] = model, model[0].backbone
        else:
            self.encoders[name] = model
        filtered.record["filter_s"] = record.get("wall_s")
        filtered.model = None  # the model lives in encoders (and clips) from here on
        self.filtered[name] = filtered

    def defend(self, defense: EncoderDefense, data: ImageSet) -> None:
        """``defense`` of the attacked encoder, as encoder ``<name>`` (and, as a control, of
        the clean one, as ``<name>_on_clean``)."""
        suspects = {defense.name: self.encoders[ATTACKED]}
        if defense.control:
            suspects[f"{defense.name}{ON_CLEAN}"] = self.encoders[CLEAN]
        for name, suspect in suspects.items():
            args = (defense, suspect, data, self.seed, self.cache, self.device)
            self.encoders[name], _ = self.stage(defense_stage_name(name), defense_stage, *args)

    def detect(self, detector: DetectorConfig, data: ImageSet) -> None:
        """``detector``'s verdict on the clean and (if any) the attacked encoder."""
        for role in (r for r in (CLEAN, ATTACKED) if r in self.encoders):
            args = (detector, self.encoders[role], data, self.seed, self.cache)
            timing = f"detect:{detector.name}"
            stage = detect_stage_name(detector.name, role)
            _, record = self.stage(stage, detect_stage, *args, timing=timing)
            self.detections.append((detector, role, record))

    def rows(self, evaluation: Evaluation, measured: Measured) -> list[Row]:
        """Every measured row: the evaluation's, the attack's and defenses', the detectors'."""
        detected = [row for det, role, record in self.detections for row in det.rows(role, record)]
        return evaluation.rows + measured.rows + detected


def run_experiment(
    cfg: ExperimentConfig,
    out_dir: str | Path,
    *,
    device: torch.device | None = None,
    training_done: Callable[[], bool] | None = None,
) -> Results | None:
    """Run ``cfg`` on ``device`` (default: ``cfg.device``); write ``out_dir/results.json`` and
    the artifacts, add the run to the results store (``cfg.results_db``) and return them.
    ``training_done``, called once every training stage is done, is the launcher's: under
    ``torchrun`` it ends the process group and says whether this process evaluates (rank 0);
    the others return None there. With ``cfg.tracker``, the engine's losses and the final
    metrics are logged to it."""
    with tracking(cfg.tracker, Path(out_dir)) as tracker, collecting_warnings() as warnings:
        results = _run_experiment(cfg, Path(out_dir), device, training_done, warnings)
        if tracker is not None and results is not None:
            tracker.log_results(results.metrics, results.timings, results.config, results.stages)
    if results is not None:
        store_finished_run(out_dir, cfg.results_db)
    return results


@dataclass
class Prepared:
    """What a run knows before any training: the pre-training data, the downstream data
    (loading lazily), the poisoned pre-training set and the backdoor targets of the attack,
    and the clean encoder ``encoder:`` brings (instead of pre-training one), if any."""

    data: ImageSet | PairStream
    downstream: Downstream
    poisoned: PoisonedSet | None
    targets: list[BackdoorTarget]
    given: LoadedEncoder | None


def prepare_run(
    cfg: ExperimentConfig,
    device: torch.device,
    *,
    data: ImageSet | PairStream | None = None,
    downstream: Downstream | None = None,
    timed: Callable[[str], Any] | None = None,
) -> Prepared:
    """Everything before the first training stage (the run, and a sweep's plan, start
    here): the datasets checked, the given encoder loaded (timed by ``timed("load_encoder")``),
    the pre-training data loaded and fitted to it (``data``: already loaded; else timed by
    ``timed("load_data")``), the attack prepared — each with its stage group's seed."""
    timer = timed if timed is not None else (lambda _name: nullcontext())
    check_datasets(cfg)
    with timer("load_encoder"):
        given = given_encoder(cfg, device)
    if data is None:
        shape = fitted_shape(cfg, given)
        with timer("load_data"):
            image_text, cache = cfg.pretrain.image_text and given is None, cfg.resolved_cache_dir()
            data = pretraining_data(cfg.data, image_text, cfg.seed_of("pretrain"), cache, **shape)
        log.info("pre-training data: %s", data)
    if downstream is None:  # loads lazily
        downstream = Downstream(cfg.eval, data.image_size, data.channels, cfg.seed_of("eval"))
    poisoned, targets = prepare_attack(cfg.attack, data, downstream, cfg.seed_of("attack"))
    return Prepared(data, downstream, poisoned, targets, given)


def _run_experiment(
    cfg: ExperimentConfig,
    out_dir: Path,
    device: torch.device | None,
    training_done: Callable[[], bool] | None,
    warnings: list[str],
) -> Results | None:
    seeds = {group: cfg.seed_of(group) for group in GROUPS}
    cache, device = StageCache(cfg.resolved_cache_dir()), device or resolve_device(cfg.device)
    run = Run(cache, device, seeds, warnings=warnings)
    attack = cfg.attack
    front = prepare_run(cfg, run.device, timed=run.timed)
    data, downstream, poisoned, targets, given = (
        front.data, front.downstream, front.poisoned, front.targets, front.given,
    )  # fmt: skip
    if dist.rank() == 0:  # every input readable, every output writable: before any training
        params = None if given is None else sum(p.numel() for p in given.encoder.parameters())
        preflight(cfg, Path(out_dir), data, downstream, params)
    if given is not None:  # the clean encoder is given: no pre-training
        run.encoders[CLEAN], run.stages["pretrain"] = given.encoder, {"given": given.record}
    else:
        run.artifacts["stage_cache"] = run.pretrain(CLEAN, "pretrain", cfg.pretrain, data)
    if poisoned is not None:  # the same pre-training on the poisoned set
        about = {"poison": poisoned.record(positions=False)}
        folder = run.pretrain(ATTACKED, "pretrain_poisoned", cfg.pretrain, poisoned.data, about)
        run.artifacts["poisoned_stage_cache"] = folder
    if strikes(attack, Hook.ENCODER):
        run.artifacts["attack_stage_cache"], targets = run.attack(attack, data, targets)
    for defense in cfg.defenses:
        if defense.hook is Hook.PRETRAINING_DATA:
            run.filter(defense, data, poisoned, cfg.pretrain)
        elif defense.hook is Hook.ENCODER:
            run.defend(defense, data)
    for detector in cfg.detectors:
        run.detect(detector, data)
    if training_done is not None and not training_done():
        return None  # the evaluation runs in one process
    poisoned_downstream: dict[str, PoisonedSet] = {}
    if strikes(attack, Hook.DOWNSTREAM_DATA):
        with run.timed("poison_downstream"):
            poisoned_downstream = attack.poison_train_sets(
                run.encoders[CLEAN], downstream, seeds["attack"], pretraining=data
            )
    features = FeatureCache(run.cache.root / "features")
    clips = {**run.clips, **zero_shot_models(given, run.encoders)}
    sanitizers = [d for d in cfg.defenses if d.hook is Hook.DOWNSTREAM_DATA]
    outcome = Outcome(
        data, poisoned, downstream, poisoned_downstream, run.encoders, clips, cfg.eval,
        features, seeds["eval"], run.filtered, sanitizers,
    )  # fmt: skip
    with run.timed("eval"):
        if given is not None:  # the same architecture, untrained
            baseline = partial(reinitialise, given.encoder, seeds["pretrain"])
        else:
            baseline = partial(
                random_encoder, cfg.pretrain.backbone, data.channels, seeds["pretrain"],
                run.device, data.image_size,
            )  # fmt: skip
        count_fp = attack is not None and attack.reports_fp
        evaluation = evaluate(outcome, targets, random_init=baseline, count_fp=count_fp)
        measured = attack.measure(outcome) if attack else Measured()
        for defense in cfg.defenses:
            measured += defense.measure(outcome)
    return write_run(cfg, Path(out_dir), run, outcome, targets, evaluation, measured)


def write_run(
    cfg: ExperimentConfig,
    out: Path,
    run: Run,
    outcome: Outcome,
    targets: list[BackdoorTarget],
    evaluation: Evaluation,
    measured: Measured,
) -> Results:
    """Write the run's artifacts (with an attack: trigger examples, poisoned indices,
    confusion matrices, ``summary.md``; the attack's and the defenses' own files; the models)
    and ``results.json``; return the results."""
    rows, probe = run.rows(evaluation, measured), cfg.eval.probes[0]
    out.mkdir(parents=True, exist_ok=True)
    tables = summary_tables(rows, probe, run.stages) + (
        ["\n".join(evaluation.notes)] if evaluation.notes else []
    )
    if cfg.attack is not None:
        run.artifacts |= write_backdoor_artifacts(
            out, targets, outcome.poisoned, evaluation, outcome.downstream, run.seeds["eval"]
        )
    if cfg.attack is not None or cfg.defenses:
        panels = (defense_panels(rows, probe) or None) if cfg.defenses else None
        summary = format_summary(cfg.name, tables)
        run.artifacts |= write_summary(out, summary, panels, cfg.name, run.detections)
    run.artifacts |= write_attack_files(out, measured)
    config = cfg.model_dump(mode="json")
    shape = {"size": outcome.data.image_size, "channels": outcome.data.channels}
    keep_clean = ATTACKED not in run.encoders  # else it stays in the stage cache
    card = {"input": shape, "config": config}
    run.artifacts |= save_models(out, run.encoders, run.clips, cfg.pretrain.text, card, keep_clean)
    defended = [d.name for d in cfg.defenses]
    run.artifacts |= write_exports(out, cfg.export, run.encoders, defended)
    run.timings["total"] = round(time.perf_counter() - run.started, 3)
    about = provenance(run.device, run.stages, cfg.seed, run.seeds)
    results = Results(
        rows, config, run.timings, run.artifacts, run.stages, tables, about, run.warnings
    )
    write_results(out, results)
    return results
