"""Attacks, one file each, grouped by where they hook into the pipeline (see DESIGN.md).

* encoder attacks — ``run(encoder, shadow, ...) -> encoder``: :mod:`.badencoder`.
* pre-training data — ``poison(imageset, cfg) -> PoisonedSet``: :mod:`.ssl_backdoor`.
* image–caption pre-training data — ``poison_backdoor`` / ``poison_targeted`` →
  ``PoisonedPairs``: :mod:`.clip_poison` (``clip_backdoor``, ``clip_targeted``).

An experiment's ``attack:`` section is one of these configs, picked by its ``name``.
"""

from sslpoison.attacks.badencoder import BadEncoderConfig, run_badencoder
from sslpoison.attacks.clip_poison import (
    CLIPBackdoorConfig,
    CLIPTargetedConfig,
    PoisonedPairs,
    poison_backdoor,
    poison_targeted,
)
from sslpoison.attacks.ssl_backdoor import PoisonedSet, SSLBackdoorConfig, poison

#: Every attack by its ``attack.name`` in an experiment config.
ATTACKS = {
    "badencoder": BadEncoderConfig,
    "ssl_backdoor": SSLBackdoorConfig,
    "clip_backdoor": CLIPBackdoorConfig,
    "clip_targeted": CLIPTargetedConfig,
}

#: Attacks that poison image–caption pre-training (they need ``pretrain.method: clip``).
IMAGE_TEXT_ATTACKS = ("clip_backdoor", "clip_targeted")

#: The type of an ``attack:`` section (discriminated by ``name``).
AttackSpec = BadEncoderConfig | SSLBackdoorConfig | CLIPBackdoorConfig | CLIPTargetedConfig

__all__ = [
    "ATTACKS",
    "IMAGE_TEXT_ATTACKS",
    "AttackSpec",
    "BadEncoderConfig",
    "CLIPBackdoorConfig",
    "CLIPTargetedConfig",
    "PoisonedPairs",
    "PoisonedSet",
    "SSLBackdoorConfig",
    "poison",
    "poison_backdoor",
    "poison_targeted",
    "run_badencoder",
]
