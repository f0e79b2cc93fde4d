"""Poisons found by optimisation, through the one engine: a tensor of P poisons (images in
[0, 1], or feature vectors) minimising an objective inside a box, with Adam and a cosine
schedule, projected back into the box after every step."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import torch
import torch.nn as nn

from sslpoison.train.engine import TensorBatches, TrainConfig, fit
from sslpoison.train.optim import OptimConfig

log = logging.getLogger(__name__)


class PoisonTask(nn.Module):
    """Engine task: the poisons (a parameter, P×…) and ``objective(poisons) -> scalar``; the
    whole set is one step (the engine's batch is a placeholder)."""

    def __init__(
        self,
        init: torch.Tensor,
        low: torch.Tensor,
        high: torch.Tensor,
        objective: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        super().__init__()
        self.poisons = nn.Parameter(init.detach().clone())
        self.register_buffer("low", low.expand_as(init).clone())
        self.register_buffer("high", high.expand_as(init).clone())
        self.objective = objective
        self.values: list[float] = []

    def forward(self, *_: torch.Tensor) -> torch.Tensor:
        value = self.objective(self.poisons)
        self.values.append(float(value.detach()))
        return value

    @torch.no_grad()
    def project(self) -> None:
        """Clamp the poisons into [low, high]."""
        self.poisons.copy_(torch.maximum(torch.minimum(self.poisons, self.high), self.low))


def optimise_poisons(
    init: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    *,
    steps: int,
    lr: float,
    seed: int = 0,
    desc: str = "poisons",
) -> tuple[torch.Tensor, list[float]]:
    """Minimise ``objective`` over poisons starting at ``init`` and kept within [``low``,
    ``high``] (broadcast to ``init``'s shape): ``steps`` full-set Adam steps of peak size
    ``lr``, cosine-annealed, in fp32/fp64 (no autocast: the objectives are differences of
    gradients). Returns (the poisons, detached; the objective at every step)."""
    task = PoisonTask(init, low, high, objective)
    task.project()
    cfg = TrainConfig(
        epochs=steps,
        batch_size=1,
        amp=False,
        amp_cpu=False,
        checkpoint_every=0,
        progress=sys.stderr.isatty(),  # a bar on a terminal; no line per step in a log
        optimizer=OptimConfig(name="adam", lr=lr, weight_decay=0.0, exclude_bias_norm=False),
    )
    placeholder = TensorBatches(torch.zeros(1, device=init.device), batch_size=1, seed=seed)
    callbacks = [lambda *_: task.project()]
    if not cfg.progress:  # no bar: a log line at every fifth of the way
        every = max(1, steps // 5)

        def report(step: int, value: float) -> None:
            if step == 1 or step % every == 0 or step == steps:
                log.info("%s: step %d/%d, objective %.4g", desc, step, steps, value)

        callbacks.append(report)
    fit(task, placeholder, cfg, seed=seed, desc=desc, on_epoch_end=callbacks)
    return task.poisons.detach(), task.values


def quantise(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (float) → uint8, as a dataset stores them."""
    return images.detach().clamp(0, 1).mul(255).round().to(torch.uint8)


__all__ = ["PoisonTask", "optimise_poisons", "quantise"]
