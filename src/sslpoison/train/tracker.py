"""An optional experiment tracker: the engine's per-epoch losses and a run's final metrics,
logged to TensorBoard.

Active only when the experiment configures it (``tracker: {kind: tensorboard}``) and the
``tensorboard`` package is installed (``pip install 'sslpoison[tracking]'``); otherwise a
run logs one warning and goes on without it. While :func:`tracking` is open, every
:func:`~sslpoison.train.engine.fit` logs its epoch losses as ``loss/<desc>`` (``loss/<desc>
#2`` for the second fit with the same description, ...), step = epoch; the run's metrics
follow as ``metrics/<key>``, its stage timings as ``time/<stage>`` and the losses of the
stages it took from the cache as ``loss/<stage> (cached)``. Only rank 0 logs.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from sslpoison.configbase import Config
from sslpoison.train import dist

log = logging.getLogger(__name__)

#: The extra that installs the tracker's backend.
EXTRA = "pip install 'sslpoison[tracking]'"


class TrackerConfig(Config):
    """``tracker:`` of an experiment: ``kind`` (``tensorboard``) and ``dir``, the log folder
    (default: ``tensorboard/`` in the run's output folder)."""

    kind: Literal["tensorboard"] = "tensorboard"
    dir: str | None = None

    def log_dir(self, out_dir: Path) -> Path:
        return Path(self.dir).expanduser() if self.dir else Path(out_dir) / "tensorboard"


class TensorBoardTracker:
    """Scalars and text into a TensorBoard event file in ``log_dir``."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.fits: Counter[str] = Counter()

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, float(value), step)

    def text(self, tag: str, text: str) -> None:
        self.writer.add_text(tag, text)

    def loss_tag(self, desc: str) -> str:
        """``loss/<desc>``, numbered from the second fit with the same ``desc`` on."""
        self.fits[desc] += 1
        n = self.fits[desc]
        return f"loss/{desc}" + (f" #{n}" if n > 1 else "")

    def log_results(
        self,
        metrics: dict[str, float],
        timings: dict[str, float],
        config: Any,
        stages: dict[str, Any] | None = None,
    ) -> None:
        """The run's final metrics (step 0), stage timings and config (as JSON text); the
        losses of the stages that came from the cache (no fit ran to log them) as
        ``loss/<stage> (cached)``."""
        for key, value in metrics.items():
            self.scalar(f"metrics/{key}", value, 0)
        for stage, seconds in timings.items():
            self.scalar(f"time/{stage}", seconds, 0)
        for stage, record in (stages or {}).items():
            if isinstance(record, dict) and record.get("cached"):
                for epoch, loss in enumerate(record.get("losses") or [], start=1):
                    self.scalar(f"loss/{stage} (cached)", loss, epoch)
        self.text("config", "```\n" + json.dumps(config, indent=2) + "\n```")

    def close(self) -> None:
        self.writer.close()


_active: ContextVar[TensorBoardTracker | None] = ContextVar("sslpoison_tracker", default=None)


def open_tracker(cfg: TrackerConfig, out_dir: Path) -> TensorBoardTracker | None:
    """The configured tracker, or None (with one warning) when its backend is missing."""
    try:
        return TensorBoardTracker(cfg.log_dir(out_dir))
    except ImportError as e:
        log.warning("tracker: %s is not installed (%s); the run is not tracked", e.name, EXTRA)
        return None


@contextmanager
def tracking(cfg: TrackerConfig | None, out_dir: Path) -> Iterator[TensorBoardTracker | None]:
    """The configured tracker (None when not configured, not installed, or not rank 0),
    active for every :func:`~sslpoison.train.engine.fit` inside the block."""
    tracker = open_tracker(cfg, out_dir) if cfg is not None and dist.rank() == 0 else None
    if tracker is None:
        yield None
        return
    token = _active.set(tracker)
    try:
        yield tracker
    finally:
        _active.reset(token)
        tracker.close()


def epoch_loggers(desc: str) -> list[Callable[[int, float], None]]:
    """The engine's ``on_epoch_end`` callbacks that log a fit's losses to the active tracker
    (none when no tracker is active)."""
    tracker = _active.get()
    if tracker is None:
        return []
    tag = tracker.loss_tag(desc)
    return [lambda epoch, loss: tracker.scalar(tag, loss, epoch)]


__all__ = ["EXTRA", "TensorBoardTracker", "TrackerConfig", "epoch_loggers", "tracking"]
