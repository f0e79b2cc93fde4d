"""Indiscriminate poisoning of a downstream task on a pre-trained encoder (Lu, Yang, Kamath,
Yu, SaTML 2024): the attacker, who knows the encoder and the clean labelled training set of N
points, adds ⌈ε·N⌉ labelled points to it to lower the test accuracy of what the victim trains
on it — a linear head on the frozen encoder's features (the paper's main setting), or the
encoder and a head fine-tuned together.

:class:`IndiscriminateAttack` is the base of every such attack (``label_flip``, ``gc``,
``tgda``, ``feature_targeted``): a subclass only crafts the poisons (:meth:`craft`). The base
appends them to the training set and measures them (:meth:`measure`): for each victim and
each countermeasure — the experiment's downstream-data defenses
(:class:`~sslpoison.defenses.base.DownstreamDataDefense`, e.g.
:mod:`sslpoison.defenses.sanitizers`), which the victim runs before training — the accuracy of
the same recipe trained on the clean set and on clean ∪ poisons, on the same test set — and,
as its null control, on clean ∪ as many clean duplicates: the poisons' base images, unmodified,
with their true labels (``acc_drop_null``).
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
from pydantic import Field
from safetensors.torch import save_file

from sslpoison.attacks.base import DownstreamDataAttack, Measured, Outcome
from sslpoison.attacks.linear_victim import LinearVictim
from sslpoison.data.imageset import ImageSet
from sslpoison.data.pictures import save_rows
from sslpoison.errors import warn
from sslpoison.eval.controls import ACC_DROP, ACC_DROP_NULL
from sslpoison.eval.downstream import Downstream
from sslpoison.eval.evaluate import Sanitizer
from sslpoison.eval.features import extract_features
from sslpoison.eval.finetune import finetune_accuracy, finetune_training
from sslpoison.eval.metrics import accuracy, accuracy_drop
from sslpoison.eval.probes import Probe, ProbeConfig, select_l2, standardiser, train_probe
from sslpoison.eval.rows import CLEAN, Headline, Metric, Row
from sslpoison.poisoning import PoisonedSet
from sslpoison.train.engine import TrainConfig
from sslpoison.utils import atomic_write_via

log = logging.getLogger(__name__)

Victim = Literal["linear", "finetune"]

# What the indiscriminate attacks measure (see docs/guide.md, "Attacks"); ACC_DROP and its
# null control ACC_DROP_NULL are :mod:`sslpoison.eval.controls`'.
ACC_CLEAN = Metric("acc_clean", "acc. clean", about="the victim's, trained on the clean set")
ACC_POISONED = Metric("acc_poisoned", "acc. poisoned", about="trained with the poisons")
REMOVED_POISONS = Metric("removed_poisons", "poisons out", 0, "poisons the countermeasure removed")
REMOVED_CLEAN = Metric("removed_clean", "clean out", 0, "clean points it removed")
REMOVED_UNPOISONED = Metric(
    "removed_unpoisoned", "out of clean set", 0, "points it removes from the clean set alone"
)
RELABELLED_POISONS = Metric("relabelled_poisons", "poisons relabelled", 0)
RELABELLED_CLEAN = Metric("relabelled_clean", "clean relabelled", 0)
POISONS = Metric("poisons", "poisons", 0)
POISON_RATE = Metric("poison_rate", "poison rate", about="poisons per clean training point")
POISON_LINF = Metric("poison_linf", "poison L∞", 3, "mean L∞ distance to the base image")
POISON_L2 = Metric("poison_l2", "poison L2", 3, "mean L2 distance to the base image")
INVERSION_KEPT = Metric(
    "inversion_kept", "inversion kept",
    about="the share of the drop of victim features (the linear head on the poisoned features "
    "before inversion) that the images keep",
)  # fmt: skip
TO_TARGET = Metric("to_target", "to target θ*", about="‖θ − θ*‖ / ‖θ*‖ of each trained head")
TRAIN_ACC = Metric("train_acc", "train acc.", about="each head's accuracy on the clean set")
#: The metrics of the attacks that aim at a target head (:meth:`Rows.target`).
TARGET_METRICS = (TO_TARGET, TRAIN_ACC)


@dataclass
class Crafted:
    """What an attack crafts for one training set of N points: P poisons.

    Attributes:
        images: P×C×H×W uint8 poisoned images.
        labels: P labels.
        base: P indices of the image each poison started from: into the clean set, or, past
            its N images, into the pre-training images the attacker drew on.
        features: P×D raw poisoned features before inversion (``feature_targeted``), or None.
        facts: JSON-able facts of the crafting (objective values, target accuracy, ...).
        base_images: P×C×H×W uint8 images the poisons started from, when not all of them
            are clean-set images (else None: ``clean.images[base]``).
        target: the target head θ* of the attacks that aim at one, as a function of raw
            features (A K×D, c K: logits A·f + c), or None.
    """

    images: torch.Tensor
    labels: torch.Tensor
    base: torch.Tensor
    features: torch.Tensor | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    base_images: torch.Tensor | None = None
    target: tuple[torch.Tensor, torch.Tensor] | None = None

    def start_images(self, clean: ImageSet) -> torch.Tensor:
        """P×C×H×W uint8: the images the poisons started from (``clean``: the clean set)."""
        if self.base_images is not None:
            return self.base_images
        return clean.images[self.base.to(clean.device)]


@dataclass
class PoisonedDownstream(PoisonedSet):
    """A downstream training set with poisons appended (``indices`` = N … N+P−1) and how they
    were made (:class:`Crafted`)."""

    crafted: Crafted | None = None

    def record(self, positions: bool = True) -> dict[str, Any]:
        record = super().record(positions)
        if self.crafted is not None:
            record["facts"] = self.crafted.facts
            if positions:
                record["base"] = self.crafted.base.tolist()
                record["labels"] = self.crafted.labels.tolist()
        return record


class IndiscriminateAttack(DownstreamDataAttack, abc.ABC):
    """Base of the indiscriminate downstream-data attacks.

    ``epsilon``: poisons per clean training point (⌈ε·N⌉ are added; the paper's 3 %).
    ``victims``: who is measured: ``linear`` (a linear probe, ``eval.probe``'s recipe, on the
    frozen features) and ``finetune`` (encoder + linear head trained together, ``finetune``'s
    recipe). The countermeasures the linear victim runs on its training set first are the
    experiment's downstream-data ``defenses:``; each is measured on its own.
    """

    epsilon: float = Field(0.03, gt=0.0, le=1.0)
    victims: list[Victim] = Field(default_factory=lambda: ["linear"], min_length=1)
    finetune: TrainConfig = Field(default_factory=finetune_training)

    metrics: ClassVar[tuple[Metric, ...]] = (
        ACC_DROP, ACC_DROP_NULL, ACC_CLEAN, ACC_POISONED, REMOVED_POISONS, REMOVED_CLEAN,
        REMOVED_UNPOISONED, RELABELLED_POISONS, RELABELLED_CLEAN, POISONS, POISON_RATE,
        POISON_LINF, POISON_L2,
    )  # fmt: skip
    summary_columns: ClassVar[tuple[Metric, ...]] = (
        ACC_CLEAN, ACC_POISONED, ACC_DROP, ACC_DROP_NULL, REMOVED_POISONS, REMOVED_CLEAN,
    )  # fmt: skip
    headline: ClassVar[Headline | None] = Headline(ACC_DROP_NULL, ACC_DROP, diagonal=True)

    def poison_count(self, n: int) -> int:
        """⌈ε·n⌉ poisons for a clean set of ``n``."""
        return math.ceil(self.epsilon * n - 1e-9)

    @abc.abstractmethod
    def craft(
        self, encoder: nn.Module, train: ImageSet, features: torch.Tensor,
        victim: LinearVictim, seed: int = 0, pretraining: ImageSet | None = None,
    ) -> Crafted:  # fmt: skip
        """The poisons for ``train`` (N images): ``features`` are the encoder's features of it
        (N×D, float64), ``victim`` the linear-head victim the attacker models on them;
        ``pretraining``: the pre-training images, which the attacker may also draw on."""

    def poison_downstream(
        self, encoder: nn.Module, train: ImageSet, seed: int = 0,
        pretraining: ImageSet | None = None,
    ) -> PoisonedDownstream:  # fmt: skip
        """``train`` with :meth:`craft`'s poisons appended. The attacker models the victim
        with the linear probe's default recipe (it does not know the victim's settings)."""
        device = next(encoder.parameters()).device
        features = extract_features(encoder, train.images, device=device).double()
        labels = train.labels.to(device)
        victim = LinearVictim.of(features, labels, train.num_classes, ProbeConfig(), seed)
        crafted = self.craft(encoder, train, features, victim, seed, pretraining)
        n, p = len(train), crafted.images.shape[0]
        data = ImageSet(
            torch.cat([train.images, crafted.images.to(train.device)]),
            torch.cat([train.labels, crafted.labels.to(train.device)]),
            list(train.classes), name=train.name,
        )  # fmt: skip
        rates = {"rate_of_clean_set": p / n, "rate_of_set": p / (n + p)}
        indices = torch.arange(n, n + p)
        return PoisonedDownstream(data, indices, rates, list(train.classes), crafted=crafted)

    def poison_train_sets(
        self, encoder: nn.Module, downstream: Downstream, seed: int = 0,
        pretraining: ImageSet | None = None,
    ) -> dict[str, PoisonedSet]:  # fmt: skip
        return {
            name: self.poison_downstream(encoder, downstream.train(name), seed, pretraining)
            for name in downstream.datasets
        }

    def measure(self, outcome: Outcome) -> Measured:
        """Rows for every poisoned dataset ``<ds>``, each victim and countermeasure; the
        poisons as ``poisons-<ds>.safetensors``, ``poisons-<ds>.png`` and ``poison-<ds>.json``."""
        measured = Measured()
        for name, poisoned in outcome.poisoned_downstream.items():
            measured.rows += self.measure_dataset(name, poisoned, outcome)
            measured.files[f"poison:{name}"] = (f"poison-{name}.json", poisoned.record())
            measured.writers |= poison_writers(name, poisoned, outcome.downstream.train(name))
        return measured

    def measure_dataset(
        self, name: str, poisoned: PoisonedDownstream, outcome: Outcome
    ) -> list[Row]:
        """The rows of one dataset (see the table of keys in docs/guide.md, "Attacks")."""
        encoder, cache = outcome.encoders[CLEAN], outcome.features
        clean, test = outcome.downstream.train(name), outcome.downstream.test(name)
        crafted, n = poisoned.crafted, len(clean)
        f_clean, f_all = cache.get(encoder, clean), cache.get(encoder, poisoned.data)
        f_test, y_test = cache.get(encoder, test), test.labels
        y_clean, y_all = clean.labels.to(f_clean.device), poisoned.data.labels.to(f_all.device)

        # The victim's λ, chosen once on the clean set (a split of its indices only) and kept
        # for every training set below, so that appending points changes nothing else.
        probe = victim_probe(f_clean, y_clean, clean.num_classes, outcome.cfg.probe, outcome.seed)
        heads: dict[str, Probe] = {}

        def linear(features: torch.Tensor, labels: torch.Tensor, keep: str = "") -> float:
            fitted = train_probe(features, labels, clean.num_classes, "linear", probe, outcome.seed)
            if keep:
                heads[keep] = fitted
            return accuracy(fitted.predict(f_test).cpu(), y_test.cpu())

        log.info("%s: measuring the poisons (linear victim, λ %.0e)", name, probe.l2_grid[0])
        rows = Rows(name)
        rows.add(POISONS, poisoned.indices.numel())
        rows.add(POISON_RATE, poisoned.rates["rate_of_clean_set"])
        base = crafted.start_images(clean).to(clean.device).float() / 255
        change = crafted.images.to(base.device).float() / 255 - base
        rows.add(POISON_LINF, change.flatten(1).abs().amax(1).mean().item())
        rows.add(POISON_L2, change.flatten(1).norm(dim=1).mean().item())
        # The null control: as many clean duplicates (the base images, true labels).
        duplicates = null_duplicates(crafted, n, outcome.seed).to(f_clean.device)
        f_null = torch.cat([f_clean, f_clean[duplicates]])
        y_null = torch.cat([y_clean, y_clean[duplicates]])
        victims = ["linear"] * ("linear" in self.victims) + ["features"] * (
            crafted.features is not None
        )  # the features victim's null is the linear one's: a duplicate keeps its features
        acc_clean = linear(f_clean, y_clean, "clean")
        if "linear" in self.victims:
            rows.accuracies("linear", None, acc_clean, linear(f_all, y_all, "linear"))
        if crafted.features is not None:  # the poisoned features, as if an image had them
            f_feat = torch.cat([f_clean, crafted.features.to(f_clean)])
            y_feat = torch.cat([y_clean, crafted.labels.to(y_clean.device)])
            rows.accuracies("features", None, acc_clean, linear(f_feat, y_feat, "features"))
            if "linear" in self.victims:
                rows.inversion_kept()
        if crafted.target is not None:
            rows.target(crafted.target, heads, f_clean, y_clean)
        if victims:
            rows.null(victims, None, acc_clean, linear(f_null, y_null))
        for cm in outcome.downstream_defenses:
            reference = calibration(cm, name, outcome)
            on_clean = cm.sanitize(f_clean, y_clean, reference)
            kept = on_clean.kept
            acc = linear(f_clean[kept], on_clean.labels[kept])
            rows.add(REMOVED_UNPOISONED, int((~kept).sum()), "linear", cm.name)
            sets = [("linear", f_all, y_all)]
            if crafted.features is not None:
                sets.append(("features", f_feat, y_feat))
            for victim, f, y in sets:
                done = cm.sanitize(f, y, reference)
                kept, labels = done.kept, done.labels
                rows.accuracies(victim, cm.name, acc, linear(f[kept], labels[kept]))
                rows.add(REMOVED_POISONS, int((~kept[n:]).sum()), victim, cm.name)
                rows.add(REMOVED_CLEAN, int((~kept[:n]).sum()), victim, cm.name)
                if cm.relabels():
                    changed = labels != y
                    rows.add(RELABELLED_POISONS, int(changed[n:].sum()), victim, cm.name)
                    rows.add(RELABELLED_CLEAN, int(changed[:n].sum()), victim, cm.name)
            on_null = cm.sanitize(f_null, y_null, reference)
            kept = on_null.kept
            acc_null = linear(f_null[kept], on_null.labels[kept])
            rows.null([victim for victim, _, _ in sets], cm.name, acc, acc_null)
        if "finetune" in self.victims:
            log.info("%s: the fine-tune victim, trained clean and poisoned", name)
            seed, cfg = outcome.seed, self.finetune
            acc_c = finetune_accuracy(encoder, clean, test, cfg, seed)
            acc_p = finetune_accuracy(encoder, poisoned.data, test, cfg, seed)
            rows.accuracies("finetune", None, acc_c, acc_p)
            duplicated = clean.subset(torch.cat([torch.arange(n), duplicates.cpu()]))
            acc_n = finetune_accuracy(encoder, duplicated, test, cfg, seed)
            rows.null(["finetune"], None, acc_c, acc_n)
        return rows.rows


def null_duplicates(crafted: Crafted, n: int, seed: int = 0) -> torch.Tensor:
    """P indices into the clean set (N images) whose duplicates, with their true labels, are
    the null control of ``crafted``'s P poisons: each poison's base image where it came from
    the clean set, else (a base from the pre-training images) a seeded random clean image."""
    base = crafted.base.cpu()
    outside = base >= n
    if outside.any():
        g = torch.Generator().manual_seed(seed)
        base = base.clone()
        base[outside] = torch.randint(n, (int(outside.sum()),), generator=g)
    return base


def calibration(
    defense: Sanitizer, name: str, outcome: Outcome
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The clean held-out (features R×D, labels R) ``defense`` calibrates on for dataset
    ``name`` — its ``reference_count()`` images of the train split outside the victim's
    labelled set, through the clean encoder — or None: it asks for none, or the scenario has
    none (then the defense calibrates on the set itself, and the run records a warning)."""
    count = defense.reference_count()
    if count is None:
        return None
    held_out = outcome.downstream.held_out(name, count)
    if held_out is None:
        warn(
            f"defenses: {defense.name} calibrates on clean held-out images, but every image of "
            f"the {name} train split is in the labelled set: calibrated on the set itself"
        )
        return None
    features = outcome.features.get(outcome.encoders[CLEAN], held_out)
    return features, held_out.labels.to(features.device)


def victim_probe(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: ProbeConfig, seed: int
) -> ProbeConfig:
    """``cfg`` with its L2 strength fixed to the one the linear probe picks on the clean N×D
    ``features`` (:func:`~sslpoison.eval.probes.select_l2`, on a split of the clean points)."""
    l2 = select_l2(standardised(features), labels, num_classes, cfg, seed)
    return cfg.model_copy(update={"l2_grid": [l2]})


def standardised(features: torch.Tensor) -> torch.Tensor:
    """N×D features standardised with their own mean and std (what the defender sees)."""
    mean, std = standardiser(features.float())
    return (features.float() - mean) / std


class Rows:
    """The rows of one dataset's indiscriminate evaluation, keyed
    ``<ds>/<metric>[_<victim>][_<countermeasure>]`` (the linear victim has no suffix)."""

    def __init__(self, dataset: str) -> None:
        self.dataset = dataset
        self.rows: list[Row] = []

    def add(
        self, metric: Metric, value: float | int, victim: str = "linear",
        countermeasure: str | None = None,
    ) -> None:  # fmt: skip
        suffix = "".join(f"_{s}" for s in (victim, countermeasure) if s and s != "linear")
        key = f"{self.dataset}/{metric.name}{suffix}"
        self.rows.append(
            Row(self.dataset, CLEAN, victim, metric.name, value, key, setting=countermeasure)
        )

    def value(self, metric: Metric, victim: str = "linear") -> float | int:
        """The value of ``metric`` added for ``victim`` without a countermeasure."""
        return next(
            r.value
            for r in self.rows
            if r.metric == metric.name and r.probe == victim and r.setting is None
        )

    def accuracies(
        self, victim: str, countermeasure: str | None, clean: float, poisoned: float
    ) -> None:
        """``acc_clean``, ``acc_poisoned`` and ``acc_drop`` of one victim and countermeasure
        (the victim ``features``: the linear head on the poisoned features before inversion)."""
        self.add(ACC_CLEAN, clean, victim, countermeasure)
        self.add(ACC_POISONED, poisoned, victim, countermeasure)
        self.add(ACC_DROP, accuracy_drop(clean, poisoned), victim, countermeasure)

    def null(
        self, victims: list[str], countermeasure: str | None, clean: float, duplicated: float
    ) -> None:
        """``acc_drop_null`` of each of ``victims`` under one countermeasure: the accuracy
        trained clean minus trained on clean ∪ the clean duplicates."""
        for victim in victims:
            self.add(ACC_DROP_NULL, accuracy_drop(clean, duplicated), victim, countermeasure)

    def inversion_kept(self) -> None:
        """``inversion_kept``: the share of the poisoned features' drop that the images keep
        (drop of the linear victim ÷ drop of the ``features`` victim; NaN when the features
        dropped nothing)."""
        images, features = self.value(ACC_DROP), self.value(ACC_DROP, "features")
        self.add(INVERSION_KEPT, images / features if features > 0 else math.nan)

    def target(
        self, target: tuple[torch.Tensor, torch.Tensor], heads: dict[str, Probe],
        features: torch.Tensor, labels: torch.Tensor,
    ) -> None:  # fmt: skip
        """How near the attack's target θ* (a head on raw features: A, c) each trained head
        came — ``to_target[_<victim>]``: ‖θ − θ*‖ / ‖θ*‖ with both heads on the clean
        training ``features`` standardised (victim ``clean``: the head trained clean) — and
        their accuracies on the clean training set, ``train_acc[_<victim>]`` (``target``:
        θ*'s)."""
        mean, std = standardiser(features.double())
        a, c = (t.to(mean) for t in target)
        goal = torch.cat([(a * std).flatten(), c + a @ mean])
        x = (features.double() - mean) / std

        def on_clean(head: Probe) -> tuple[torch.Tensor, torch.Tensor]:
            w = head.head.weight.detach().double() / head.std.double()
            w_std, b = w * std, head.head.bias.detach().double() - w @ head.mean.double()
            return w_std, b + w @ mean

        with torch.no_grad():
            self.add(TRAIN_ACC, ((x @ (a * std).T + c + a @ mean).argmax(1) == labels)
                     .double().mean().item(), "target")  # fmt: skip
            for victim, head in heads.items():
                w, b = on_clean(head)
                distance = (torch.cat([w.flatten(), b]) - goal).norm() / goal.norm()
                self.add(TO_TARGET, distance.item(), victim)
                acc = ((x @ w.T + b).argmax(1) == labels).double().mean().item()
                self.add(TRAIN_ACC, acc, victim)


def poison_writers(
    name: str, poisoned: PoisonedDownstream, clean: ImageSet
) -> dict[str, Callable[[Path], Path]]:
    """Writers of the poisons of dataset ``name``: all of them as safetensors (uint8 images,
    labels, base indices, the pre-inversion features where there are) and a PNG of up to 16
    of them, base images on the top row and poisons below."""
    crafted = poisoned.crafted
    assert crafted is not None

    def tensors(folder: Path) -> Path:
        path = folder / f"poisons-{name}.safetensors"
        content = {
            "images": crafted.images.cpu().contiguous(),
            "labels": crafted.labels.cpu().contiguous(),
            "base": crafted.base.cpu().contiguous(),
        }
        if crafted.features is not None:
            content["features"] = crafted.features.float().cpu().contiguous()
        if crafted.base_images is not None:
            content["base_images"] = crafted.base_images.cpu().contiguous()
        if crafted.target is not None:  # θ* on raw features: logits = A·f + c
            content["target_weight"] = crafted.target[0].float().cpu().contiguous()
            content["target_bias"] = crafted.target[1].float().cpu().contiguous()
        atomic_write_via(path, lambda tmp: save_file(content, str(tmp)))
        return path

    def picture(folder: Path) -> Path:
        base = crafted.start_images(clean)[:16]
        return save_rows([base, crafted.images[:16]], folder / f"poisons-{name}.png")

    return {f"poisons:{name}": tensors, f"poisons_png:{name}": picture}


__all__ = [
    "INVERSION_KEPT",
    "TARGET_METRICS",
    "Crafted",
    "IndiscriminateAttack",
    "PoisonedDownstream",
    "Rows",
    "calibration",
]
