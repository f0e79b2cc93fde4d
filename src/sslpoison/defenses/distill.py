"""CompRess distillation as a backdoor defense (Saha et al., CVPR 2022, Sec. 6).

CompRess (Koohpayegani, Tejankar, Pirsiavash, NeurIPS 2020) trains a student to reproduce how
the teacher *relates* an image to a bank of anchor images: for a query view x and K anchors,

    p_t = softmax(cos(t(x), T_j)_j / τ_t),   p_s = softmax(cos(s(x), S_j)_j / τ_s),
    loss = KL(p_t ‖ p_s)   (mean over the batch),

where T_j / S_j are the teacher's / student's L2-normalised embeddings of anchor j, held in
two FIFO queues filled with the embeddings of past batches. Saha et al. distil a poisoned
encoder this way on a small clean subset of the pre-training data: the student (random init)
learns the clean behaviour it sees, not the trigger's, and the false positives drop.

Variants (CompRess public code, ``UMBCvision/CompRess``):

* ``"2q"`` (``train_student.py``, the default there and here): two queues; the student's
  anchors come from a momentum (EMA, α 0.999) copy of the student, or, with
  ``momentum: null``, from the student itself (``train_student_without_momentum.py``).
* ``"1q"`` (``train_student_one_queue.py``): one queue of teacher anchors; the student gets a
  linear layer to the teacher's dimension (dropped afterwards) and is compared to them.

Defaults followed from that code: τ 0.04 for both networks, a queue of 128 000 (here capped
at the number of clean images), no projection head on the student (its pooled backbone
feature is compared; ``nn/compress_loss.py`` and ``train_student.py``), one view per image
seen by both networks made by a random resized crop and a horizontal flip only, SGD lr 0.01,
momentum 0.9, weight decay 1e-4 (on every parameter), batch 256, 130 epochs (their lr steps
×0.2 at epochs 90 and 120; a cosine schedule here). The public SSL-Backdoor repository holds
no defense code, so nothing there overrides these.

Ours, not CompRess's: the queues start filled with the (un-augmented) embeddings of a seeded
draw of clean images instead of random vectors, so no step compares against noise (with a
bank no larger than the clean set, CompRess's random entries would last a whole epoch).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import (
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from sslpoison.configbase import Config
from sslpoison.data.augment import ViewSpec, to_float, view_pipeline
from sslpoison.data.imageset import ImageSet
from sslpoison.defenses.base import (
    Defended,
    EncoderDefense,
    arch_of,
    check_batch,
    check_student_arch,
    make_student,
)
from sslpoison.eval.features import extract_features
from sslpoison.models.backbone import BackboneConfig
from sslpoison.ssl.moco import enqueue, gather_keys
from sslpoison.train.engine import TensorBatches, TrainConfig, fit
from sslpoison.train.optim import OptimConfig
from sslpoison.utils import frozen, seeded

log = logging.getLogger(__name__)


def compress_loss(
    student_q: torch.Tensor,
    teacher_q: torch.Tensor,
    student_bank: torch.Tensor,
    teacher_bank: torch.Tensor,
    temperature_s: float = 0.04,
    temperature_t: float = 0.04,
) -> torch.Tensor:
    """KL(p_teacher ‖ p_student) over the anchors of a memory bank (Koohpayegani et al., 2020).

    p_teacher(j | i) = softmax_j(cos(teacher_q_i, teacher_bank_j) / τ_t), p_student likewise
    with the student's query and bank at τ_s. Row j of both banks must embed the same anchor
    image. The 1q variant is ``student_bank = teacher_bank`` (the student's query then lives in
    the teacher's space). Everything is L2-normalised here and computed in at least float32
    (autocast is turned off: τ 0.04 makes logits too large for bf16); gradients flow to
    ``student_q`` only.

    Shapes: student_q B×Ds, teacher_q B×Dt, student_bank K×Ds, teacher_bank K×Dt.

    Returns: Σ_j p_t log(p_t / p_s), averaged over the B queries (a scalar).
    """
    if student_bank.shape[0] != teacher_bank.shape[0]:
        raise ValueError(
            f"compress_loss: banks differ in size ({student_bank.shape[0]} student, "
            f"{teacher_bank.shape[0]} teacher anchors)"
        )
    dtype = torch.promote_types(student_q.dtype, torch.float32)
    with torch.autocast(student_q.device.type, enabled=False):
        s = F.normalize(student_q.to(dtype), dim=1)
        t = F.normalize(teacher_q.detach().to(dtype), dim=1)
        sb = F.normalize(student_bank.detach().to(dtype), dim=1)
        tb = F.normalize(teacher_bank.detach().to(dtype), dim=1)
        log_ps = F.log_softmax(s @ sb.t() / temperature_s, dim=1)
        log_pt = F.log_softmax(t @ tb.t() / temperature_t, dim=1)
        return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True)


class DistillAugmentConfig(Config):
    """The one view both networks see: random resized crop (``crop_scale``), horizontal flip,
    optional colour jitter (strength ``jitter``, p 0.8; CompRess uses none)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip: bool = True
    jitter: NonNegativeFloat = 0.0

    @field_validator("crop_scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1] <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {list(v)}")
        return v

    def build(self, size: int, channels: int) -> nn.Module:
        """The kornia pipeline: B×C×H×W float in [0, 1] → B×C×size×size float in [0, 1]."""
        spec = ViewSpec(
            crop_scale=self.crop_scale,
            flip_p=0.5 if self.flip else 0.0,
            jitter=self.jitter,
            grayscale_p=0.0,
            blur_p=0.0,
        )
        return view_pipeline(spec, size, channels)


def _compress_train() -> TrainConfig:
    # CompRess train_student.py: SGD lr 0.01, momentum 0.9, wd 1e-4 on all parameters,
    # batch 256, 130 epochs (step decay there, cosine here).
    return TrainConfig(
        epochs=130,
        batch_size=256,
        optimizer=OptimConfig(
            name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, exclude_bias_norm=False
        ),
    )


class DistillConfig(EncoderDefense):
    """The ``defense:`` section for CompRess distillation (see the module docstring).

    ``student``: ``"random"`` (a fresh init of the teacher's architecture, as Saha et al.) or
    ``"teacher"`` (start from the suspect weights). ``student_arch``: a fresh student of
    another architecture (e.g. a ResNet distilled from a ViT; the banks hold each network's
    own features, so their widths may differ). ``variant``: ``"2q"`` or ``"1q"``.
    ``momentum``: EMA momentum of the student copy that fills the student's queue (2q only);
    ``null`` uses the student's own features. ``bank``: queue length K, capped at the number
    of clean images. ``temperature_student`` / ``temperature_teacher``: τ_s / τ_t.
    """

    name: Literal["distill"] = "distill"
    student: Literal["random", "teacher"] = "random"
    student_arch: BackboneConfig | None = None
    variant: Literal["2q", "1q"] = "2q"
    momentum: float | None = Field(0.999, ge=0.0, lt=1.0)
    bank: PositiveInt = 128_000
    temperature_student: PositiveFloat = 0.04
    temperature_teacher: PositiveFloat = 0.04
    augment: DistillAugmentConfig = Field(default_factory=DistillAugmentConfig)
    train: TrainConfig = Field(default_factory=_compress_train)

    @model_validator(mode="after")
    def _student_arch(self) -> DistillConfig:
        return check_student_arch(self)

    def apply(
        self,
        encoder: nn.Module,
        clean: ImageSet,
        *,
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
    ) -> Defended:
        return run_distill(encoder, clean, self, seed=seed, checkpoint_dir=checkpoint_dir)


class DistillTask(nn.Module):
    """Engine task: uint8 batch → one view → teacher and student embeddings → CompRess loss.

    The teacher is frozen (no gradient, always in eval mode) and held outside the module tree,
    so it is in neither the optimizer nor the checkpoint (a resume never overwrites it); it
    must already be on the task's device. The queues are buffers (``teacher_bank`` K×Dt,
    ``student_bank`` K×Ds or None in 1q, ``bank_ptr``), so checkpoints carry them. Each
    training step compares against the queues as they were before it, then writes the batch's
    normalised embeddings (all ranks' under DDP) at ``bank_ptr``, oldest first, wrapping.

    Args:
        student: the backbone being trained (B×C×H×W → B×Ds).
        teacher: the suspect encoder (B×C×H×W → B×Dt).
        augment: float view pipeline (see :meth:`DistillAugmentConfig.build`).
        teacher_bank: K×Dt initial teacher anchors.
        student_bank: K×Ds initial student anchors (2q), or None (1q).
        head: 1q only: Ds → Dt layer on the student's query.
        momentum: EMA momentum of the student copy filling ``student_bank`` (2q), or None.
        temperature_s, temperature_t: τ_s, τ_t.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        augment: nn.Module,
        teacher_bank: torch.Tensor,
        student_bank: torch.Tensor | None,
        head: nn.Module | None,
        momentum: float | None,
        temperature_s: float,
        temperature_t: float,
    ) -> None:
        super().__init__()
        self.student = student
        # Held outside the module tree: not in the optimizer, the checkpoint or ``.to()``.
        self._frozen = (teacher.requires_grad_(False).eval(),)
        self.augment = augment
        self.head = head
        self.temperature_s = temperature_s
        self.temperature_t = temperature_t
        self.student_key: nn.Module | None = None
        self.momentum: tuple[float, float] | None = None
        if student_bank is not None and momentum is not None:
            self.student_key = copy.deepcopy(student).requires_grad_(False)
            self.momentum = (momentum, momentum)
        self.register_buffer("teacher_bank", teacher_bank.clone())
        self.register_buffer("student_bank", None if student_bank is None else student_bank.clone())
        self.register_buffer("bank_ptr", torch.zeros(1, dtype=torch.long))

    @property
    def teacher(self) -> nn.Module:
        return self._frozen[0]

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [] if self.student_key is None else [(self.student, self.student_key)]

    def train(self, mode: bool = True) -> DistillTask:
        super().train(mode)
        self.teacher.eval()  # the teacher's BatchNorm statistics never move
        return self

    @torch.no_grad()
    def _push(self, teacher_z: torch.Tensor, student_z: torch.Tensor | None) -> None:
        teacher_z = gather_keys(F.normalize(teacher_z.float(), dim=1))
        if student_z is not None and self.student_bank is not None:
            student_z = gather_keys(F.normalize(student_z.float(), dim=1))
            enqueue(self.student_bank, self.bank_ptr.clone(), student_z)
        enqueue(self.teacher_bank, self.bank_ptr, teacher_z)

    def forward(self, images: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
        x = self.augment(to_float(images))
        with torch.no_grad():
            t = self.teacher(x)
        s = self.student(x)
        if self.head is not None:
            s = self.head(s)
        teacher_bank = self.teacher_bank.clone()  # the update below must not touch backward's
        student_bank = teacher_bank if self.student_bank is None else self.student_bank.clone()
        loss = compress_loss(
            s, t, student_bank, teacher_bank, self.temperature_s, self.temperature_t
        )
        if self.training:
            key = None
            if self.student_bank is not None:
                if self.student_key is not None:
                    with torch.no_grad():
                        key = self.student_key(x)
                else:
                    key = s.detach()
            self._push(t, key)
        return loss


def _seeded_linear(d_in: int, d_out: int, seed: int) -> nn.Linear:
    with seeded(seed):
        return nn.Linear(d_in, d_out)


def run_distill(
    teacher: nn.Module,
    clean: ImageSet,
    cfg: DistillConfig,
    *,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
) -> Defended:
    """Distil ``teacher`` into a student on the ``clean`` images (CompRess, see module doc).

    ``teacher`` is left as given (weights, mode, ``requires_grad``). The student starts as
    ``cfg.student`` says (random init from ``seed``, see :func:`make_student`, or the teacher's
    weights) and comes back as the backbone alone (the 1q layer is dropped), in eval mode, on
    the teacher's device.

    Returns: :class:`Defended` with the record ``{"student_init", "variant", "bank",
    "clean_images", "student_dim", "teacher_dim"}``.

    Raises:
        ValueError: naming ``defense.train.batch_size`` when a batch is larger than the clean
            set (with ``drop_last``).
    """
    n = len(clean)
    check_batch(cfg, n)
    device = next(teacher.parameters()).device
    with frozen(teacher):
        student = make_student(teacher, cfg.student, seed, cfg.student_arch, clean.image_size).to(
            device
        )
        images = clean.images.to(device)
        k = min(cfg.bank, n)
        pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]
        anchors = images[pick.to(device)]
        teacher_bank = F.normalize(extract_features(teacher, anchors, device=device), dim=1)
        d_t = teacher_bank.shape[1]
        student_bank = None
        head = None
        if cfg.variant == "2q":
            student_bank = F.normalize(extract_features(student, anchors, device=device), dim=1)
            d_s = student_bank.shape[1]
        else:
            d_s = extract_features(student, anchors[:1], device=device).shape[1]
            head = _seeded_linear(d_s, d_t, seed).to(device)
        task = DistillTask(
            student,
            teacher,
            cfg.augment.build(clean.image_size, clean.channels),
            teacher_bank,
            student_bank,
            head,
            cfg.momentum,
            cfg.temperature_student,
            cfg.temperature_teacher,
        ).to(device)
        batches = TensorBatches(
            images, batch_size=cfg.train.batch_size, drop_last=cfg.train.drop_last, seed=seed
        )
        result = fit(
            task, batches, cfg.train, seed=seed, checkpoint_dir=checkpoint_dir, desc="distill"
        )
    record: dict[str, Any] = {
        "student_init": cfg.student,
        "student_arch": arch_of(student),
        "variant": cfg.variant,
        "bank": k,
        "clean_images": n,
        "student_dim": d_s,
        "teacher_dim": d_t,
    }
    return Defended(student.eval(), result, record)


__all__ = ["DistillAugmentConfig", "DistillConfig", "DistillTask", "compress_loss", "run_distill"]
