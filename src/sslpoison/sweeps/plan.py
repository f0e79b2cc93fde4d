"""A sweep's plan: the stages its cells need, which of them several cells share, which are
cached already, and the order that computes every shared stage once before the cells fan out.

Before any training a cell's pre-training stages have their cache keys: the runner's front
(:func:`~sslpoison.experiment.runner.prepare_run`: the data loaded, the attack's poisoning
made) gives what :func:`~sslpoison.experiment.stages.pretrain_key` hashes. The stages after
pre-training (an encoder attack, the defenses, the detectors) are keyed by the weights they
start from, which only training gives; the plan knows them by an *identity*: their config
slice, their seed, the pre-training data and the identity of the stage they start from. Two
cells with equal identities compute the same stage (training is deterministic, the cache is
one), so the identity is all the plan needs to see that they share it.

Phases (:meth:`SweepPlan.phases`): first one *leader* cell for each shared stage that no
earlier leader computes, in the order stages run in a cell (the clean pre-training, then what
starts from it, ...); the rest of the cells after them, all at once. A leader is a whole cell:
it computes its shared stages (and its own), and every later cell finds them in the cache. A
cell that still asks for a stage another process is computing waits on the stage's lock
(:mod:`sslpoison.experiment.cache`), so the phases only save waiting; they never decide a
result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from sslpoison.attacks import Hook, strikes
from sslpoison.eval.downstream import Downstream
from sslpoison.experiment.cache import StageCache, stage_key
from sslpoison.experiment.config import ConfigError, ExperimentConfig
from sslpoison.experiment.runner import prepare_run
from sslpoison.experiment.stages import data_fingerprint, key_slice, pretrain_key, pretraining_data
from sslpoison.utils import module_hash

log = logging.getLogger(__name__)

__all__ = ["PlannedStage", "SweepPlan", "cell_stages", "plan_sweep"]


@dataclass(frozen=True)
class PlannedStage:
    """One stage a cell needs.

    Attributes:
        kind: ``pretrain``, ``attack``, ``defense`` or ``detect`` (its cache folder).
        key: its cache key when ``keyed`` (pre-training), else its identity in the plan.
        depth: when it runs in a cell: 0 the clean pre-training, 1 what follows it (the
            poisoned pre-training, the encoder attack), 2 defenses and detectors.
        keyed: whether ``key`` is the stage's cache key (and whether it is cached is known).
    """

    kind: str
    key: str
    depth: int
    keyed: bool


def _identity(kind: str, **parts: Any) -> str:
    return stage_key(f"plan:{kind}", **parts)


def cell_stages(
    cfg: ExperimentConfig, device: torch.device, memo: dict[Any, Any] | None = None
) -> list[PlannedStage]:
    """The stages a run of ``cfg`` on ``device`` computes (or takes from the cache), in the
    order it runs them. ``memo`` keeps the loaded data between cells that share it."""
    memo = {} if memo is None else memo
    seed, attack_seed, eval_seed = (cfg.seed_of(g) for g in ("pretrain", "attack", "eval"))
    if cfg.encoder is not None:  # the data are fitted to the encoder: loaded with it
        front = prepare_run(cfg, device)
        data, data_id = front.data, data_fingerprint(front.data)
    else:
        which = ("data", cfg.data.model_dump_json(), cfg.pretrain.image_text, seed)
        if which not in memo:
            index = cfg.resolved_cache_dir()
            data = pretraining_data(cfg.data, cfg.pretrain.image_text, seed, index)
            memo[which] = (data, data_fingerprint(data))
        data, data_id = memo[which]
        down = ("downstream", cfg.eval.model_dump_json(), data.image_size, data.channels, eval_seed)
        if down not in memo:
            memo[down] = Downstream(cfg.eval, data.image_size, data.channels, eval_seed)
        front = prepare_run(cfg, device, data=data, downstream=memo[down])
    stages = []
    if front.given is not None:
        clean = "given:" + module_hash(front.given.encoder)
    else:
        clean = pretrain_key(cfg.pretrain, data, seed, device)
        stages.append(PlannedStage("pretrain", clean, 0, True))
    seed = attack_seed  # what follows the clean pre-training has the attack group's seed
    attacked = None
    if front.poisoned is not None:
        attacked = pretrain_key(cfg.pretrain, front.poisoned.data, seed, device)
        stages.append(PlannedStage("pretrain", attacked, 1, True))
    if strikes(cfg.attack, Hook.ENCODER):
        slice_ = key_slice(cfg.attack, device)
        attacked = _identity("attack", attack=slice_, clean=clean, data=data_id, seed=seed)
        stages.append(PlannedStage("attack", attacked, 1, False))
    for defense in cfg.defenses:
        slice_ = key_slice(defense, device, exclude={"control": True})
        suspects = [attacked, clean] if defense.control else [attacked]
        for suspect in suspects:
            key = _identity("defense", defense=slice_, suspect=suspect, data=data_id, seed=seed)
            stages.append(PlannedStage("defense", key, 2, False))
    for detector in cfg.detectors:
        slice_ = key_slice(detector, device)
        for encoder in (clean, attacked) if attacked is not None else (clean,):
            key = _identity("detect", detector=slice_, encoder=encoder, data=data_id, seed=seed)
            stages.append(PlannedStage("detect", key, 2, False))
    return stages


@dataclass
class SweepPlan:
    """The stages of a sweep's cells still to run (by cell name, in grid order) and the keys
    of those already in the cache."""

    stages: dict[str, list[PlannedStage]]
    cached: set[str] = field(default_factory=set)

    def shared(self) -> dict[PlannedStage, list[str]]:
        """Every stage not cached that two or more cells need, with those cells."""
        users: dict[PlannedStage, list[str]] = {}
        for name, stages in self.stages.items():
            for stage in dict.fromkeys(stages):
                users.setdefault(stage, []).append(name)
        return {s: c for s, c in users.items() if len(c) > 1 and s.key not in self.cached}

    def phases(self) -> list[list[str]]:
        """Cell names in the order to run them (see the module doc): the leaders of each
        depth of shared stages, then everything else."""
        shared, covered, leaders = self.shared(), set(), set()
        phases = []
        for depth in sorted({s.depth for s in shared}):
            phase = []
            for name, stages in self.stages.items():
                new = [s for s in stages if s.depth == depth and s in shared and s not in covered]
                if new and name not in leaders:
                    phase.append(name)
                    leaders.add(name)
                    covered |= set(stages)
            if phase:
                phases.append(phase)
        rest = [name for name in self.stages if name not in leaders]
        return [*phases, rest] if rest else phases

    def describe(self, finished: int = 0) -> list[str]:
        """The plan in a few lines: cells, stages per kind (shared, cached), the phases."""
        total = len(self.stages) + finished
        lines = [
            f"sweep plan: {total} cells, {len(self.stages)} to run"
            + (f" ({finished} finished before)" if finished else "")
        ]
        if not self.stages:
            return lines
        shared = self.shared()
        distinct = list(dict.fromkeys(s for stages in self.stages.values() for s in stages))
        for kind in dict.fromkeys(s.kind for s in distinct):
            of_kind = [s for s in distinct if s.kind == kind]
            keyed = [s for s in of_kind if s.keyed]
            cached = sum(s.key in self.cached for s in keyed)
            ours = [s for s in of_kind if s in shared]
            part = f"  {kind}: {len(of_kind)} stage{'s' * (len(of_kind) != 1)}"
            if ours:
                most = max(len(shared[s]) for s in ours)
                part += f", {len(ours)} shared (by up to {most} cells)"
            if keyed:
                part += f", {cached} cached"
            lines.append(part)
        phases = self.phases()
        if len(phases) > 1:
            for i, phase in enumerate(phases[:-1]):
                lines.append(f"  first ({i + 1}): {', '.join(phase)} (computes shared stages)")
            lines.append(f"  then: the other {len(phases[-1])} cells")
        return lines


def plan_sweep(
    configs: dict[str, ExperimentConfig], device_of: Callable[[ExperimentConfig], torch.device]
) -> SweepPlan:
    """The plan of the cells ``configs`` (by name, grid order), each keyed for the device
    its cell will run on (``device_of``: the precision a stage trains at is in its key)."""
    memo: dict[Any, Any] = {}
    stages, cached = {}, set()
    for name, cfg in configs.items():
        try:
            stages[name] = cell_stages(cfg, device_of(cfg), memo)
        except ConfigError as e:  # an impossible attack, a missing dataset: before any run
            raise ConfigError(f"sweep cell {name}: {e}") from None
        cache = StageCache(cfg.resolved_cache_dir())
        cached |= {s.key for s in stages[name] if s.keyed and cache.done(s.kind, s.key)}
    return SweepPlan(stages, cached)
