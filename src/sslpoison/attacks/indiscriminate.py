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
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field
from safetensors.torch import save_file

from sslpoison.attacks.base import DownstreamDataAttack, Measured, Outcome
from sslpoison.attacks.linear_victim import LinearVictim
from sslpoison.data.imageset import ImageSet
from sslpoison.data.pictures import save_rows
from sslpoison.defenses.base import DownstreamDataDefense
from sslpoison.errors import warn
from sslpoison.eval.downstream import train_predictor
from sslpoison.eval.features import extract_features
from sslpoison.eval.finetune import finetune_accuracy, finetune_training
from sslpoison.eval.metrics import accuracy, accuracy_drop
from sslpoison.eval.probes import ProbeConfig
from sslpoison.eval.rows import CLEAN, Row
from sslpoison.poisoning import PoisonedSet
from sslpoison.train.engine import TrainConfig
from sslpoison.utils import atomic_write_via

Victim = Literal["linear", "finetune"]


@dataclass
class Crafted:
    """What an attack crafts for one training set of N points: P poisons.

    Attributes:
        images: P×C×H×W uint8 poisoned images.
        labels: P labels.
        base: P indices into the clean set of the image each poison started from.
        features: P×D raw poisoned features before inversion (``feature_targeted``), or None.
        facts: JSON-able facts of the crafting (objective values, target accuracy, ...).
    """

    images: torch.Tensor
    labels: torch.Tensor
    base: torch.Tensor
    features: torch.Tensor | None = None
    facts: dict[str, Any] = field(default_factory=dict)


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

    def poison_count(self, n: int) -> int:
        """⌈ε·n⌉ poisons for a clean set of ``n``."""
        return math.ceil(self.epsilon * n - 1e-9)

    @abc.abstractmethod
    def craft(
        self, encoder: nn.Module, train: ImageSet, features: torch.Tensor,
        victim: LinearVictim, seed: int = 0,
    ) -> Crafted:  # fmt: skip
        """The poisons for ``train`` (N images): ``features`` are the encoder's features of it
        (N×D, float64), ``victim`` the linear-head victim the attacker models on them."""

    def poison_downstream(
        self, encoder: nn.Module, train: ImageSet, seed: int = 0
    ) -> PoisonedDownstream:
        """``train`` with :meth:`craft`'s poisons appended. The attacker models the victim
        with the linear probe's default recipe (it does not know the victim's settings)."""
        device = next(encoder.parameters()).device
        features = extract_features(encoder, train.images, device=device).double()
        labels = train.labels.to(device)
        victim = LinearVictim.of(features, labels, train.num_classes, ProbeConfig(), seed)
        crafted = self.craft(encoder, train, features, victim, seed)
        n, p = len(train), crafted.images.shape[0]
        data = ImageSet(
            torch.cat([train.images, crafted.images.to(train.device)]),
            torch.cat([train.labels, crafted.labels.to(train.device)]),
            list(train.classes), name=train.name,
        )  # fmt: skip
        rates = {"rate_of_clean_set": p / n, "rate_of_set": p / (n + p)}
        indices = torch.arange(n, n + p)
        return PoisonedDownstream(data, indices, rates, list(train.classes), crafted=crafted)

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
        """The rows of one dataset (see the README's table of keys)."""
        encoder, cache = outcome.encoders[CLEAN], outcome.features
        clean, test = outcome.downstream.train(name), outcome.downstream.test(name)
        crafted, n = poisoned.crafted, len(clean)
        f_clean, f_all = cache.get(encoder, clean), cache.get(encoder, poisoned.data)
        f_test, y_test = cache.get(encoder, test), test.labels
        y_clean, y_all = clean.labels.to(f_clean.device), poisoned.data.labels.to(f_all.device)

        def linear(features: torch.Tensor, labels: torch.Tensor) -> float:
            predict = train_predictor(
                "linear", features, labels, clean.num_classes, outcome.cfg, outcome.seed
            )
            return accuracy(predict(f_test).cpu(), y_test.cpu())

        rows = Rows(name)
        rows.add("poisons", poisoned.indices.numel())
        rows.add("poison_rate", poisoned.rates["rate_of_clean_set"])
        base = clean.images[crafted.base.to(clean.device)].float() / 255
        change = crafted.images.to(base.device).float() / 255 - base
        rows.add("poison_linf", change.flatten(1).abs().amax(1).mean().item())
        rows.add("poison_l2", change.flatten(1).norm(dim=1).mean().item())
        # The null control: as many clean duplicates (the base images, true labels).
        base_at = crafted.base.to(f_clean.device)
        f_null = torch.cat([f_clean, f_clean[base_at]])
        y_null = torch.cat([y_clean, y_clean[base_at]])
        victims = ["linear"] * ("linear" in self.victims) + ["features"] * (
            crafted.features is not None
        )  # the features victim's null is the linear one's: a duplicate keeps its features
        acc_clean = linear(f_clean, y_clean)
        if "linear" in self.victims:
            rows.accuracies("linear", None, acc_clean, linear(f_all, y_all))
        if crafted.features is not None:  # the poisoned features, as if an image had them
            f_feat = torch.cat([f_clean, crafted.features.to(f_clean)])
            y_feat = torch.cat([y_clean, crafted.labels.to(y_clean.device)])
            rows.accuracies("features", None, acc_clean, linear(f_feat, y_feat))
        if victims:
            rows.null(victims, None, acc_clean, linear(f_null, y_null))
        for cm in outcome.downstream_defenses:
            reference = calibration(cm, name, outcome)
            on_clean = cm.sanitize(f_clean, y_clean, reference)
            kept = on_clean.kept
            acc = linear(f_clean[kept], on_clean.labels[kept])
            rows.add("removed_unpoisoned", int((~kept).sum()), "linear", cm.name)
            sets = [("linear", f_all, y_all)]
            if crafted.features is not None:
                sets.append(("features", f_feat, y_feat))
            for victim, f, y in sets:
                done = cm.sanitize(f, y, reference)
                kept, labels = done.kept, done.labels
                rows.accuracies(victim, cm.name, acc, linear(f[kept], labels[kept]))
                rows.add("removed_poisons", int((~kept[n:]).sum()), victim, cm.name)
                rows.add("removed_clean", int((~kept[:n]).sum()), victim, cm.name)
                if cm.relabels():
                    changed = labels != y
                    rows.add("relabelled_poisons", int(changed[n:].sum()), victim, cm.name)
                    rows.add("relabelled_clean", int(changed[:n].sum()), victim, cm.name)
            on_null = cm.sanitize(f_null, y_null, reference)
            kept = on_null.kept
            acc_null = linear(f_null[kept], on_null.labels[kept])
            rows.null([victim for victim, _, _ in sets], cm.name, acc, acc_null)
        if "finetune" in self.victims:
            seed, cfg = outcome.seed, self.finetune
            acc_c = finetune_accuracy(encoder, clean, test, cfg, seed)
            acc_p = finetune_accuracy(encoder, poisoned.data, test, cfg, seed)
            rows.accuracies("finetune", None, acc_c, acc_p)
            duplicated = clean.subset(torch.cat([torch.arange(n), crafted.base.cpu()]))
            acc_n = finetune_accuracy(encoder, duplicated, test, cfg, seed)
            rows.null(["finetune"], None, acc_c, acc_n)
        return rows.rows


def calibration(
    defense: DownstreamDataDefense, name: str, outcome: Outcome
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


class Rows:
    """The rows of one dataset's indiscriminate evaluation, keyed
    ``<ds>/<metric>[_<victim>][_<countermeasure>]`` (the linear victim has no suffix)."""

    def __init__(self, dataset: str) -> None:
        self.dataset = dataset
        self.rows: list[Row] = []

    def add(
        self, metric: str, value: float | int, victim: str = "linear",
        countermeasure: str | None = None,
    ) -> None:  # fmt: skip
        suffix = "".join(f"_{s}" for s in (victim, countermeasure) if s and s != "linear")
        key = f"{self.dataset}/{metric}{suffix}"
        self.rows.append(
            Row(self.dataset, CLEAN, victim, metric, value, key, setting=countermeasure)
        )

    def accuracies(
        self, victim: str, countermeasure: str | None, clean: float, poisoned: float
    ) -> None:
        """``acc_clean``, ``acc_poisoned`` and ``acc_drop`` of one victim and countermeasure
        (the victim ``features``: the linear head on the poisoned features before inversion)."""
        self.add("acc_clean", clean, victim, countermeasure)
        self.add("acc_poisoned", poisoned, victim, countermeasure)
        self.add("acc_drop", accuracy_drop(clean, poisoned), victim, countermeasure)

    def null(
        self, victims: list[str], countermeasure: str | None, clean: float, duplicated: float
    ) -> None:
        """``acc_drop_null`` of each of ``victims`` under one countermeasure: the accuracy
        trained clean minus trained on clean ∪ the clean duplicates."""
        for victim in victims:
            self.add("acc_drop_null", accuracy_drop(clean, duplicated), victim, countermeasure)


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
        atomic_write_via(path, lambda tmp: save_file(content, str(tmp)))
        return path

    def picture(folder: Path) -> Path:
        shown = crafted.base[:16]
        base = clean.images[shown.to(clean.device)]
        return save_rows([base, crafted.images[:16]], folder / f"poisons-{name}.png")

    return {f"poisons:{name}": tensors, f"poisons_png:{name}": picture}


__all__ = ["Crafted", "IndiscriminateAttack", "PoisonedDownstream", "Rows", "calibration"]
