"""What an attack leaves behind for the evaluation to measure.

Attacks (:mod:`sslpoison.attacks`) make these and the evaluation (:mod:`sslpoison.eval`)
reads them; both import them from here, so neither imports the other.

* :class:`PoisonedSet` — a poisoned training set and exactly what was changed in it;
* :class:`BackdoorTarget` — a class of a downstream dataset and the trigger meant to reach it;
* :class:`TargetedTrial` — one targeted-poisoning draw: a test image and the label it should get;
* :class:`Filtered` — what a defense on the pre-training data leaves: which items it kept, a
  score per item (scored against :attr:`PoisonedSet.indices`), and the model it trained, if
  it trained one itself;
* :class:`Sanitized` — what a defense on the downstream data makes of a labelled training
  set: the points it keeps and their labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from sslpoison.data.imageset import ImageSet
from sslpoison.triggers import PatchTrigger

if TYPE_CHECKING:
    from sslpoison.data.shards import PairStream


@dataclass
class BackdoorTarget:
    """A target class of a downstream dataset and the trigger that should reach it.

    ``references`` (R×C×H×W uint8): the images an encoder attack maps triggered inputs onto
    (BadEncoder's x_ref), once chosen; ``reference_indices`` their positions in the dataset's
    train split. The evaluation reports how the downstream probe classifies them.
    """

    dataset: str
    target_class: int
    class_name: str
    trigger: PatchTrigger
    references: torch.Tensor | None = None
    reference_indices: list[int] | None = None

    @property
    def name(self) -> str:
        """``<dataset>/<class name>``: how results and artifacts name the target."""
        return f"{self.dataset}/{self.class_name}"

    def record(self) -> dict[str, Any]:
        """JSON-able: dataset, class (index and name), the trigger's config and the
        reference images' train-split indices where there are references."""
        record: dict[str, Any] = {
            "dataset": self.dataset,
            "target_class": self.target_class,
            "class_name": self.class_name,
            "trigger": self.trigger.cfg.model_dump(mode="json"),
        }
        if self.reference_indices is not None:
            record["reference_indices"] = list(self.reference_indices)
        return record


@dataclass(frozen=True)
class TargetedTrial:
    """One targeted poisoning draw: test image ``index`` of class ``true_class`` should be
    classified as ``target_class``."""

    index: int
    true_class: int
    target_class: int


@dataclass
class PoisonedSet:
    """A training set after an attack, and what was changed.

    Attributes:
        data: the poisoned set (N images; appended pairs come after the original ones), or
            for pairs streamed from shards the poisoned
            :class:`~sslpoison.data.shards.PairStream`.
        indices: P sorted positions in ``data`` that were poisoned (replaced or appended).
        rates: the poisoned share of the set (``rate_of_set``) and, with a target class, of
            that class (``rate_of_target_class``); see :func:`sslpoison.eval.poison_rates`.
        classes: the names of the classes ``target_class`` and the trials index (those of
            the dataset the attack is measured on).
        corners: P×2 top-left (row, col) of each pasted patch, or None.
        target_class: the backdoor's target class, or None.
        trials: the targeted (test image, adversarial label) draws, if any.
        keys: for streamed pairs, the ``"<shard>/<key>"`` of each replaced pair (by
            ``indices``, which count in the shards' index order), else None.
    """

    data: ImageSet | PairStream
    indices: torch.Tensor
    rates: dict[str, float]
    classes: list[str]
    corners: torch.Tensor | None = None
    target_class: int | None = None
    trials: list[TargetedTrial] = field(default_factory=list)
    keys: list[str] | None = None

    def record(self, positions: bool = True) -> dict[str, Any]:
        """What the poisoning changed, JSON-able: count, rates, target and trials; with
        ``positions`` (for ``poison.json``) also the poisoned indices, each patch's corner and
        each trial's test image, true and adversarial class (by name)."""
        record: dict[str, Any] = {"count": int(self.indices.numel()), **self.rates}
        if self.target_class is not None:
            record["target_class"] = self.target_class
            record["target_name"] = self.classes[self.target_class]
        if self.trials:
            record["trials"] = len(self.trials)
        if positions:
            record["indices"] = self.indices.tolist()
            if self.keys is not None:
                record["keys"] = list(self.keys)
            if self.corners is not None:
                record["corners"] = self.corners.tolist()
            if self.trials:
                record["targeted"] = [
                    {
                        "test_index": t.index,
                        "true_class": self.classes[t.true_class],
                        "target_class": self.classes[t.target_class],
                    }
                    for t in self.trials
                ]
        return record


@dataclass
class Filtered:
    """What a pre-training-data defense (:class:`~sslpoison.defenses.base.PretrainingDataDefense`)
    leaves behind.

    Attributes:
        kept: N bool (CPU): the items of the pre-training set kept (pre-trained on again).
        scores: N float (CPU): how suspicious each item is, larger = more likely a poison
            (the ranking scored against the planted poisons: AUROC).
        record: JSON-able facts for the stage record (clusters, thresholds, rounds, ...).
        model: a model the defense trained itself (a training procedure such as SafeCLIP):
            the encoder, or for image–text pre-training the (CLIP model, tokenizer) pair; None
            (a filter): the pipeline pre-trains on the kept items with the experiment's recipe.
        fit: the engine's result of that training, or None.
    """

    kept: torch.Tensor
    scores: torch.Tensor
    record: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    fit: Any = None

    def __post_init__(self) -> None:
        if self.kept.dtype != torch.bool or self.kept.dim() != 1:
            raise ValueError(f"Filtered.kept must be a 1-D bool tensor, got {self.kept.dtype}")
        if self.scores.shape != self.kept.shape:
            raise ValueError(
                f"Filtered: {self.scores.numel()} scores for {self.kept.numel()} items"
            )
        self.kept, self.scores = self.kept.cpu(), self.scores.detach().float().cpu()

    @property
    def removed(self) -> int:
        """How many items were removed."""
        return int((~self.kept).sum())


@dataclass
class Sanitized:
    """What a downstream-data defense (:class:`~sslpoison.defenses.base.DownstreamDataDefense`)
    makes of a labelled training set of N points: the points it keeps (N bool) and the labels
    they train with (N int64; relabelled points differ from the given labels)."""

    kept: torch.Tensor
    labels: torch.Tensor


__all__ = ["BackdoorTarget", "Filtered", "PoisonedSet", "Sanitized", "TargetedTrial"]
