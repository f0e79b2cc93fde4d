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


#: Computed with the code before the attacks were organised by hook point (issue 17), for
#: the presets as they are now (the indiscriminate ones came after it and have no "before").
PINNED = {
    "cpu-badencoder-fmnist": {"pretrain": "7b1af3e0c00a31a4", "attack": "456777ea3c2d7a28"},
    "cpu-byol-fmnist": {"pretrain": "c462b82605497fd1"},
    "cpu-clip-backdoor-fmnist": {
        "pretrain": "20cffac84e8e11f2",
        "pretrain_poisoned": "ea13f105b79a7f62",
    },
    "cpu-clip-sweep/00-poison=5": {
        "pretrain": "20cffac84e8e11f2",
        "pretrain_poisoned": "ccaeab7f7678db73",
    },
    "cpu-clip-sweep/01-poison=10": {
        "pretrain": "20cffac84e8e11f2",
        "pretrain_poisoned": "2eb9d97f7cf41cbf",
    },
    "cpu-clip-sweep/02-poison=25": {
        "pretrain": "20cffac84e8e11f2",
        "pretrain_poisoned": "5d1bcb4fa672c651",
    },
    "cpu-clip-sweep/03-poison=50": {
        "pretrain": "20cffac84e8e11f2",
        "pretrain_poisoned": "8505650844870f01",
    },
    "cpu-clip-sweep/04-poison=100": {
        "pretrain": "20cffac84e8e11f2",
        "pretrain_poisoned": "7f429281a3cfc513",
    },
    "cpu-clip-sweep/05-poison=600": {
        "pretrain": "20cffac84e8e11f2",
        "pretrain_poisoned": "ea13f105b79a7f62",
    },
    "cpu-clip-targeted-fmnist": {
        "pretrain": "bfabf86ff6df7eb9",
        "pretrain_poisoned": "f01095d5b25364f2",
    },
    "cpu-defenses-fmnist": {"pretrain": "7b1af3e0c00a31a4", "attack": "456777ea3c2d7a28"},
    "cpu-indiscriminate-fmnist": {"pretrain": "7b1af3e0c00a31a4"},
    "cpu-indiscriminate-sweep/00-name=label_flip,epsilon=0.01": {"pretrain": "7b1af3e0c00a31a4"},
    "cpu-indiscriminate-sweep/01-name=label_flip,epsilon=0.03": {"pretrain": "7b1af3e0c00a31a4"},
    "cpu-indiscriminate-sweep/02-name=label_flip,epsilon=0.1": {"pretrain": "7b1af3e0c00a31a4"},
    "cpu-indiscriminate-sweep/03-name=gc,epsilon=0.01": {"pretrain": "7b1af3e0c00a31a4"},
    "cpu-indiscriminate-sweep/04-name=gc,epsilon=0.03": {"pretrain": "7b1af3e0c00a31a4"},
    "cpu-indiscriminate-sweep/05-name=gc,epsilon=0.1": {"pretrain": "7b1af3e0c00a31a4"},
    "cpu-indiscriminate-sweep/06-name=tgda,epsilon=0.01": {"pretrain": "7b1af3e0c00a31a4"},
    "cpu-indiscriminate-sweep/07-name=tgda,epsilon=0.03": {"pretrain": "7b1af3e0c00a31a4"},
    "cpu-indiscriminate-sweep/08-name=tgda,epsilon=0.1": {"pretrain": "7b1af3e0c00a31a4"},
    "cpu-indiscriminate-sweep/09-name=feature_targeted,epsilon=0.01": {
        "pretrain": "7b1af3e0c00a31a4"
    },
    "cpu-indiscriminate-sweep/10-name=feature_targeted,epsilon=0.03": {
        "pretrain": "7b1af3e0c00a31a4"
    },
    "cpu-indiscriminate-sweep/11-name=feature_targeted,epsilon=0.1": {
        "pretrain": "7b1af3e0c00a31a4"
    },
    "cpu-indiscriminate-transfer": {"pretrain": "7b1af3e0c00a31a4"},
    "cpu-mocov2-fmnist": {"pretrain": "d4cad0cd5e70e655"},
    "cpu-msf-fmnist": {"pretrain": "e41004b7b65fbe7a"},
    "cpu-simclr-fmnist": {"pretrain": "6df1d03ac0a865a3"},
    "cpu-sslbackdoor-distill-sweep/00-seed=0": {
        "pretrain": "70e480839f1e01be",
        "pretrain_poisoned": "34d07148fe7158dc",
    },
    "cpu-sslbackdoor-distill-sweep/01-seed=1": {
        "pretrain": "70e480839f1e01be",
        "pretrain_poisoned": "34d07148fe7158dc",
    },
    "cpu-sslbackdoor-distill-sweep/02-seed=2": {
        "pretrain": "70e480839f1e01be",
        "pretrain_poisoned": "34d07148fe7158dc",
    },
    "cpu-sslbackdoor-fmnist": {
        "pretrain": "70e480839f1e01be",
        "pretrain_poisoned": "34d07148fe7158dc",
    },
    "cpu-sslbackdoor-mimic-sweep/00-seed=0": {
        "pretrain": "70e480839f1e01be",
        "pretrain_poisoned": "34d07148fe7158dc",
    },
    "cpu-sslbackdoor-mimic-sweep/01-seed=1": {
        "pretrain": "70e480839f1e01be",
        "pretrain_poisoned": "34d07148fe7158dc",
    },
    "cpu-sslbackdoor-sweep/00-size=6,poison=0.25": {
        "pretrain": "70e480839f1e01be",
        "pretrain_poisoned": "803f75ab977d6f6c",
    },
    "cpu-sslbackdoor-sweep/01-size=6,poison=0.5": {
        "pretrain": "70e480839f1e01be",
        "pretrain_poisoned": "89070c0fc158a4ce",
    },
    "cpu-sslbackdoor-sweep/02-size=6,poison=1.0": {
        "pretrain": "70e480839f1e01be",
        "pretrain_poisoned": "ede93425eed2a0f8",
    },
    "cpu-sslbackdoor-sweep/03-size=8,poison=0.25": {
        "pretrain": "70e480839f1e01be",
        "pretrain_poisoned": "d7a76c4c7be85946",
    },
    "cpu-sslbackdoor-sweep/04-size=8,poison=0.5": {
        "pretrain": "70e480839f1e01be",
        "pretrain_poisoned": "34d07148fe7158dc",
    },
    "cpu-sslbackdoor-sweep/05-size=8,poison=1.0": {
        "pretrain": "70e480839f1e01be",
        "pretrain_poisoned": "aac1d48486a4b9eb",
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
