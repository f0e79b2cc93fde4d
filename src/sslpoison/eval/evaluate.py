"""The evaluation of a run's encoders on its downstream data.

With an attacked encoder, the backdoor evaluation (:mod:`.backdoor`: CA, BA, ASR[, FP] of
every encoder); without one, the encoder's own evaluation next to its baselines
(:mod:`.encoder`). When the CLIP models cover the clean and any attacked encoder (CLIP
pre-training of the clean and of any poisoned set), the zero-shot evaluation of every CLIP
model too (:mod:`.zero_shot`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn as nn

from sslpoison.data.imageset import ImageSet
from sslpoison.eval.backdoor import evaluate_backdoor
from sslpoison.eval.downstream import Downstream, EvalConfig
from sslpoison.eval.encoder import evaluate_encoder
from sslpoison.eval.features import FeatureCache
from sslpoison.eval.rows import ATTACKED, CLEAN, Evaluation
from sslpoison.eval.zero_shot import evaluate_zero_shot
from sslpoison.models.text import Tokenizer
from sslpoison.poisoning import BackdoorTarget, Filtered, PoisonedSet, Sanitized
from sslpoison.ssl.clip import CLIP


class Sanitizer(Protocol):
    """A downstream-data defense as the evaluation sees it (a
    :class:`~sslpoison.defenses.base.DownstreamDataDefense`, which sits above it)."""

    @property
    def name(self) -> str: ...

    def reference_count(self) -> int | float | None: ...

    def relabels(self) -> bool: ...

    def sanitize(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Sanitized: ...


@dataclass
class Outcome:
    """What the evaluation sees once every training stage has run (and what an attack's
    :meth:`~sslpoison.attacks.AttackConfig.measure` sees).

    Attributes:
        data: the clean pre-training set (its ``name`` is the dataset's).
        poisoned: the poisoned pre-training set (pre-training data attacks), else None.
        downstream: the clean downstream data; ``poisoned_downstream`` the poisoned labelled
            train sets by dataset (downstream data attacks), else empty.
        encoders: every evaluated encoder by role (``clean``, ``attacked``, defenses).
        clips: the CLIP models by role (CLIP pre-training, and the defenses that pre-train
            CLIP again), else empty.
        cfg: the evaluation's settings (probes, ...); ``features`` its feature cache.
        filtered: what each pre-training-data defense kept and scored, by its name.
        downstream_defenses: the countermeasures a downstream-data attack is measured
            against (the experiment's downstream-data defenses, in order).
    """

    data: ImageSet
    poisoned: PoisonedSet | None
    downstream: Downstream
    poisoned_downstream: dict[str, PoisonedSet]
    encoders: dict[str, nn.Module]
    clips: dict[str, tuple[CLIP, Tokenizer]]
    cfg: EvalConfig
    features: FeatureCache
    seed: int = 0
    filtered: dict[str, Filtered] = field(default_factory=dict)
    downstream_defenses: list[Sanitizer] = field(default_factory=list)


def evaluate(
    outcome: Outcome,
    targets: list[BackdoorTarget],
    *,
    random_init: Callable[[], nn.Module],
    count_fp: bool = False,
) -> Evaluation:
    """Rows (and confusion matrices, for a backdoor evaluation) of ``outcome.encoders``
    (``clean`` first, then ``attacked`` and defenses, if any), with ``targets``.
    ``random_init`` builds the untrained baseline, when there is no attacked encoder (the
    other encoders are then those pre-trained again on a filtered clean set). Zero-shot rows
    for every CLIP model, when there is one for the clean and any attacked encoder."""
    encoders, clips, downstream = outcome.encoders, outcome.clips, outcome.downstream
    cfg, cache, seed = outcome.cfg, outcome.features, outcome.seed
    if ATTACKED in encoders:
        evaluation = evaluate_backdoor(
            encoders, targets, downstream, cfg, cache=cache, seed=seed, count_fp=count_fp
        )
    else:
        rows = evaluate_encoder(
            encoders[CLEAN], downstream, cfg, cache=cache, random_init=random_init(), seed=seed
        )
        for role, encoder in encoders.items():  # pre-trained again on a filtered clean set
            if role != CLEAN:
                rows += evaluate_encoder(
                    encoder, downstream, cfg, cache=cache, seed=seed, role=role
                )
        evaluation = Evaluation(rows)
    if clips and set(encoders) & {CLEAN, ATTACKED} <= set(clips):
        evaluation.rows += evaluate_zero_shot(
            clips, targets, downstream, seed=seed, other_triggers=cfg.other_triggers
        )
    return evaluation


__all__ = ["Outcome", "Sanitizer", "evaluate"]
