"""The pre-training and attack stage keys of every ``configs/cpu-*.yaml`` preset (and of every
run of the sweeps), computed without training, are pinned: a change that moves one would
orphan every cached encoder of that preset.

What is pinned, per preset: ``pretrain`` (the clean pre-training), ``pretrain_poisoned`` (the
pre-training on the set a pre-training data attack poisoned) and ``attack`` (an encoder
attack). The attack key hashes the clean encoder's weights, which only training gives; it is
pinned for a stand-in clean encoder: ``pretrain.backbone`` freshly drawn after
``torch.manual_seed(seed)``. Keys hash the training precision, which ``amp_cpu: auto``
resolves from the CPU; the CPU is taken to have no native bf16, on every machine.

After changing a preset on purpose, print the new table and paste it over :data:`PINNED`::

    PYTHONPATH=src python tests/experiment/test_preset_keys.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sslpoison.attacks import Hook, strikes
from sslpoison.eval.downstream import Downstream
from sslpoison.experiment.config import ExperimentConfig, load_config
from sslpoison.experiment.stages import attack_key, pretrain_key, pretraining_data
from sslpoison.experiment.sweep import load_sweep, run_name, sweep_configs
from sslpoison.models.backbone import build_encoder
from sslpoison.train import precision

CONFIGS = Path(__file__).parents[2] / "configs"


def preset_keys(cfg: ExperimentConfig, loaded: dict | None = None) -> dict[str, str]:
    """The stage keys of ``cfg`` on a CPU (see the module doc); ``loaded`` memoises the
    pre-training data between presets that share it."""
    device = torch.device("cpu")
    loaded = {} if loaded is None else loaded
    which = (cfg.data.model_dump_json(), cfg.pretrain.image_text, cfg.seed)
    if which not in loaded:
        loaded[which] = pretraining_data(cfg.data, cfg.pretrain.image_text, cfg.seed)
    data, attack = loaded[which], cfg.attack
    keys = {"pretrain": pretrain_key(cfg.pretrain, data, cfg.seed, device)}
    if strikes(attack, Hook.PRETRAINING_DATA):
        downstream = Downstream(cfg.eval, data.image_size, data.channels, cfg.seed)
        poisoned = attack.poison_pretraining(data, downstream, cfg.seed)
        keys["pretrain_poisoned"] = pretrain_key(cfg.pretrain, poisoned.data, cfg.seed, device)
    if strikes(attack, Hook.ENCODER):
        torch.manual_seed(cfg.seed)
        stand_in = build_encoder(cfg.pretrain.backbone, data.channels)
        shadow = attack.shadow_subset(data, seed=cfg.seed)
        keys["attack"] = attack_key(attack, stand_in, shadow, cfg.seed, device)
    return keys


def all_preset_keys(configs: Path = CONFIGS) -> dict[str, dict[str, str]]:
    """``{preset (or sweep/run): {stage: key}}`` for every ``cpu-*.yaml`` in ``configs``,
    with the CPU taken to have no native bf16."""
    native = precision.cpu_has_native_bf16
    precision.cpu_has_native_bf16 = lambda: False
    try:
        table, loaded = {}, {}
        for path in sorted(configs.glob("cpu-*.yaml")):
            if path.stem.endswith("-sweep"):
                for i, (combo, cfg) in enumerate(sweep_configs(*load_sweep(path))):
                    table[f"{path.stem}/{run_name(i, combo)}"] = preset_keys(cfg, loaded)
            else:
                table[path.stem] = preset_keys(load_config(path), loaded)
        return table
    finally:
        precision.cpu_has_native_bf16 = native


#: Computed with the code before the attacks were organised by hook point (issue 17).
PINNED = {
    "cpu-badencoder-fmnist": {"pretrain": "063a726926787f63", "attack": "baad42844b859655"},
    "cpu-byol-fmnist": {"pretrain": "ae186c2ee994c30a"},
    "cpu-clip-backdoor-fmnist": {
        "pretrain": "6c2fd12bbb1a1483",
        "pretrain_poisoned": "ca2f160c8906aed2",
    },
    "cpu-clip-sweep/00-poison=5": {
        "pretrain": "6c2fd12bbb1a1483",
        "pretrain_poisoned": "bdad052f6c016212",
    },
    "cpu-clip-sweep/01-poison=10": {
        "pretrain": "6c2fd12bbb1a1483",
        "pretrain_poisoned": "b087f5056d9be10a",
    },
    "cpu-clip-sweep/02-poison=25": {
        "pretrain": "6c2fd12bbb1a1483",
        "pretrain_poisoned": "a81f31cbd7c7a16f",
    },
    "cpu-clip-sweep/03-poison=50": {
        "pretrain": "6c2fd12bbb1a1483",
        "pretrain_poisoned": "b101bb06df72befd",
    },
    "cpu-clip-sweep/04-poison=100": {
        "pretrain": "6c2fd12bbb1a1483",
        "pretrain_poisoned": "c97eab2da576c2d4",
    },
    "cpu-clip-sweep/05-poison=600": {
        "pretrain": "6c2fd12bbb1a1483",
        "pretrain_poisoned": "ca2f160c8906aed2",
    },
    "cpu-clip-targeted-fmnist": {
        "pretrain": "84cac1fca7dc8d80",
        "pretrain_poisoned": "a6eb03192d2101e3",
    },
    "cpu-defenses-fmnist": {"pretrain": "063a726926787f63", "attack": "baad42844b859655"},
    "cpu-mocov2-fmnist": {"pretrain": "fbf8f59d04b4e3c6"},
    "cpu-msf-fmnist": {"pretrain": "0d5029556c99cc21"},
    "cpu-simclr-fmnist": {"pretrain": "38b00861b95cbe67"},
    "cpu-sslbackdoor-distill-sweep/00-seed=0": {
        "pretrain": "3acc69bb20c2f176",
        "pretrain_poisoned": "cc8fabeb7fbb7b1e",
    },
    "cpu-sslbackdoor-distill-sweep/01-seed=1": {
        "pretrain": "3acc69bb20c2f176",
        "pretrain_poisoned": "cc8fabeb7fbb7b1e",
    },
    "cpu-sslbackdoor-distill-sweep/02-seed=2": {
        "pretrain": "3acc69bb20c2f176",
        "pretrain_poisoned": "cc8fabeb7fbb7b1e",
    },
    "cpu-sslbackdoor-fmnist": {
        "pretrain": "3acc69bb20c2f176",
        "pretrain_poisoned": "cc8fabeb7fbb7b1e",
    },
    "cpu-sslbackdoor-mimic-sweep/00-seed=0": {
        "pretrain": "3acc69bb20c2f176",
        "pretrain_poisoned": "cc8fabeb7fbb7b1e",
    },
    "cpu-sslbackdoor-mimic-sweep/01-seed=1": {
        "pretrain": "3acc69bb20c2f176",
        "pretrain_poisoned": "cc8fabeb7fbb7b1e",
    },
    "cpu-sslbackdoor-sweep/00-size=6,poison=0.25": {
        "pretrain": "3acc69bb20c2f176",
        "pretrain_poisoned": "011170e1a1a96246",
    },
    "cpu-sslbackdoor-sweep/01-size=6,poison=0.5": {
        "pretrain": "3acc69bb20c2f176",
        "pretrain_poisoned": "a603ec467af820c9",
    },
    "cpu-sslbackdoor-sweep/02-size=6,poison=1.0": {
        "pretrain": "3acc69bb20c2f176",
        "pretrain_poisoned": "eef3eb18514da2e6",
    },
    "cpu-sslbackdoor-sweep/03-size=8,poison=0.25": {
        "pretrain": "3acc69bb20c2f176",
        "pretrain_poisoned": "a62e4d6003f5ff32",
    },
    "cpu-sslbackdoor-sweep/04-size=8,poison=0.5": {
        "pretrain": "3acc69bb20c2f176",
        "pretrain_poisoned": "cc8fabeb7fbb7b1e",
    },
    "cpu-sslbackdoor-sweep/05-size=8,poison=1.0": {
        "pretrain": "3acc69bb20c2f176",
        "pretrain_poisoned": "6d44f2194d1d4e68",
    },
}


def fashion_mnist_present() -> bool:
    from sslpoison.data.registry import DatasetNotFound, locate_dataset

    try:
        return locate_dataset("fashion-mnist") is not None
    except DatasetNotFound:
        return False


@pytest.mark.skipif(not fashion_mnist_present(), reason="the presets pre-train on Fashion-MNIST")
def test_every_cpu_preset_keeps_its_stage_keys():
    assert all_preset_keys() == PINNED


def test_the_keys_follow_what_they_hash(monkeypatch, tiny_experiment, tiny_badencoder):
    """A changed setting, seed or precision moves the key; a setting that cannot change the
    weights does not."""
    tiny_experiment["attack"] = tiny_badencoder
    tiny_experiment["eval"]["datasets"] = ["synthetic"]

    def keys(**changes) -> dict[str, str]:
        cfg = ExperimentConfig.model_validate({**tiny_experiment, **changes})
        return preset_keys(cfg)

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    base = keys()
    assert set(base) == {"pretrain", "attack"}
    assert keys(seed=1)["pretrain"] != base["pretrain"]
    progress = {**tiny_experiment["pretrain"], "train": {**tiny_experiment["pretrain"]["train"]}}
    progress["train"]["checkpoint_every"] = 3
    assert keys(pretrain=progress) == base
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)  # auto: now bf16
    assert keys()["pretrain"] != base["pretrain"]


if __name__ == "__main__":
    print(json.dumps(all_preset_keys(), indent=4))
