"""Defenses, one file each, by where they act in the pipeline (:mod:`.base`, docs/design.md).

* pre-training data — ``filter(data, suspect, seed) -> Filtered``, then pre-training again on
  what is kept: ``patchsearch`` (:mod:`.patchsearch`), ``spectral`` (:mod:`.spectral`),
  ``activation_clustering`` (:mod:`.activation_clustering`); ``safeclip`` trains the CLIP
  model itself (:mod:`.safeclip`).
* encoder — ``apply(encoder, clean, *, seed, checkpoint_dir) -> Defended``: ``mimic``
  (:mod:`.mimic`), ``distill`` (CompRess, the defense of Saha et al., :mod:`.distill`),
  ``feature_distill`` (:mod:`.feature_distill`), ``finetune`` and ``fineprune``
  (:mod:`.finetune`). Students of distillation defenses come from :func:`make_student`.
* downstream data — ``sanitize(features, labels, reference) -> Sanitized``, run by the victim
  of a downstream-data attack before it trains its head: ``sphere``, ``slab``, ``knn``
  (:mod:`.sanitizers`).

An experiment's ``defenses:`` entries are each one of :data:`DEFENSES`, picked by its
``name``; a defense registered here (``DEFENSES["mine"] = MyDefenseConfig``) is a valid entry
at once.
"""

from sslpoison.defenses.activation_clustering import ActivationClusteringConfig
from sslpoison.defenses.base import (
    Defended,
    DefenseConfig,
    DownstreamDataDefense,
    EncoderDefense,
    FilterContext,
    PretrainingDataDefense,
    Sanitized,
    make_student,
    reinitialise,
)
from sslpoison.defenses.distill import DistillConfig, compress_loss, run_distill
from sslpoison.defenses.feature_distill import FeatureDistillConfig
from sslpoison.defenses.finetune import FinePruneConfig, FinetuneConfig
from sslpoison.defenses.mimic import MimicConfig
from sslpoison.defenses.patchsearch import PatchSearchConfig
from sslpoison.defenses.safeclip import SafeCLIPConfig
from sslpoison.defenses.sanitizers import KNNSanitizerConfig, SlabConfig, SphereConfig
from sslpoison.defenses.spectral import SpectralSignaturesConfig

#: Every defense by its ``name`` in an experiment's ``defenses:``: the only list of them.
DEFENSES: dict[str, type[DefenseConfig]] = {
    "patchsearch": PatchSearchConfig,
    "spectral": SpectralSignaturesConfig,
    "activation_clustering": ActivationClusteringConfig,
    "safeclip": SafeCLIPConfig,
    "mimic": MimicConfig,
    "distill": DistillConfig,
    "feature_distill": FeatureDistillConfig,
    "finetune": FinetuneConfig,
    "fineprune": FinePruneConfig,
    "sphere": SphereConfig,
    "slab": SlabConfig,
    "knn": KNNSanitizerConfig,
}

__all__ = [
    "DEFENSES",
    "ActivationClusteringConfig",
    "Defended",
    "DefenseConfig",
    "DistillConfig",
    "DownstreamDataDefense",
    "EncoderDefense",
    "FeatureDistillConfig",
    "FilterContext",
    "FinePruneConfig",
    "FinetuneConfig",
    "KNNSanitizerConfig",
    "MimicConfig",
    "PatchSearchConfig",
    "PretrainingDataDefense",
    "SafeCLIPConfig",
    "Sanitized",
    "SlabConfig",
    "SpectralSignaturesConfig",
    "SphereConfig",
    "compress_loss",
    "make_student",
    "reinitialise",
    "run_distill",
]
