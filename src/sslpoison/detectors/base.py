"""What every detector is: a frozen config whose ``detect`` judges a suspect encoder.

A detector sees the suspect encoder (N×C×H×W float in [0, 1] → N×D) and a small set of clean,
unlabelled images (``clean``: a count or share of the pre-training set, chosen by the caller,
e.g. with :meth:`DetectorConfig.clean_subset`), optimises whatever it needs through the one
engine (:func:`sslpoison.train.engine.fit`) and returns a :class:`Detection`: a score, the
verdict, a JSON-able record and, for trigger-inversion detectors, the inverted trigger.

A detector leaves the encoder as it was given: weights, mode and each parameter's
``requires_grad`` (:func:`sslpoison.utils.frozen`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
from pydantic import Field

from sslpoison.configbase import Config, CountOrShare
from sslpoison.data.imageset import ImageSet
from sslpoison.eval.rows import Metric, Row
from sslpoison.train.engine import FitResult, TrainConfig

#: The verdict row every detector adds: 1 when it judged the encoder backdoored, else 0.
FLAGGED = Metric("flagged", "flagged", 0)
SCORE = Metric("score", "score")


@dataclass
class Detection:
    """What a detector returns.

    Attributes:
        score: the detector's statistic (for DECREE the relative L1 norm of the inverted
            mask, lower = more suspicious; each detector documents its direction).
        flagged: the verdict: True when the encoder is judged backdoored.
        record: JSON-able facts for the stage record (norms, similarities, λ history, ...).
        trigger: the inverted trigger as an image, mask·pattern (C×H×W float in [0, 1], on
            the CPU), or None for a detector that inverts no trigger.
        mask: the inverted mask (H×W float in [0, 1], on the CPU), or None.
        fit: the engine's result (per-epoch losses, throughput, resume point), or None.
    """

    score: float
    flagged: bool
    record: dict[str, Any] = field(default_factory=dict)
    trigger: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    fit: FitResult | None = None


class DetectorConfig(Config, abc.ABC):
    """Base of every ``detector:`` section; each subclass adds ``name: Literal[...]``.

    ``clean``: how many clean, unlabelled images the defender holds (a count, or a share in
    (0, 1] of the set it is drawn from). ``train``: how the detector's optimisation runs
    (each detector gives its paper's setting, adapted to the engine, as the default).
    """

    clean: CountOrShare = 1000
    train: TrainConfig = Field(default_factory=TrainConfig)

    #: How reports name the detector (its ``name`` when empty).
    title: ClassVar[str] = ""
    #: The metrics of :meth:`numbers`, in the order tables show them.
    metrics: ClassVar[tuple[Metric, ...]] = (SCORE,)

    def clean_subset(self, data: ImageSet, seed: int = 0) -> ImageSet:
        """The defender's ``clean`` images of ``data``: seeded, not stratified (no labels)."""
        return data.take(self.clean, seed=seed, stratified=False)

    def numbers(self, detection: dict[str, Any]) -> dict[str, float]:
        """The numbers of a detection record worth a row, by metric name (:attr:`metrics`);
        the verdict is added as :data:`FLAGGED`."""
        return {SCORE.name: float(detection["score"])}

    def rows(self, encoder: str, detection: dict[str, Any]) -> list[Row]:
        """:meth:`numbers` of a detection record of ``encoder`` and its verdict (0 or 1,
        metric ``flagged``), as rows keyed ``<name>/<encoder>_<metric>``."""
        found = {**self.numbers(detection), FLAGGED.name: int(detection["flagged"])}
        return [
            Row(None, encoder, self.name, metric, value, f"{self.name}/{encoder}_{metric}")
            for metric, value in found.items()
        ]

    @abc.abstractmethod
    def detect(
        self,
        encoder: nn.Module,
        clean: ImageSet,
        *,
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
    ) -> Detection:
        """Judge ``encoder`` with the ``clean`` images; resume from ``checkpoint_dir``.

        ``encoder`` is left as it was given (weights, mode and ``requires_grad``) and stays
        on its device.
        """


__all__ = ["FLAGGED", "SCORE", "Detection", "DetectorConfig"]
