"""Attacks, one file each, by where they strike the pipeline (:mod:`.base`, DESIGN.md).

* pre-training data — ``poison_pretraining(data, downstream, seed) -> PoisonedSet``:
  ``ssl_backdoor`` (:mod:`.ssl_backdoor`); ``clip_backdoor`` and ``clip_targeted``, on
  image–caption pairs (:mod:`.clip_poison`).
* encoder — ``run(encoder, shadow, targets, ...) -> Attacked``: ``badencoder``
  (:mod:`.badencoder`).
* downstream data — ``poison_downstream(encoder, train, seed) -> PoisonedSet``: none yet.

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
from sslpoison.attacks.ssl_backdoor import SSLBackdoorConfig, poison

#: Every attack by its ``attack.name`` in an experiment config: the only list of them.
ATTACKS: dict[str, type[AttackConfig]] = {
    "badencoder": BadEncoderConfig,
    "ssl_backdoor": SSLBackdoorConfig,
    "clip_backdoor": CLIPBackdoorConfig,
    "clip_targeted": CLIPTargetedConfig,
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
    "Hook",
    "Measured",
    "Outcome",
    "PretrainingDataAttack",
    "SSLBackdoorConfig",
    "poison",
    "poison_backdoor",
    "poison_targeted",
    "run_badencoder",
    "strikes",
]
