"""Defenses: turn a suspect encoder into one without its backdoor, one file each.

The interface (:mod:`.base`): a defense is a frozen config (a :class:`DefenseConfig`, with
``name``, ``clean`` — the count or share of clean pre-training images the defender holds —
and ``train``) whose ``apply(encoder, clean, *, seed, checkpoint_dir) -> Defended`` trains
through the one engine and returns the defended encoder (same input/output as the suspect
one), the engine's result and a JSON-able record. Students of distillation defenses come from
:func:`make_student` (a seeded :func:`reinitialise` of the teacher, or a copy of it).

* ``mimic`` — MIMIC, mutual-information-guided distillation into a random-init student:
  :mod:`.mimic`.
* ``distill`` — CompRess knowledge distillation, the defense of Saha et al. (CVPR 2022):
  :mod:`.distill`.
* ``feature_distill`` — plain feature distillation (1 − cos to the teacher's features):
  :mod:`.feature_distill`.
* ``finetune`` — self-supervised fine-tuning of the suspect weights; ``fineprune`` —
  Fine-Pruning (prune the last stage's dormant channels, then fine-tune): :mod:`.finetune`.
"""

from sslpoison.defenses.base import Defended, DefenseConfig, make_student, reinitialise
from sslpoison.defenses.distill import DistillConfig, compress_loss, run_distill
from sslpoison.defenses.feature_distill import FeatureDistillConfig
from sslpoison.defenses.finetune import FinePruneConfig, FinetuneConfig
from sslpoison.defenses.mimic import MimicConfig

#: Every defense by its ``defense.name`` in an experiment config.
DEFENSES: dict[str, type[DefenseConfig]] = {
    "mimic": MimicConfig,
    "distill": DistillConfig,
    "feature_distill": FeatureDistillConfig,
    "finetune": FinetuneConfig,
    "fineprune": FinePruneConfig,
}

#: The type of one entry of an experiment's ``defenses:`` list (discriminated by ``name``).
DefenseSpec = MimicConfig | DistillConfig | FeatureDistillConfig | FinetuneConfig | FinePruneConfig

__all__ = [
    "DEFENSES",
    "Defended",
    "DefenseConfig",
    "DefenseSpec",
    "DistillConfig",
    "FeatureDistillConfig",
    "FinePruneConfig",
    "FinetuneConfig",
    "MimicConfig",
    "compress_loss",
    "make_student",
    "reinitialise",
    "run_distill",
]
