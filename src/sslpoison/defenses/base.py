"""What every defense is: a frozen config whose ``apply`` turns a suspect encoder into another.

A defense sees the suspect encoder and a small set of clean images (``clean``: a count or share
of the pre-training set, chosen by the caller, e.g. with :meth:`DefenseConfig.clean_subset`),
trains through the one engine (:func:`sslpoison.train.engine.fit`) and returns a
:class:`Defended`: the new encoder (same input and output as the suspect one: N×C×H×W float
in [0, 1] → N×D), the engine's result and a JSON-able record for the stage.

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
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field

from sslpoison.configbase import Config, CountOrShare
from sslpoison.data.imageset import ImageSet
from sslpoison.models.backbone import BackboneConfig
from sslpoison.train.engine import FitResult, TrainConfig
from sslpoison.train.optim import OptimConfig
from sslpoison.utils import module_device


@dataclass
class Defended:
    """What a defense returns.

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
    """Base of every ``defense:`` section; each subclass adds ``name: Literal[...]``.

    ``clean``: how many of the pre-training set's clean images the defender holds (a count, or
    a share in (0, 1]; MIMIC and Saha et al. use ≤ 5 %). ``train``: how the defense trains
    (each defense gives its paper's setting as the default). ``control``: also apply the
    defense, unchanged, to the *clean* encoder and report it as ``<name>_on_clean`` — what the
    defense alone does to accuracy, ASR and FP, the yardstick for its effect on the backdoor.
    ``seed``: the defense's own seed (clean subset, student init, batches); ``None`` takes the
    experiment's. Sweeping it measures the defense's spread on the same (cached) encoders.
    """

    clean: CountOrShare = 0.05
    control: bool = False
    seed: int | None = None
    train: TrainConfig = Field(default_factory=TrainConfig)

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


def check_batch(cfg: DefenseConfig, n: int) -> None:
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
    ``torch.random.fork_rng`` seeded with ``seed``, on the CPU, so the weights depend on the
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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(d_s, d_t).to(module_device(teacher))


def _student_of(arch: BackboneConfig, teacher: nn.Module, seed: int, size: int | None) -> nn.Module:
    """A fresh ``arch`` encoder for the teacher's input, drawn from ``seed`` (the global RNG
    left untouched), on the teacher's device."""
    from sslpoison.models.backbone import build_encoder

    given: dict = {}
    if hasattr(teacher, "mean") and hasattr(teacher, "std"):
        given = {"mean": teacher.mean.flatten().tolist(), "std": teacher.std.flatten().tolist()}
    channels = int(getattr(teacher, "in_channels", 3))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = build_encoder(arch, channels, size, **given)
    return student.to(module_device(teacher)).requires_grad_(True).train()


__all__ = [
    "Defended",
    "DefenseConfig",
    "arch_of",
    "check_batch",
    "check_student_arch",
    "make_student",
    "reinitialise",
    "student_training",
    "width_adapter",
]
