"""The hook points of the pipeline, shared by attacks and defenses (docs/design.md, "The data
flow"), what an attack's or a defense's checks see of the experiment around it, and what it
adds to a run's evaluation.

* :class:`Hook` — where an attack strikes or a defense acts: the pre-training data, the
  encoder, or a downstream task's labelled data;
* :class:`CheckContext` — the facts of the experiment an attack's or a defense's
  ``check(context)`` judges (built by the experiment config, which lies above both);
* :class:`Measured` — rows and files an attack's or a defense's ``measure(outcome)`` adds.

Neither attacks nor defenses own these: both import them from here.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslpoison.eval.rows import Row


class Hook(enum.Enum):
    """Where in the pipeline an attack strikes or a defense acts."""

    PRETRAINING_DATA = "pre-training data"
    ENCODER = "encoder"
    DOWNSTREAM_DATA = "downstream data"


@dataclass(frozen=True)
class CheckContext:
    """What an attack's or a defense's ``check`` sees of the experiment around it, at config
    load time (:meth:`sslpoison.experiment.config.ExperimentConfig.check_context` builds it).

    Attributes:
        pretraining: the pre-training dataset (``data.dataset``).
        eval_datasets: the downstream datasets the run evaluates (``eval.datasets``), in order.
        method: the pre-training method (``pretrain.method``).
        image_text: whether that method pre-trains on image–caption pairs (CLIP).
        encoder_given: whether the clean encoder is given (``encoder:``): no pre-training.
        attack: the attack's ``name``, or None for a run without an attack.
        attack_hook: where that attack strikes, or None.
    """

    pretraining: str
    eval_datasets: tuple[str, ...]
    method: str
    image_text: bool
    encoder_given: bool = False
    attack: str | None = None
    attack_hook: Hook | None = None


@dataclass
class Measured:
    """What an attack or a defense adds to the evaluation: rows, JSON files for the run's
    folder (``{artifact name: (file name, JSON-able content)}``) and other files, as writers
    (``{artifact name: write(folder) -> path}``)."""

    rows: list[Row] = field(default_factory=list)
    files: dict[str, tuple[str, Any]] = field(default_factory=dict)
    writers: dict[str, Callable[[Path], Path]] = field(default_factory=dict)

    def __iadd__(self, other: Measured) -> Measured:
        self.rows += other.rows
        self.files |= other.files
        self.writers |= other.writers
        return self


__all__ = ["CheckContext", "Hook", "Measured"]
