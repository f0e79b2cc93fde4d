"""The one training engine: every SSL method, attack, defense and probe trains through `fit`.

A *task* is an ``nn.Module`` whose ``forward(*batch)`` returns a scalar loss. Optionally it
has ``momentum_pairs()`` and ``momentum = (base, final)``: after each optimizer step the
engine's EMA hook moves each target toward its online module (BYOL/MoCo-style), with the
momentum following a cosine schedule from ``base`` to ``final``.

The engine owns: the optimizer and warm-up + cosine schedule, bf16 autocast where the device
has it (:mod:`sslpoison.train.precision`), DDP under
``torchrun`` (each rank takes its share of every epoch's permutation), checkpoints every N
epochs (safetensors + JSON, RNG states included), exact resume on CPU, and progress output.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from pydantic import (
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
)
from tqdm.auto import tqdm

from sslpoison.configbase import RESULT_NEUTRAL, Config
from sslpoison.errors import NumericsError
from sslpoison.train import dist
from sslpoison.train.checkpoint import (
    load_checkpoint,
    load_optimizer,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from sslpoison.train.optim import OptimConfig, build_optimizer, lr_factor
from sslpoison.train.precision import AmpSetting, Precision, explain_precision, resolve_precision
from sslpoison.train.tracker import epoch_loggers
from sslpoison.utils import seeded

log = logging.getLogger(__name__)

#: The serialization context key under which a :class:`TrainConfig` dumps itself for a stage
#: cache key; its value is the device the stage runs on.
STAGE_KEY = "stage_key_device"


class TrainConfig(Config):
    """How to train (independent of what is trained).

    ``batch_size`` is the global batch (split across DDP ranks); ``checkpoint_every`` is in
    epochs (0: only at the end). ``amp``: bf16 autocast on CUDA. ``amp_cpu``: bf16 autocast
    on CPU — ``auto`` only where the CPU has native bf16 (AVX512-BF16 or AMX; elsewhere it is
    emulated and many times slower than fp32), ``true`` always, ``false`` never (see
    :mod:`sslpoison.train.precision`). ``channels_last``: NHWC convolutions (faster with bf16,
    on tensor cores, and in fp32 on AVX2 CPUs; neutral in fp32 on AVX-512).
    """

    epochs: PositiveInt = 10
    batch_size: PositiveInt = 256
    optimizer: OptimConfig = Field(default_factory=OptimConfig)
    amp: bool = True
    amp_cpu: AmpSetting = "auto"
    channels_last: bool = False
    grad_clip: PositiveFloat | None = None
    checkpoint_every: NonNegativeInt = 1
    drop_last: bool = True
    progress: bool = True

    def precision(self, device: torch.device | str) -> Precision:
        """The precision a run on ``device`` uses (``bf16`` or ``fp32``)."""
        return resolve_precision(self.amp, self.amp_cpu, device)

    @model_serializer(mode="wrap")
    def _as_stage_key(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo):
        """Dumped with ``context={STAGE_KEY: device}`` (for a stage cache key): the precision a
        run on that device uses instead of ``amp``/``amp_cpu``, and no setting that cannot
        change the trained weights (:data:`~sslpoison.configbase.RESULT_NEUTRAL`:
        ``progress``, ``checkpoint_every``)."""
        data = handler(self)
        device = (info.context or {}).get(STAGE_KEY)
        if device is None:
            return data
        for name in RESULT_NEUTRAL | {"amp", "amp_cpu"}:
            data.pop(name, None)
        return data | {"precision": self.precision(device)}


class TensorBatches:
    """Shuffled mini-batches over tensors that share their first dimension (on any device).

    Each epoch's order comes from ``(seed, epoch)`` alone, so a resumed run sees the same
    batches. Under DDP each rank takes every ``world_size``-th index of the permutation.
    """

    def __init__(
        self,
        *tensors: torch.Tensor,
        batch_size: int,
        drop_last: bool = True,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        n = tensors[0].shape[0]
        if any(t.shape[0] != n for t in tensors):
            raise ValueError("TensorBatches: tensors differ in their first dimension")
        self.tensors = tensors
        self.n = n
        self.world = dist.world_size()
        self.local_batch = max(1, batch_size // self.world)
        self.drop_last = drop_last
        self.shuffle = shuffle
        self.seed = seed
        if drop_last and self.n // self.world < self.local_batch:
            raise ValueError(
                f"batch_size {batch_size} is larger than the {self.n} training samples"
            )

    def __len__(self) -> int:
        per_rank = self.n // self.world
        if self.drop_last:
            return per_rank // self.local_batch
        return math.ceil(per_rank / self.local_batch)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        order = order[dist.rank() :: self.world][: self.n // self.world]
        device = self.tensors[0].device
        for i in range(len(self)):
            idx = order[i * self.local_batch : (i + 1) * self.local_batch].to(device)
            yield tuple(t[idx] for t in self.tensors)


@dataclass
class FitResult:
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    seconds: float = 0.0
    samples_per_s: float = 0.0
    steps: int = 0
    resumed_from: int | None = None
    precision: Precision = "fp32"
    #: The training's random state when it ended (:func:`~sslpoison.train.checkpoint.rng_state`;
    #: the global one is put back): a draw that continues it sets it inside ``seeded()``.
    rng: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


def ema_momentum(base: float, final: float, step: int, total: int) -> float:
    """Cosine schedule from ``base`` (step 0) to ``final`` (last step) (Grill et al., 2020)."""
    return final - (final - base) * (math.cos(math.pi * step / max(1, total)) + 1) / 2


@torch.no_grad()
def ema_update(pairs: Sequence[tuple[nn.Module, nn.Module]], m: float) -> None:
    """target ← m·target + (1 − m)·online for parameters; buffers are copied."""
    for online, target in pairs:
        on = [p.detach() for p in online.parameters()]
        tg = list(target.parameters())
        torch._foreach_mul_(tg, m)
        torch._foreach_add_(tg, on, alpha=1.0 - m)
        for bo, bt in zip(online.buffers(), target.buffers(), strict=True):
            bt.copy_(bo)


EpochCallback = Callable[[int, float], None]


def fit(
    task: nn.Module,
    data: TensorBatches | Any,
    cfg: TrainConfig,
    *,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    desc: str = "train",
    on_epoch_end: Sequence[EpochCallback] = (),
) -> FitResult:
    """Train ``task`` on ``data`` for ``cfg.epochs`` epochs; resume from ``checkpoint_dir``.

    Args:
        task: module whose ``forward(*batch)`` returns a scalar loss; it stays on its device.
        data: the batches (tensors already on the task's device): a :class:`TensorBatches`,
            or anything with its ``len``, ``epoch(e)`` and ``local_batch`` (pairs streamed
            from shards: :class:`~sslpoison.data.shards.StreamBatches`).
        cfg: the optimizer, schedule and loop settings.
        seed: seeds the global RNG (used by kornia augmentation) at the start of a fresh run;
            a resumed run restores the RNG state saved in the checkpoint instead. Either way
            the global RNG is put back as it was when training ends.
        checkpoint_dir: where checkpoints go; a complete one there is resumed from.
        desc: label of the progress bar.
        on_epoch_end: callbacks ``(epoch, mean_loss)`` run after each epoch's checkpoint
            (and the active tracker's, :mod:`sslpoison.train.tracker`, when there is one).

    Returns: per-epoch losses and throughput. ``task`` holds the trained weights.
    """
    with seeded(device=next(task.parameters()).device):
        return _train(task, data, cfg, seed, checkpoint_dir, desc, on_epoch_end)


def _train(
    task: nn.Module,
    data: TensorBatches | Any,
    cfg: TrainConfig,
    seed: int,
    checkpoint_dir: str | Path | None,
    desc: str,
    on_epoch_end: Sequence[EpochCallback],
) -> FitResult:
    """:func:`fit`, in a random state of its own."""
    device = next(task.parameters()).device
    on_epoch_end = [*on_epoch_end, *epoch_loggers(desc)]
    if cfg.channels_last:
        task.to(memory_format=torch.channels_last)
    opt = build_optimizer(task, cfg.optimizer)
    model: nn.Module = task
    if dist.is_distributed():
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(task, device_ids=ids)
    steps_per_epoch = len(data)
    total = steps_per_epoch * cfg.epochs
    warmup = round(cfg.optimizer.warmup_epochs * steps_per_epoch)
    pairs = task.momentum_pairs() if hasattr(task, "momentum_pairs") else []
    momentum = getattr(task, "momentum", None)
    amp = explain_precision(cfg.amp, cfg.amp_cpu, device) == "bf16"
    result = FitResult(precision="bf16" if amp else "fp32")
    start_epoch = 0
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    loaded = load_checkpoint(ckpt) if ckpt is not None else None
    if loaded is not None:
        done, state = loaded
        task.load_state_dict(state["task"])
        load_optimizer(opt, state["optimizer"])
        set_rng_state(state["rng"])
        result.losses = list(state["losses"])
        start_epoch = done
        result.resumed_from = done
        log.info("%s: resumed from the checkpoint after epoch %d", desc, done)
    else:
        torch.manual_seed(seed + dist.rank())
    show = cfg.progress and dist.rank() == 0
    bar = tqdm(
        total=total,
        initial=start_epoch * steps_per_epoch,
        desc=desc,
        unit="step",
        disable=not (show and sys.stderr.isatty()),
        dynamic_ncols=True,
        leave=False,
    )
    task.train()
    t0 = time.perf_counter()
    seen = 0
    for epoch in range(start_epoch, cfg.epochs):
        running, count, t_epoch = 0.0, 0, time.perf_counter()
        for i, batch in enumerate(data.epoch(epoch)):
            step = epoch * steps_per_epoch + i
            for g in opt.param_groups:
                g["lr"] = cfg.optimizer.lr * lr_factor(step, total, warmup, cfg.optimizer)
            ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()
            with ctx:
                loss = model(*batch)
            if not torch.isfinite(loss):
                raise NumericsError(
                    f"{desc}: loss became {loss.item()} at epoch "
                    f"{epoch + 1}, step {i + 1}; lower the learning rate"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(task.parameters(), cfg.grad_clip)
            opt.step()
            if pairs and momentum is not None:
                ema_update(pairs, ema_momentum(momentum[0], momentum[1], step + 1, total))
            value = float(loss.detach())
            running += value
            count += 1
            seen += batch[0].shape[0] * dist.world_size()
            if bar.disable is False:
                rate = seen / max(1e-9, time.perf_counter() - t0)
                bar.set_postfix(loss=f"{value:.4f}", img_s=f"{rate:.0f}", refresh=False)
                bar.update(1)
        mean = float(dist.all_reduce_mean(torch.tensor(running / max(1, count))))
        result.losses.append(mean)
        if show and bar.disable:
            rate = count * data.local_batch * dist.world_size() / (time.perf_counter() - t_epoch)
            log.info(
                "%s: epoch %d/%d loss %.4f (%.0f samples/s)",
                desc,
                epoch + 1,
                cfg.epochs,
                mean,
                rate,
            )
        last = epoch + 1 == cfg.epochs
        every = cfg.checkpoint_every
        if ckpt is not None and dist.rank() == 0 and (last or (every and (epoch + 1) % every == 0)):
            save_checkpoint(
                ckpt,
                epoch + 1,
                {
                    "task": task.state_dict(),
                    "optimizer": opt.state_dict(),
                    "rng": rng_state(),
                    "losses": result.losses,
                },
            )
        dist.barrier()
        for callback in on_epoch_end:
            callback(epoch + 1, mean)
    bar.close()
    result.seconds = time.perf_counter() - t0
    result.steps = total
    result.samples_per_s = seen / max(1e-9, result.seconds)
    result.rng = rng_state()
    return result
