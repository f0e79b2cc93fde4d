"""What every defense is: a frozen config that acts at one hook point of the pipeline, the
same three points attacks strike (:class:`~sslpoison.hooks.Hook`, docs/design.md), one base class
each:

* :class:`PretrainingDataDefense` — ``filter(data, suspect, seed) -> Filtered``: finds the
  poisons of the pre-training set with the suspect encoder (a kept mask and a score per
  item); the pipeline pre-trains again on what is kept, with the same recipe (PatchSearch,
  spectral signatures, activation clustering). A defense that is a training procedure
  (SafeCLIP) trains the model itself and hands it back in its :class:`Filtered`.
* :class:`EncoderDefense` — ``apply(encoder, clean, *, seed, checkpoint_dir) -> Defended``:
  turns the suspect encoder into another with a small set of clean images (distillation,
  MIMIC, fine-tuning, ...).
* :class:`DownstreamDataDefense` — ``sanitize(features, labels, reference) -> Sanitized``:
  what the victim of a downstream-data attack runs on its labelled training set before
  training its head (sphere, slab, k-NN label sanitization).

Every defense also carries, so that the pipeline never asks which defense it runs:

* :meth:`DefenseConfig.check` — its checks of the experiment around it (at config load time),
  which it sees as a :class:`~sslpoison.hooks.CheckContext`;
* :meth:`DefenseConfig.measure` — the metrics (and files) it adds to the evaluation's (a
  pre-training-data defense: its scores against the planted poisons);
* :attr:`DefenseConfig.title` and :attr:`DefenseConfig.metrics` — how reports name it and
  head the numbers it adds;
* :meth:`DefenseConfig.pretraining_counts` and :meth:`DefenseConfig.saved_encoders` — what
  the checks before training (:mod:`sslpoison.experiment.preflight`) need to know.

A defense is listed once, in :data:`sslpoison.defenses.DEFENSES`, under its ``name``.

Distillation defenses build their student with :func:`make_student`: a random initialisation
of the teacher's architecture (:func:`reinitialise`, inherits no backdoor), a copy of it, or
a fresh encoder of another architecture (``student_arch``: e.g. a ResNet distilled from a
ViT).
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn as nn
from pydantic import Field

from sslpoison.configbase import Config, CountOrShare
from sslpoison.data.imageset import ImageSet
from sslpoison.eval.evaluate import Outcome
from sslpoison.eval.metrics import (
    CLEAN_REMOVED,
    POISON_AUROC,
    POISON_PRECISION,
    POISON_RECALL,
    filter_scores,
)
from sslpoison.eval.rows import Metric, Row
from sslpoison.hooks import CheckContext, Hook, Measured
from sslpoison.models.backbone import BackboneConfig
from sslpoison.poisoning import Filtered, Sanitized
from sslpoison.train.engine import FitResult, TrainConfig
from sslpoison.train.optim import OptimConfig
from sslpoison.utils import module_device, seeded

if TYPE_CHECKING:
    from sslpoison.ssl.pretrain import PretrainConfig


@dataclass
class Defended:
    """What an encoder defense returns.

    Attributes:
        encoder: the defended encoder (N×C×H×W float in [0, 1] → N×D), in eval mode, on the
            suspect encoder's device.
        fit: the engine's result (per-epoch losses, throughput, resume point), or None for a
            defense that does not train.
        record: JSON-able facts for the stage record (loss terms per epoch, student init, ...).
    """

    encoder: nn.Module
    fit: FitResult | None
    record: dict[str, Any] = field(default_factory=dict)


class DefenseConfig(Config, abc.ABC):
    """Base of every entry of ``defenses:``; a subclass adds ``name: Literal[...]`` and
    derives from the base class of its hook point, which sets :attr:`hook`."""

    #: Where the defense acts (set by the hook point's base class).
    hook: ClassVar[Hook]
    #: How reports name the defense (its ``name`` when empty).
    title: ClassVar[str] = ""
    #: The metrics of the rows :meth:`measure` adds, in the order tables show them.
    metrics: ClassVar[tuple[Metric, ...]] = ()

    @property
    def label(self) -> str:
        """:attr:`title`, or the ``name``."""
        return self.title or self.name

    def check(self, context: CheckContext) -> None:
        """Raise ``ValueError`` naming the key when the experiment around it (``context``:
        the facts a check may judge) cannot run this defense (called when the config is
        loaded). None by default."""

    def measure(self, outcome: Outcome) -> Measured:
        """Metrics this defense adds to the evaluation's (none by default)."""
        return Measured()

    def pretraining_counts(self) -> dict[str, int | float]:
        """The counts (or shares) of pre-training images the defense takes, by key under
        ``defenses.N`` (checked against the set before training); none by default."""
        return {}

    def saved_encoders(self) -> int:
        """How many encoders the defense adds to the run (for the disk-space check)."""
        return 0


def _attack_name(context: CheckContext) -> str:
    return context.attack if context.attack is not None else "no attack"


class EncoderDefense(DefenseConfig, abc.ABC):
    """A defense that turns a suspect encoder into another with a few clean images.

    ``clean``: how many of the pre-training set's clean images the defender holds (a count, or
    a share in (0, 1]; MIMIC and Saha et al. use ≤ 5 %). ``train``: how the defense trains
    (each defense gives its paper's setting as the default). ``control``: also apply the
    defense, unchanged, to the *clean* encoder and report it as ``<name>_on_clean`` — what the
    defense alone does to accuracy, ASR and FP, the yardstick for its effect on the backdoor.
    ``seed``: the defense's own seed (clean subset, student init, batches); ``None`` takes the
    experiment's. Sweeping it measures the defense's spread on the same (cached) encoders.
    """

    hook: ClassVar[Hook] = Hook.ENCODER

    clean: CountOrShare = 0.05
    control: bool = False
    seed: int | None = None
    train: TrainConfig = Field(default_factory=TrainConfig)

    def check(self, context: CheckContext) -> None:
        if context.attack is None:
            raise ValueError(
                f"defenses: there is no attack section, so nothing for {self.name} to defend"
            )
        if context.attack_hook is Hook.DOWNSTREAM_DATA:
            raise ValueError(
                f"defenses: {self.name} defends an encoder, but {context.attack} poisons the "
                "downstream data: there is no attacked encoder to defend"
            )

    def pretraining_counts(self) -> dict[str, int | float]:
        return {"clean": self.clean}

    def saved_encoders(self) -> int:
        return 2 if self.control else 1

    def clean_subset(self, data: ImageSet, seed: int = 0) -> ImageSet:
        """The defender's ``clean`` images of ``data``: seeded, not stratified (no labels)."""
        return data.take(self.clean, seed=seed, stratified=False)

    @abc.abstractmethod
    def apply(
        self,
        encoder: nn.Module,
        clean: ImageSet,
        *,
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
    ) -> Defended:
        """Defend ``encoder`` with the ``clean`` images; resume from ``checkpoint_dir``.

        ``encoder`` is left as it was given (weights, mode and ``requires_grad``); it stays on
        its device and the defended encoder comes back on the same device.
        """


@dataclass
class FilterContext:
    """What the pipeline hands a pre-training-data defense besides the data and the suspect
    encoder, for a defense that trains its own model (a plain filter ignores it).

    Attributes:
        recipe: the experiment's pre-training (method, backbone, views, training).
        device: where to train.
        checkpoint_dir: where to keep checkpoints (an interrupted stage resumes from them).
        suspect_clip: for image–text pre-training, the suspect (CLIP model, tokenizer).
    """

    recipe: PretrainConfig
    device: torch.device
    checkpoint_dir: Path | None = None
    suspect_clip: Any = None


#: The ``probe`` of the rows that score a pre-training-data defense (dataset None, encoder
#: the defense's name); reports gather a filters table from them.
FILTER = "filter"
#: What a filter removed (a count), and the wall seconds of the filter and of the
#: pre-training again on what it kept (the original run's when a stage came from the cache).
REMOVED = Metric("removed", "removed", 0)
FILTER_S = Metric("filter_s", "filter s", 0)
RETRAIN_S = Metric("retrain_s", "again s", 0)


class PretrainingDataDefense(DefenseConfig, abc.ABC):
    """A defense on the pre-training data: it finds the poisons with the suspect encoder (the
    one pre-trained on the set as given), and the pipeline pre-trains again on what it keeps
    with the experiment's own recipe, as a cached stage.

    With a pre-training-data attack the kept set is scored against the planted poisons
    (:meth:`measure`); without an attack it runs on the clean set, to measure its cost: the
    clean data it removes and the accuracy after pre-training again. ``seed``: the defense's
    own seed (clusters, samples); ``None`` takes the experiment's.
    """

    hook: ClassVar[Hook] = Hook.PRETRAINING_DATA
    metrics: ClassVar[tuple[Metric, ...]] = (
        POISON_PRECISION, POISON_RECALL, POISON_AUROC, CLEAN_REMOVED, REMOVED, FILTER_S, RETRAIN_S
    )  # fmt: skip

    seed: int | None = None

    def check(self, context: CheckContext) -> None:
        hook = context.attack_hook
        if hook is not None and hook is not Hook.PRETRAINING_DATA:
            raise ValueError(
                f"defenses: {self.name} filters the pre-training data, but {context.attack} "
                f"attacks the {hook.value}, not the pre-training data"
            )

    def saved_encoders(self) -> int:
        return 1

    @abc.abstractmethod
    def filter(
        self,
        data: ImageSet,
        suspect: nn.Module,
        seed: int = 0,
        *,
        context: FilterContext | None = None,
    ) -> Filtered:
        """Which of the N items of the pre-training set ``data`` to keep, and a score per
        item (larger = more suspicious), judged with the ``suspect`` encoder (N×C×H×W float
        in [0, 1] → N×D; for image–text pre-training its image tower). ``suspect`` is left
        as it was given. A defense that trains its own model uses ``context`` and returns
        the model in :attr:`Filtered.model`."""

    def measure(self, outcome: Outcome) -> Measured:
        """``<name>/poison_precision``, ``poison_recall``, ``poison_auroc`` (with a
        pre-training-data attack), ``clean_removed`` (the share of clean items removed),
        ``removed`` (a count), ``filter_s`` and ``retrain_s`` (wall seconds of the filter and
        of the pre-training again; the original run's when a stage came from the cache)."""
        filtered = outcome.filtered.get(self.name)
        if filtered is None:
            return Measured()
        values: dict[str, float | int] = {}
        poisoned = outcome.poisoned
        if poisoned is not None and poisoned.indices.numel():
            values |= filter_scores(filtered.kept, filtered.scores, poisoned.indices)
        else:
            values[CLEAN_REMOVED.name] = filtered.removed / len(filtered.kept)
        values[REMOVED.name] = filtered.removed
        timings = (FILTER_S.name, RETRAIN_S.name)
        for what in timings:
            if isinstance(filtered.record.get(what), (int, float)):
                values[what] = float(filtered.record[what])
        rows = [
            Row(None, self.name, FILTER, metric, value, f"{self.name}/{metric}")
            for metric, value in values.items()
        ]
        return Measured(rows, {f"filtered:{self.name}": (f"filtered-{self.name}.json", {
            "kept": filtered.kept.sum().item(), "removed": filtered.removed,
            "removed_indices": (~filtered.kept).nonzero().squeeze(1).tolist(),
            **{k: v for k, v in filtered.record.items() if k not in timings},
        })})  # fmt: skip


class DownstreamDataDefense(DefenseConfig, abc.ABC):
    """A countermeasure the victim of a downstream-data attack runs on its labelled training
    set, in the encoder's feature space, before training its head. It does not know which
    points are poisons: centroids and neighbours come from the set as given, or from a clean
    held-out ``reference`` where the defense calibrates on one. Every downstream-data attack
    is measured with and without each configured one."""

    hook: ClassVar[Hook] = Hook.DOWNSTREAM_DATA

    def check(self, context: CheckContext) -> None:
        if context.attack_hook is not Hook.DOWNSTREAM_DATA:
            raise ValueError(
                f"defenses: {self.name} sanitizes a downstream training set; it needs an "
                f"attack on the downstream data ({_attack_name(context)} here)"
            )

    def reference_count(self) -> int | float | None:
        """How many clean held-out labelled images the defense calibrates on (a count, or a
        share of the held-out images there are), or None: none, it calibrates on the set
        itself."""
        return None

    def relabels(self) -> bool:
        """Whether :meth:`sanitize` may change labels (rows then count the relabelled
        points)."""
        return False

    @abc.abstractmethod
    def sanitize(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Sanitized:
        """The sanitized training set: ``features`` N×D (raw encoder features; the defense
        standardises them), ``labels`` N; ``reference``: clean held-out (features R×D, labels
        R) to calibrate on, where the scenario gives the defender some."""


def student_training(epochs: int = 100) -> TrainConfig:
    """Adam 1e-3, weight decay 1e-6, batch 128, constant rate: how MIMIC's public code
    trains its student; the default of MIMIC and of the baselines compared with it."""
    return TrainConfig(
        epochs=epochs,
        batch_size=128,
        optimizer=OptimConfig(
            name="adam", lr=1e-3, weight_decay=1e-6, warmup_epochs=0.0, schedule="constant"
        ),
    )


def check_batch(cfg: EncoderDefense, n: int) -> None:
    """Raise naming ``defense.train.batch_size`` when a batch is larger than the ``n`` clean
    images (with ``drop_last`` no step would run)."""
    if cfg.train.drop_last and cfg.train.batch_size > n:
        raise ValueError(
            f"defense.train.batch_size: {cfg.train.batch_size} is larger than the {n} clean "
            "images (defense.clean)"
        )


def _reset_order(module: nn.Module) -> list[nn.Module]:
    # Reversed pre-order: every submodule comes before its ancestors, so a parent's own
    # ``reset_parameters`` (an architecture's init rule) has the last word.
    return list(module.modules())[::-1]


@torch.no_grad()
def reinitialise(module: nn.Module, seed: int) -> nn.Module:
    """A deep copy of ``module`` with every learnable weight drawn afresh from ``seed``.

    Each submodule's ``reset_parameters()`` is called (children before parents) under
    ``seed`` (:func:`~sslpoison.utils.seeded`), on the CPU, so the weights depend on the
    seed alone (not on the device, nor on the global RNG, which is left untouched).
    BatchNorm running statistics are reset by BatchNorm's own ``reset_parameters``. Buffers
    that are not statistics (e.g. the input normalisation of
    :class:`~sslpoison.models.resnet.ResNet`) are constants of the architecture and are kept.

    Note: layers get PyTorch's default init (e.g. Conv2d's Kaiming-uniform), which may differ
    from a constructor's own init loop unless the model defines ``reset_parameters``. A
    module whose ``resets_all_parameters`` is true (a wrapped Hugging Face model) re-draws
    every parameter below it with its ``reset_parameters``.

    Raises:
        ValueError: a parameter belongs to a module without ``reset_parameters`` (it could not
            be re-drawn); the message names it.
    """
    fresh = copy.deepcopy(module)
    first = next(fresh.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    fresh.cpu()
    covered: set[int] = set()
    with seeded(seed):
        for m in _reset_order(fresh):
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
                everything = getattr(m, "resets_all_parameters", False)
                covered.update(id(p) for p in m.parameters(recurse=everything))
    missed = [name for name, p in fresh.named_parameters() if id(p) not in covered]
    if missed:
        raise ValueError(
            f"reinitialise: no reset_parameters() re-draws {', '.join(missed[:5])}"
            + (f" and {len(missed) - 5} more" if len(missed) > 5 else "")
        )
    return fresh.to(device)


#: A random-init student is drawn from ``seed + STUDENT_SEED_OFFSET``: an experiment that
#: pre-trains its encoder from ``seed`` never gets a student from the very same stream.
STUDENT_SEED_OFFSET = 104_729


def make_student(
    teacher: nn.Module,
    init: Literal["random", "teacher"],
    seed: int = 0,
    arch: BackboneConfig | None = None,
    size: int | None = None,
) -> nn.Module:
    """A trainable student, on the teacher's device, in train mode.

    ``"random"``: :func:`reinitialise` from ``seed + STUDENT_SEED_OFFSET`` (independent of
    the teacher's weights: a backdoor is not inherited; CompRess, MIMIC). ``"teacher"``: an
    exact copy of the teacher's weights (the "plain distillation" / fine-tuning baselines).
    ``arch``: a fresh encoder of that architecture instead (drawn from the same seed), for
    the teacher's input (channels, ``size``-px images, its normalisation); ``init`` must then
    be ``"random"``.
    """
    if arch is not None:
        if init != "random":
            raise ValueError("student_arch: a student of its own architecture starts at random")
        return _student_of(arch, teacher, seed + STUDENT_SEED_OFFSET, size)
    if init == "random":
        student = reinitialise(teacher, seed + STUDENT_SEED_OFFSET)
    elif init == "teacher":
        student = copy.deepcopy(teacher)
    else:
        raise ValueError(f"student init must be 'random' or 'teacher', got {init!r}")
    return student.requires_grad_(True).train()


def arch_of(module: nn.Module) -> str:
    """The architecture name of an encoder's card (its class name without one)."""
    return (getattr(module, "card", None) or {}).get("arch", type(module).__name__)


def check_student_arch(cfg: Any) -> Any:
    """A defense config's check (a ``model_validator``): ``student_arch`` needs a student
    that starts at random."""
    if cfg.student_arch is not None and getattr(cfg, "student", "random") != "random":
        raise ValueError("student_arch: a student of another architecture starts at random")
    return cfg


@torch.no_grad()
def width_adapter(
    student: nn.Module, teacher: nn.Module, clean: ImageSet, seed: int = 0
) -> nn.Linear | None:
    """A linear map from the student's feature width to the teacher's (seeded; trained with
    the student and dropped afterwards), or None when they are equally wide."""
    probe = clean.images[:2].to(module_device(teacher)).float() / 255
    was = student.training
    d_s, d_t = student.eval()(probe).shape[1], teacher(probe).shape[1]
    student.train(was)
    if d_s == d_t:
        return None
    with seeded(seed):
        return nn.Linear(d_s, d_t).to(module_device(teacher))


def _student_of(arch: BackboneConfig, teacher: nn.Module, seed: int, size: int | None) -> nn.Module:
    """A fresh ``arch`` encoder for the teacher's input, drawn from ``seed`` (the global RNG
    left untouched), on the teacher's device."""
    from sslpoison.models.backbone import build_encoder

    given: dict = {}
    if hasattr(teacher, "mean") and hasattr(teacher, "std"):
        given = {"mean": teacher.mean.flatten().tolist(), "std": teacher.std.flatten().tolist()}
    channels = int(getattr(teacher, "in_channels", 3))
    with seeded(seed):
        student = build_encoder(arch, channels, size, **given)
    return student.to(module_device(teacher)).requires_grad_(True).train()


__all__ = [
    "FILTER",
    "Defended",
    "DefenseConfig",
    "DownstreamDataDefense",
    "EncoderDefense",
    "FilterContext",
    "PretrainingDataDefense",
    "Sanitized",
    "arch_of",
    "check_batch",
    "check_student_arch",
    "make_student",
    "reinitialise",
    "student_training",
    "width_adapter",
]
