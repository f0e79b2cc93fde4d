"""DECREE: is this encoder backdoored? Invert the smallest trigger that collapses it.

Feng et al., "Detecting Backdoors in Pre-trained Encoders", CVPR 2023. No labels and no
downstream head: search for a trigger, a mask m (H×W, in [0, 1]) and a pattern p (C×H×W, in
[0, 1]), whose stamped images

    x' = (1 − m)·x + m·p

of a set of clean images all get (almost) the same embedding, while |m|_1 stays small:

    loss = −sim(f(x'_1), …, f(x'_B)) + λ·|m|_1,
    sim  = mean cosine similarity over the B(B − 1) ordered pairs of distinct images.

A backdoored encoder maps every stamped image near its target, so a trigger about the size of
the planted one suffices; a clean encoder only collapses when the mask hides most of the
image. The verdict uses the smallest |m|_1 among the steps whose batch similarity exceeded
the success level (0.99), relative to the image area H·W (DECREE's PL¹-norm): backdoored
when it is below ``threshold``.

Followed from DECREE's public code (``GiantSeaweed/DECREE``, ``main.py`` and ``utils.py``):

* mask and pattern as unbounded logits squashed by tanh into [0, 1] (here 0.5·(tanh z + 1)),
  both initialised uniformly at random (``--mask_init rand``), one mask shared by the
  channels; the stamp is applied to the raw image and the normalisation after it (here inside
  the encoder);
* the collapse term: the mean off-diagonal entry of the batch's cosine-similarity matrix;
* Adam, betas (0.5, 0.9), lr 0.5 (the launcher's setting; their schedule steps it down to 0.1
  and 0.05 after 30 and 50 epochs for CIFAR-10/STL-10 encoders, 200 and 500 for ImageNet/CLIP);
* λ adapted after every step in the manner of Neural Cleanse: it starts at 1e-3; more than 5
  consecutive successful steps (batch similarity > 0.99) multiply it by 5 (while below 1e5),
  more than 5 consecutive failed ones divide it by 5 (while at least λ_min: 1e-5 for
  CIFAR-10/STL-10 encoders, 1e-7 for ImageNet/CLIP ones); more than 10 consecutive successful
  steps with λ below λ_min put it back to 1e-3;
* the reported norm is the smallest mask L1 among the successful steps (the mask that step
  was computed with); none found means no trigger.

The decision threshold 0.1 on the PL¹-norm is the paper's; the public code writes out the raw
L1 only (the threshold does not appear there).

Differences, all ours:

* the engine's warm-up + cosine schedule (0.5 → 0.05 by default) instead of their two steps;
* a fixed number of epochs (``train.epochs``) instead of their up-to-1000 epochs with early
  stopping once the best norm stops improving: the best trigger is tracked either way, so a
  longer budget only lowers the norm further;
* the L1 term sums the H×W mask once; DECREE sums it over the three colour channels it is
  copied to (3·|m|_1 for RGB), so a λ here corresponds to 3λ there (the schedule adapts λ
  anyway). The relative norm |m|_1 / (H·W) is the same either way;
* under DDP the batch similarity that drives λ is averaged over ranks, so every rank keeps the
  same λ.

All of λ's state (value, counters), the best trigger so far and a per-step trace are buffers
of :class:`DecreeTask`, so the engine's checkpoints carry them and a resumed run continues the
schedule exactly.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from sslpoison.configbase import CountOrShare
from sslpoison.data.augment import to_float
from sslpoison.data.imageset import ImageSet
from sslpoison.detectors.base import Detection, DetectorConfig
from sslpoison.eval.rows import Metric
from sslpoison.train import dist
from sslpoison.train.engine import TensorBatches, TrainConfig, fit
from sslpoison.train.optim import OptimConfig
from sslpoison.utils import frozen, module_device

log = logging.getLogger(__name__)

#: Initial mask/pattern values are kept this far from 0 and 1, so their logits are finite.
_INIT_MARGIN = 1e-4
#: The per-epoch history in the record keeps at most this many epochs (evenly spread).
_HISTORY_POINTS = 50


def mean_pairwise_cosine(z: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over the B(B − 1) ordered pairs of distinct rows of ``z``.

    Shapes: z B×D (B ≥ 2) → scalar. Computed as (|Σ_i u_i|² − Σ_i |u_i|²) / (B(B − 1)) with
    u_i the L2-normalised rows, i.e. the mean off-diagonal entry of the cosine matrix without
    building it.
    """
    b = z.shape[0]
    if b < 2:
        raise ValueError(f"mean_pairwise_cosine: needs at least 2 rows, got {b}")
    u = F.normalize(z, dim=1)
    total = u.sum(0)
    return (total.pow(2).sum() - u.pow(2).sum()) / (b * (b - 1))


def squash(logit: torch.Tensor) -> torch.Tensor:
    """Unbounded logits → values in [0, 1]: 0.5·(tanh(z) + 1)."""
    return 0.5 * (torch.tanh(logit) + 1.0)


def unsquash(value: torch.Tensor) -> torch.Tensor:
    """The logits whose :func:`squash` is ``value`` (kept a hair inside (0, 1))."""
    v = value.clamp(_INIT_MARGIN, 1.0 - _INIT_MARGIN)
    return torch.atanh(2.0 * v - 1.0)


def stamp(images: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """(1 − m)·x + m·p. Shapes: images B×C×H×W, mask H×W, pattern C×H×W → B×C×H×W."""
    return (1.0 - mask) * images + mask * pattern


class DecreeTask(nn.Module):
    """Engine task: uint8 batch → stamped batch → embeddings → −sim + λ·|m|_1.

    Its only parameters are the mask logits (H×W) and the pattern logits (C×H×W). The encoder
    is held outside the module tree (not in the optimizer, the checkpoint or ``.to()``), kept
    in eval mode and must already be on the task's device and have ``requires_grad`` off.

    In training mode every forward also runs DECREE's bookkeeping on the batch's similarity
    (see the module docstring): the best successful trigger, then the λ update (the loss of
    that step used the λ from before it). Buffers: ``lam`` (λ, float64), ``counters``
    (successful streak, failed streak, successful steps with λ below λ_min), ``best_l1``
    (inf until a trigger succeeds), ``best_mask`` H×W, ``best_pattern`` C×H×W, ``trace``
    steps×3 (λ after the step, batch similarity, |m|_1; NaN for steps not run) and ``step``.

    Args:
        encoder: the suspect encoder (B×C×H×W float in [0, 1] → B×D).
        mask: H×W initial mask in [0, 1].
        pattern: C×H×W initial pattern in [0, 1].
        steps: rows of the trace (the run's optimizer steps).
        success: the batch similarity above which a trigger counts as successful.
        lambda_init, lambda_factor, patience, lambda_min, lambda_max: the λ schedule.
    """

    def __init__(
        self,
        encoder: nn.Module,
        mask: torch.Tensor,
        pattern: torch.Tensor,
        *,
        steps: int,
        success: float = 0.99,
        lambda_init: float = 1e-3,
        lambda_factor: float = 5.0,
        patience: int = 5,
        lambda_min: float = 1e-5,
        lambda_max: float = 1e5,
    ) -> None:
        super().__init__()
        if mask.dim() != 2 or pattern.dim() != 3 or pattern.shape[1:] != mask.shape:
            raise ValueError(
                f"DecreeTask: mask must be H×W and pattern C×H×W of the same H×W, got "
                f"{tuple(mask.shape)} and {tuple(pattern.shape)}"
            )
        self._frozen = (encoder.eval(),)
        self.mask_logit = nn.Parameter(unsquash(mask.float()))
        self.pattern_logit = nn.Parameter(unsquash(pattern.float()))
        self.success = success
        self.lambda_init = lambda_init
        self.lambda_factor = lambda_factor
        self.patience = patience
        self.lambda_min = lambda_min
        self.lambda_max = lambda_max
        self.register_buffer("lam", torch.tensor(lambda_init, dtype=torch.float64))
        self.register_buffer("counters", torch.zeros(3, dtype=torch.long))
        self.register_buffer("best_l1", torch.tensor(math.inf, dtype=torch.float64))
        self.register_buffer("best_mask", squash(self.mask_logit.detach()).clone())
        self.register_buffer("best_pattern", squash(self.pattern_logit.detach()).clone())
        self.register_buffer("trace", torch.full((steps, 3), math.nan, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @property
    def encoder(self) -> nn.Module:
        return self._frozen[0]

    def train(self, mode: bool = True) -> DecreeTask:
        super().train(mode)
        self.encoder.eval()  # the suspect's BatchNorm statistics never move
        return self

    def mask(self) -> torch.Tensor:
        """The current mask, H×W in [0, 1]."""
        return squash(self.mask_logit)

    def pattern(self) -> torch.Tensor:
        """The current pattern, C×H×W in [0, 1]."""
        return squash(self.pattern_logit)

    def forward(self, images: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
        m, p = self.mask(), self.pattern()
        z = self.encoder(stamp(to_float(images), m, p))
        with torch.autocast(z.device.type, enabled=False):
            sim = mean_pairwise_cosine(z.float())
            l1 = m.float().sum()
            loss = -sim + self.lam.float() * l1
        if self.training:
            self._bookkeeping(sim.detach(), l1.detach(), m.detach(), p.detach())
        return loss

    @torch.no_grad()
    def _bookkeeping(
        self, sim: torch.Tensor, l1: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor
    ) -> None:
        s = float(dist.all_reduce_mean(sim))
        norm = float(l1)
        ok = s > self.success
        if ok and norm < float(self.best_l1):
            self.best_l1.fill_(norm)
            self.best_mask.copy_(mask)
            self.best_pattern.copy_(pattern)
        lam = float(self.lam)
        up, down, low = (int(c) for c in self.counters.tolist())
        # Stuck at a tiny λ although the trigger works: start the schedule again.
        if ok and lam < self.lambda_min:
            low += 1
            if low > 2 * self.patience:
                lam, up, down = self.lambda_init, 0, 0
        else:
            low = 0
        up, down = (up + 1, 0) if ok else (0, down + 1)
        if up > self.patience:
            if lam < self.lambda_max:
                lam *= self.lambda_factor
            up = 0
        elif down > self.patience:
            if lam >= self.lambda_min:
                lam /= self.lambda_factor
            down = 0
        self.lam.fill_(lam)
        self.counters.copy_(torch.tensor([up, down, low]))
        i = int(self.step)
        if i < self.trace.shape[0]:
            self.trace[i] = torch.tensor([lam, s, norm], dtype=torch.float64)
        self.step += 1


def _decree_train() -> TrainConfig:
    # DECREE main.py: Adam, betas (0.5, 0.9), lr 0.5 (run_decree.py), batch 256 (main.py's
    # default). Their lr steps 0.5 → 0.1 → 0.05: a cosine to 0.05 here. Fixed budget, no
    # early stop (see the module docstring).
    return TrainConfig(
        epochs=100,
        batch_size=256,
        checkpoint_every=10,
        optimizer=OptimConfig(
            name="adam",
            lr=0.5,
            betas=(0.5, 0.9),
            weight_decay=0.0,
            exclude_bias_norm=False,
            schedule="cosine",
            final_lr_ratio=0.1,
        ),
    )


#: The inverted mask's L1 norm relative to the image area H·W (flagged below the threshold),
#: and in pixels.
PL1 = Metric("pl1", "PL1 norm")
NORM = Metric("norm", "L1", 1)


class DecreeConfig(DetectorConfig):
    """The ``detector:`` section for DECREE (see the module docstring).

    ``clean``: the clean, unlabelled images the inversion runs on (DECREE: 50 CIFAR-10 or 800
    STL-10 test images, a fifth of an ImageNet subset; 1000 here). ``threshold``: the
    relative-norm (PL¹) level below which the encoder is flagged (paper: 0.1).
    ``success_similarity``: the batch similarity above which a trigger counts as successful
    (0.99). ``lambda_init`` / ``lambda_factor`` / ``lambda_patience`` / ``lambda_min`` /
    ``lambda_max``: the λ schedule (1e-3, ×5 after more than 5 steps, floor 1e-5 — DECREE's
    CIFAR-10/STL-10 value, 1e-7 for ImageNet/CLIP encoders — cap 1e5). ``train``: Adam and
    the epoch budget.
    """

    name: Literal["decree"] = "decree"
    clean: CountOrShare = 1000
    threshold: float = Field(0.1, gt=0.0, le=1.0)
    success_similarity: float = Field(0.99, gt=0.0, lt=1.0)
    lambda_init: PositiveFloat = 1e-3
    lambda_factor: float = Field(5.0, gt=1.0)
    lambda_patience: PositiveInt = 5
    lambda_min: PositiveFloat = 1e-5
    lambda_max: PositiveFloat = 1e5
    train: TrainConfig = Field(default_factory=_decree_train)

    title: ClassVar[str] = "DECREE (Feng et al.)"
    metrics: ClassVar[tuple[Metric, ...]] = (PL1, NORM)

    @model_validator(mode="after")
    def _check(self) -> DecreeConfig:
        if not self.lambda_min <= self.lambda_init <= self.lambda_max:
            raise ValueError(
                f"lambda_init: must lie in [lambda_min, lambda_max] = [{self.lambda_min}, "
                f"{self.lambda_max}], got {self.lambda_init}"
            )
        if self.train.batch_size < 2:
            raise ValueError(
                f"train.batch_size: DECREE compares the images of a batch pairwise, so it "
                f"needs at least 2, got {self.train.batch_size}"
            )
        return self

    def numbers(self, detection: dict[str, Any]) -> dict[str, float]:
        return {NORM.name: detection["mask_l1"], PL1.name: detection["relative_norm"]}

    def detect(
        self,
        encoder: nn.Module,
        clean: ImageSet,
        *,
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
    ) -> Detection:
        return run_decree(encoder, clean, self, seed=seed, checkpoint_dir=checkpoint_dir)


@torch.no_grad()
def _collapse(
    encoder: nn.Module,
    images: torch.Tensor,
    mask: torch.Tensor | None,
    pattern: torch.Tensor | None,
    batch_size: int,
) -> float:
    """Mean pairwise cosine of the embeddings of all ``images`` (stamped when a mask is given)."""
    out = []
    for chunk in images.split(batch_size):
        x = to_float(chunk)
        if mask is not None and pattern is not None:
            x = stamp(x, mask, pattern)
        out.append(encoder(x).float())
    return float(mean_pairwise_cosine(torch.cat(out)))


def _history(trace: torch.Tensor, steps_per_epoch: int) -> dict[str, list[float]]:
    """Per-epoch λ (at the epoch's end), mean batch similarity and mean |m|_1, thinned to at
    most :data:`_HISTORY_POINTS` epochs (the last one always kept)."""
    epochs = trace.shape[0] // steps_per_epoch
    per = trace[: epochs * steps_per_epoch].view(epochs, steps_per_epoch, 3)
    done = [e for e in range(epochs) if not torch.isnan(per[e, :, 0]).any()]
    if len(done) > _HISTORY_POINTS:
        stride = math.ceil(len(done) / _HISTORY_POINTS)
        done = sorted({*done[::stride], done[-1]})
    return {
        "epochs": [e + 1 for e in done],
        "lambda": [float(per[e, -1, 0]) for e in done],
        "similarity": [round(float(per[e, :, 1].mean()), 6) for e in done],
        "mask_l1": [round(float(per[e, :, 2].mean()), 4) for e in done],
    }


def run_decree(
    encoder: nn.Module,
    clean: ImageSet,
    cfg: DecreeConfig,
    *,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
) -> Detection:
    """Invert DECREE's trigger for ``encoder`` on the ``clean`` images and judge it.

    The initial mask and pattern are uniform draws from ``seed``; the engine seeds its
    shuffling from ``seed`` too. ``encoder`` is left as given (weights, mode,
    ``requires_grad``) and stays on its device, where the optimisation runs.

    Returns: :class:`Detection` with ``score`` the relative norm |m|_1 / (H·W) of the best
    successful trigger (1.0 when none succeeded), ``flagged`` when a trigger succeeded and
    its relative norm is below ``cfg.threshold``, ``mask`` (H×W) and ``trigger`` (m·p,
    C×H×W) of that trigger (the last one when none succeeded), on the CPU, and the record
    ``{"trigger_found", "mask_l1", "relative_norm", "threshold", "image_area",
    "trigger_similarity", "clean_similarity", "final_lambda", "clean_images", "steps",
    "history"}``: ``mask_l1`` and ``relative_norm`` are those of the returned mask (so, when
    no trigger succeeded, of the last one, which the score ignores); ``trigger_similarity``
    and ``clean_similarity`` are the mean pairwise cosines over all clean images with and
    without the returned trigger; ``history`` holds per-epoch λ, similarity and |m|_1.

    Raises:
        ValueError: naming ``detector.train.batch_size`` when a batch is larger than the clean
            set (with ``drop_last``), or ``detector.train.drop_last`` when the last batch would
            hold a single image.
    """
    n = len(clean)
    bs = cfg.train.batch_size
    if cfg.train.drop_last and bs > n:
        raise ValueError(
            f"detector.train.batch_size: {bs} is larger than the {n} clean images (detector.clean)"
        )
    if not cfg.train.drop_last and n % bs == 1:
        raise ValueError(
            f"detector.train.drop_last: {n} images in batches of {bs} leave a last batch of "
            "one image, which has no pair to compare; set it to true or change the batch size"
        )
    _, channels, height, width = clean.images.shape
    g = torch.Generator().manual_seed(seed)
    mask0 = torch.rand(height, width, generator=g)
    pattern0 = torch.rand(channels, height, width, generator=g)
    device = module_device(encoder)
    images = clean.images.to(device)
    batches = TensorBatches(images, batch_size=bs, drop_last=cfg.train.drop_last, seed=seed)
    steps = len(batches) * cfg.train.epochs
    with frozen(encoder):
        task = DecreeTask(
            encoder,
            mask0,
            pattern0,
            steps=steps,
            success=cfg.success_similarity,
            lambda_init=cfg.lambda_init,
            lambda_factor=cfg.lambda_factor,
            patience=cfg.lambda_patience,
            lambda_min=cfg.lambda_min,
            lambda_max=cfg.lambda_max,
        ).to(device)
        result = fit(
            task, batches, cfg.train, seed=seed, checkpoint_dir=checkpoint_dir, desc="decree"
        )
        task.eval()
        found = bool(torch.isfinite(task.best_l1))
        if found:
            mask, pattern = task.best_mask.clone(), task.best_pattern.clone()
        else:
            mask, pattern = task.mask().detach(), task.pattern().detach()
        trigger_sim = _collapse(encoder, images, mask, pattern, bs)
        clean_sim = _collapse(encoder, images, None, None, bs)
    area = height * width
    l1 = float(task.best_l1) if found else float(mask.sum())
    relative = l1 / area
    score = relative if found else 1.0
    flagged = found and relative < cfg.threshold
    record: dict[str, Any] = {
        "trigger_found": found,
        "mask_l1": l1,
        "relative_norm": relative,
        "threshold": cfg.threshold,
        "image_area": area,
        "trigger_similarity": trigger_sim,
        "clean_similarity": clean_sim,
        "final_lambda": float(task.lam),
        "clean_images": n,
        "steps": int(task.step),
        "history": _history(task.trace.cpu(), len(batches)),
    }
    log.info(
        "decree: %s (relative norm %.4f, threshold %g; similarity %.4f with the trigger, "
        "%.4f without)",
        "backdoored" if flagged else "clean",
        relative,
        cfg.threshold,
        trigger_sim,
        clean_sim,
    )
    return Detection(
        score=score,
        flagged=flagged,
        record=record,
        trigger=(mask * pattern).cpu(),
        mask=mask.cpu(),
        fit=result,
    )


__all__ = [
    "DecreeConfig",
    "DecreeTask",
    "mean_pairwise_cosine",
    "run_decree",
    "squash",
    "stamp",
    "unsquash",
]
