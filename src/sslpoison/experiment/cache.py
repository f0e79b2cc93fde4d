"""The stage cache: a finished stage's outputs under ``ROOT/<stage>/<key>/``.

``key`` hashes the stage's own config slice and its inputs' keys, so an identical stage is
reused (a sweep pre-trains its clean encoder once) and a changed one runs anew. A stage is
complete only when its ``done.json`` exists (written last, atomically); until then its
folder holds the engine's checkpoints, from which an interrupted run resumes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sslpoison.utils import atomic_write_json, stable_hash

#: Bump when a stage's on-disk outputs change meaning, to invalidate old entries.
CACHE_VERSION = 1


def stage_key(stage: str, **parts: Any) -> str:
    """The cache key of ``stage`` with inputs ``parts`` (config slices, input hashes, seed)."""
    return stable_hash({"stage": stage, "version": CACHE_VERSION, **parts})


class StageCache:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def done(self, stage: str, key: str) -> dict[str, Any] | None:
        """The record of a finished stage, or None."""
        marker = self.path(stage, key) / "done.json"
        return json.loads(marker.read_text()) if marker.exists() else None

    def finish(self, stage: str, key: str, record: dict[str, Any]) -> None:
        atomic_write_json(self.path(stage, key) / "done.json", record)
