"""What every attack is: a frozen config that strikes at one hook point of the pipeline.

The three hook points (docs/design.md, "The data flow"), one base class each:

* :class:`PretrainingDataAttack` — ``poison_pretraining(data, downstream, seed) ->
  PoisonedSet``: edits the pre-training set; the same pre-training then runs on the poisoned
  set (SSL-Backdoor, CLIP poisoning).
* :class:`EncoderAttack` — ``run(encoder, shadow, targets, *, seed, checkpoint_dir) ->
  Attacked``: turns the clean pre-trained encoder into an attacked one (BadEncoder), after
  ``prepare_targets`` has completed the targets from the clean encoder (its references).
* :class:`DownstreamDataAttack` — ``poison_downstream(encoder, train, seed) -> PoisonedSet``:
  edits a downstream dataset's labelled train set, knowing the encoder the victim will use.

(The data hooks are not both called ``poison``: SSL-Backdoor's and the CLIP backdoor's
configs have a ``poison`` key, the amount they poison.)

The hook points (:class:`~sslpoison.hooks.Hook`) are shared with the defenses
(:mod:`sslpoison.defenses.base`). Every attack also carries, so that the pipeline never asks
which attack it runs:

* :meth:`AttackConfig.check` — its checks of the experiment around it (at config load time),
  which it sees as a :class:`~sslpoison.hooks.CheckContext`;
* :meth:`AttackConfig.backdoor_targets` — the (dataset, class, trigger) the evaluation
  measures ASR for; ``reports_fp`` — whether it also counts FP (Saha et al.);
* :meth:`AttackConfig.measure` — the metrics (and files) it adds to the evaluation's;
* :attr:`AttackConfig.title`, :attr:`AttackConfig.metrics`,
  :attr:`AttackConfig.summary_columns` and :attr:`AttackConfig.headline` — how reports name
  it, head its numbers and draw the ones it is judged by.

An attack is listed once, in :data:`sslpoison.attacks.ATTACKS`, under its ``name``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch.nn as nn

from sslpoison.configbase import Config
from sslpoison.data.imageset import ImageSet
from sslpoison.eval.downstream import Downstream
from sslpoison.eval.evaluate import Outcome
from sslpoison.eval.rows import Headline, Metric
from sslpoison.hooks import CheckContext, Hook, Measured
from sslpoison.poisoning import BackdoorTarget, PoisonedSet
from sslpoison.train.engine import FitResult


@dataclass
class Attacked:
    """What an encoder attack returns: the attacked encoder (N×C×H×W float in [0, 1] →
    N×D, eval mode, on the clean encoder's device), the engine's result and a JSON-able
    record for the stage (loss terms per epoch, ...)."""

    encoder: nn.Module
    fit: FitResult | None
    record: dict[str, Any] = field(default_factory=dict)


class AttackConfig(Config, abc.ABC):
    """Base of every ``attack:`` section; a subclass adds ``name: Literal[...]`` and derives
    from the base class of its hook point, which sets :attr:`hook`."""

    #: Where the attack strikes (set by the hook point's base class).
    hook: ClassVar[Hook]
    #: Whether the evaluation counts FP: triggered non-target test images called the target.
    reports_fp: ClassVar[bool] = False
    #: How reports name the attack (its ``name`` when empty).
    title: ClassVar[str] = ""
    #: The metrics of the rows :meth:`measure` adds, in the order tables show them.
    metrics: ClassVar[tuple[Metric, ...]] = ()
    #: Those a run's ``summary.md`` shows as columns, per dataset, victim and countermeasure.
    summary_columns: ClassVar[tuple[Metric, ...]] = ()
    #: The numbers it is judged by, drawn first in the HTML report (None: no figure).
    headline: ClassVar[Headline | None] = None

    def check(self, context: CheckContext) -> None:
        """Raise ``ValueError`` naming the key when the experiment around it (``context``:
        the facts a check may judge) cannot run this attack (called when the config is
        loaded). None by default."""

    def backdoor_targets(
        self, data: ImageSet, downstream: Downstream, seed: int = 0
    ) -> list[BackdoorTarget]:
        """The targets whose ASR the evaluation measures (none by default). Called before
        any training, so that an impossible target fails at once (``ValueError`` naming the
        key)."""
        return []

    def measure(self, outcome: Outcome) -> Measured:
        """Metrics this attack adds to the evaluation's (none by default)."""
        return Measured()


class PretrainingDataAttack(AttackConfig, abc.ABC):
    """An attack on the pre-training data: the pipeline pre-trains on its poisoned set."""

    hook: ClassVar[Hook] = Hook.PRETRAINING_DATA

    def measured_on(self, pretraining: str) -> str:
        """The labelled dataset the attack is measured on (its target and trial labels are
        that dataset's classes): by default the pre-training dataset ``pretraining``."""
        return pretraining

    def check(self, context: CheckContext) -> None:
        if context.encoder_given:
            raise ValueError(
                f"encoder: {self.name} poisons the pre-training data, so it needs the "
                "pre-training stage; remove encoder: (a given encoder is already trained)"
            )
        measured = self.measured_on(context.pretraining)
        if measured not in context.eval_datasets:
            raise ValueError(
                f"eval.datasets: {self.name} is measured on {measured!r}, which is not in "
                f"{list(context.eval_datasets)}"
            )

    @abc.abstractmethod
    def poison_pretraining(
        self, data: ImageSet, downstream: Downstream, seed: int = 0
    ) -> PoisonedSet:
        """The poisoned pre-training set (``data`` is left as it was; ``downstream`` holds
        the dataset the attack is measured on). Raises ``ValueError`` naming the key."""


class EncoderAttack(AttackConfig, abc.ABC):
    """An attack on a pre-trained encoder, with unlabelled *shadow* images."""

    hook: ClassVar[Hook] = Hook.ENCODER

    @abc.abstractmethod
    def shadow_subset(self, data: ImageSet, seed: int = 0) -> ImageSet:
        """The attacker's shadow images, drawn from the pre-training set ``data``."""

    def prepare_targets(
        self,
        encoder: nn.Module,
        shadow: ImageSet,
        targets: list[BackdoorTarget],
        seed: int = 0,
    ) -> list[BackdoorTarget]:
        """``targets`` completed with what the attack derives from the clean ``encoder`` and
        the ``shadow`` images before it runs (BadEncoder: its reference images); what they
        record enters the attack stage's cache key. Unchanged by default."""
        return targets

    @abc.abstractmethod
    def run(
        self,
        encoder: nn.Module,
        shadow: ImageSet,
        targets: list[BackdoorTarget],
        *,
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
    ) -> Attacked:
        """Attack ``encoder`` (changed in place) with the ``shadow`` images so that each of
        ``targets`` (from :meth:`backdoor_targets`) is reached; resume from
        ``checkpoint_dir``."""


class DownstreamDataAttack(AttackConfig, abc.ABC):
    """An attack on a downstream task's labelled training data (the encoder stays clean)."""

    hook: ClassVar[Hook] = Hook.DOWNSTREAM_DATA

    @abc.abstractmethod
    def poison_downstream(self, encoder: nn.Module, train: ImageSet, seed: int = 0) -> PoisonedSet:
        """The poisoned copy of one downstream dataset's labelled ``train`` set (left as it
        was), for a victim who trains a probe on ``encoder``'s features."""

    def poison_train_sets(
        self, encoder: nn.Module, downstream: Downstream, seed: int = 0,
        pretraining: ImageSet | None = None,
    ) -> dict[str, PoisonedSet]:  # fmt: skip
        """:meth:`poison_downstream` of every dataset's labelled train set, by dataset
        (``pretraining``: the pre-training images, for attacks that draw on them)."""
        return {
            name: self.poison_downstream(encoder, downstream.train(name), seed)
            for name in downstream.datasets
        }


def strikes(attack: AttackConfig | None, hook: Hook) -> bool:
    """Whether ``attack`` (None: no attack) strikes at ``hook``."""
    return attack is not None and attack.hook is hook


__all__ = [
    "AttackConfig",
    "Attacked",
    "DownstreamDataAttack",
    "EncoderAttack",
    "Hook",
    "Measured",
    "Outcome",
    "PretrainingDataAttack",
    "strikes",
]
