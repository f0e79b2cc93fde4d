"""Attacks, one file each, by where they strike the pipeline (:mod:`.base`, docs/design.md).

* pre-training data — ``poison_pretraining(data, downstream, seed) -> PoisonedSet``:
  ``ssl_backdoor`` (:mod:`.ssl_backdoor`); ``clip_backdoor`` and ``clip_targeted``, on
  image–caption pairs (:mod:`.clip_poison`).
* encoder — ``run(encoder, shadow, targets, ...) -> Attacked``: ``badencoder``
  (:mod:`.badencoder`).
* downstream data — ``poison_downstream(encoder, train, seed) -> PoisonedSet``: the
  indiscriminate attacks of Lu, Yang, Kamath, Yu (SaTML 2024) (:mod:`.indiscriminate`):
  ``label_flip`` (:mod:`.label_flip`), ``gc`` (:mod:`.gradient_canceling`), ``tgda``
  (:mod:`.tgda`), ``feature_targeted`` (:mod:`.feature_targeted`).

Pieces several attacks share have their own modules: :mod:`.targets` (an encoder attack's
backdoor targets and their reference images), :mod:`.patching` (patching a draw of
pre-training images), :mod:`.target` (the GradPC target head of the indiscriminate attacks).

An experiment's ``attack:`` section is one of :data:`ATTACKS`, picked by its ``name``; an
attack registered here (``ATTACKS["mine"] = MyAttackConfig``) is a valid ``attack:`` at once.
"""

from sslpoison.attacks.badencoder import BadEncoderConfig, run_badencoder
from sslpoison.attacks.base import (
    AttackConfig,
    Attacked,
    DownstreamDataAttack,
    EncoderAttack,
    Hook,
    Measured,
    Outcome,
    PretrainingDataAttack,
    strikes,
)
from sslpoison.attacks.clip_poison import (
    CLIPBackdoorConfig,
    CLIPTargetedConfig,
    poison_backdoor,
    poison_targeted,
)
from sslpoison.attacks.feature_targeted import FeatureTargetedConfig
from sslpoison.attacks.gradient_canceling import GCConfig
from sslpoison.attacks.label_flip import LabelFlipConfig
from sslpoison.attacks.ssl_backdoor import SSLBackdoorConfig, poison
from sslpoison.attacks.tgda import TGDAConfig

#: Every attack by its ``attack.name`` in an experiment config: the only list of them.
ATTACKS: dict[str, type[AttackConfig]] = {
    "badencoder": BadEncoderConfig,
    "ssl_backdoor": SSLBackdoorConfig,
    "clip_backdoor": CLIPBackdoorConfig,
    "clip_targeted": CLIPTargetedConfig,
    "label_flip": LabelFlipConfig,
    "gc": GCConfig,
    "tgda": TGDAConfig,
    "feature_targeted": FeatureTargetedConfig,
}

__all__ = [
    "ATTACKS",
    "AttackConfig",
    "Attacked",
    "BadEncoderConfig",
    "CLIPBackdoorConfig",
    "CLIPTargetedConfig",
    "DownstreamDataAttack",
    "EncoderAttack",
    "FeatureTargetedConfig",
    "GCConfig",
    "Hook",
    "LabelFlipConfig",
    "Measured",
    "Outcome",
    "PretrainingDataAttack",
    "SSLBackdoorConfig",
    "TGDAConfig",
    "poison",
    "poison_backdoor",
    "poison_targeted",
    "run_badencoder",
    "strikes",
]
