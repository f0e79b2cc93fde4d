"""Attacks, one file each, grouped by where they hook into the pipeline (see DESIGN.md).

* encoder attacks — ``run(encoder, shadow, ...) -> encoder``: :mod:`.badencoder`.
* pre-training data — ``poison(imageset, cfg) -> PoisonedSet``: :mod:`.ssl_backdoor`
  (library function; its experiment stage and evaluation are not wired in yet).
"""

from sslpoison.attacks.badencoder import BadEncoderConfig, run_badencoder

#: Every attack by its ``attack.name`` in an experiment config.
ATTACKS = {"badencoder": BadEncoderConfig}

__all__ = ["ATTACKS", "BadEncoderConfig", "run_badencoder"]
