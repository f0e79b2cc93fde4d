"""Detectors: decide whether a suspect encoder is backdoored, one file each.

The interface (:mod:`.base`): a detector is a frozen config (a :class:`DetectorConfig`, with
``name``, ``clean`` — the count or share of clean, unlabelled images the defender holds — and
``train``) whose ``detect(encoder, clean, *, seed, checkpoint_dir) -> Detection`` runs through
the one engine and returns a score, the verdict (``flagged``), a JSON-able record and, for
trigger-inversion detectors, the inverted trigger (``trigger`` C×H×W, ``mask`` H×W). The
encoder is left as it was given.

* ``decree`` — DECREE (Feng et al., CVPR 2023): invert the smallest trigger that collapses
  the encoder's embeddings of clean images; flag when its L1 norm relative to the image area
  is below 0.1: :mod:`.decree`.

An experiment's ``detectors:`` entries are each one of :data:`DETECTORS`, picked by its
``name``; a detector registered here is a valid entry at once.
"""

from sslpoison.detectors.base import Detection, DetectorConfig
from sslpoison.detectors.decree import DecreeConfig, DecreeTask, mean_pairwise_cosine, run_decree

#: Every detector by its ``name`` in an experiment's ``detectors:``: the only list of them.
DETECTORS: dict[str, type[DetectorConfig]] = {"decree": DecreeConfig}

__all__ = [
    "DETECTORS",
    "DecreeConfig",
    "DecreeTask",
    "Detection",
    "DetectorConfig",
    "mean_pairwise_cosine",
    "run_decree",
]
