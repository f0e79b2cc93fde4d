"""The hook points of the pipeline, shared by attacks and defenses (docs/design.md, "The data
flow"), and what an attack or a defense adds to a run's evaluation.

* :class:`Hook` — where an attack strikes or a defense acts: the pre-training data, the
  encoder, or a downstream task's labelled data;
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


__all__ = ["Hook", "Measured"]
