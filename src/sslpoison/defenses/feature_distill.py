"""Plain feature distillation: a student learns to output the suspect encoder's features.

The simplest distillation baseline of MIMIC's comparison: for one augmented view x of a clean
image, the student s is trained to point where the teacher t points,

    loss = 1 − cos(s(x), t(x))   (mean over the batch; t frozen),

on the pooled backbone features (no heads). With ``student: random`` (the default) the
student inherits none of the teacher's weights, only what the clean images reveal of its
function; ``student: teacher`` starts from the suspect weights ("plain distillation" from the
teacher). ``student_arch`` makes the student a fresh encoder of another architecture (a
ResNet distilled from a ViT); when its features are narrower or wider than the teacher's, a
linear map (trained with it, dropped afterwards) takes them to the teacher's width. MIMIC
(:mod:`.mimic`) adds the student's own contrastive loss and attention maps to this clone
term.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, model_validator

from sslpoison.data.augment import to_float
from sslpoison.data.imageset import ImageSet
from sslpoison.defenses.base import (
    Defended,
    EncoderDefense,
    arch_of,
    check_batch,
    check_student_arch,
    make_student,
    student_training,
    width_adapter,
)
from sslpoison.defenses.distill import DistillAugmentConfig
from sslpoison.models.backbone import BackboneConfig
from sslpoison.train.engine import TensorBatches, TrainConfig, fit
from sslpoison.utils import frozen


def clone_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 − cos(student_i, teacher_i), averaged over the batch (B×D each; at least float32)."""
    dtype = torch.promote_types(student.dtype, torch.float32)
    s, t = student.to(dtype), teacher.detach().to(dtype)
    return 1.0 - F.cosine_similarity(s, t, dim=1).mean()


class FeatureDistillTask(nn.Module):
    """Engine task: uint8 batch → one view → :func:`clone_loss` of student and teacher.

    The teacher is held outside the module tree (not optimised, not checkpointed, never in
    train mode). Shapes: images B×C×H×W uint8; features B×D.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        augment: nn.Module,
        head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.augment = augment
        self.head = head
        self._frozen = (teacher,)

    def train(self, mode: bool = True) -> FeatureDistillTask:
        super().train(mode)
        self._frozen[0].eval()
        return self

    def forward(self, images: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
        x = self.augment(to_float(images))
        with torch.no_grad():
            t = self._frozen[0](x)
        s = self.student(x)
        return clone_loss(s if self.head is None else self.head(s), t)


class FeatureDistillConfig(EncoderDefense):
    """The ``defense:`` section for plain feature distillation (see the module docstring)."""

    name: Literal["feature_distill"] = "feature_distill"
    student: Literal["random", "teacher"] = "random"
    student_arch: BackboneConfig | None = None
    augment: DistillAugmentConfig = Field(default_factory=DistillAugmentConfig)
    train: TrainConfig = Field(default_factory=student_training)

    @model_validator(mode="after")
    def _student_arch(self) -> FeatureDistillConfig:
        return check_student_arch(self)

    def apply(
        self,
        encoder: nn.Module,
        clean: ImageSet,
        *,
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
    ) -> Defended:
        check_batch(self, len(clean))
        device = next(encoder.parameters()).device
        with frozen(encoder):
            student = make_student(
                encoder, self.student, seed, self.student_arch, clean.image_size
            ).to(device)
            head = width_adapter(student, encoder, clean, seed)
            task = FeatureDistillTask(
                student, encoder, self.augment.build(clean.image_size, clean.channels), head
            ).to(device)
            batches = TensorBatches(
                clean.images.to(device),
                batch_size=self.train.batch_size,
                drop_last=self.train.drop_last,
                seed=seed,
            )
            result = fit(
                task, batches, self.train, seed=seed, checkpoint_dir=checkpoint_dir, desc=self.name
            )
        record = {"student_init": self.student, "student_arch": arch_of(student)}
        return Defended(student.eval(), result, record)


__all__ = ["FeatureDistillConfig", "FeatureDistillTask", "clone_loss"]
