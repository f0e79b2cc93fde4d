"""Library calls leave torch's global random state as they found it
(:func:`~sslpoison.utils.seeded`): pre-training, encoder defenses, the probes and the
untrained baseline (the engine: ``tests/train/test_engine.py``). Their numbers come from their
seed alone."""

from __future__ import annotations

import torch
import torch.nn as nn

from sslpoison.defenses import DEFENSES
from sslpoison.eval.probes import train_probe
from sslpoison.experiment.runner import random_encoder
from sslpoison.models.backbone import BackboneConfig
from sslpoison.ssl.pretrain import PretrainConfig, pretrain
from sslpoison.utils import seeded

TRAIN = {"epochs": 1, "batch_size": 32, "progress": False}


def leaves_the_rng_alone(call, state: int = 123):
    """``call()``'s result, asserting that it left the global RNG (seeded ``state``) as is."""
    torch.manual_seed(state)
    before = torch.get_rng_state()
    out = call()
    assert torch.equal(torch.get_rng_state(), before)
    return out


def weights(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_seeded_draws_from_its_seed_and_puts_the_state_back():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with seeded(5):
        inside = torch.rand(3)
    assert torch.equal(inside, torch.rand(3, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(torch.get_rng_state(), before)
    with seeded():  # unseeded: the state as it is, put back afterwards
        assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(torch.get_rng_state(), before)


def test_pretraining_and_encoder_defenses_leave_the_rng_alone(tiny_set):
    cfg = PretrainConfig(backbone={"width": 0.125}, train=TRAIN)
    encoder, _ = leaves_the_rng_alone(lambda: pretrain(tiny_set, cfg, seed=0))
    again, _ = leaves_the_rng_alone(lambda: pretrain(tiny_set, cfg, seed=0), state=456)
    assert all(torch.equal(a, b) for a, b in zip(weights(encoder), weights(again), strict=True))
    for name in ("finetune", "fineprune"):
        defense = DEFENSES[name](clean=64, train=TRAIN)
        leaves_the_rng_alone(lambda d=defense: d.apply(encoder, tiny_set, seed=0))


def test_the_probes_and_the_untrained_baseline_leave_the_rng_alone():
    g = torch.Generator().manual_seed(0)
    features, labels = torch.randn(64, 8, generator=g), torch.arange(64) % 4
    for kind in ("linear", "mlp"):
        leaves_the_rng_alone(lambda kind=kind: train_probe(features, labels, 4, kind, seed=0))
    backbone = BackboneConfig(width=0.125)
    leaves_the_rng_alone(lambda: random_encoder(backbone, 1, 0, torch.device("cpu"), 16))
