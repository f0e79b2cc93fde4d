"""The pre-training and attack stage keys of every ``configs/cpu-*.yaml`` preset (and of every
run of the sweeps), computed without training, are pinned: a change that moves one would
orphan every cached encoder of that preset.

What is pinned, per preset: ``pretrain`` (the clean pre-training), ``pretrain_poisoned`` (the
pre-training on the set a pre-training data attack poisoned) and ``attack`` (an encoder
attack). The attack key hashes the clean encoder's weights, which only training gives; it is
pinned for a stand-in clean encoder: ``pretrain.backbone`` freshly drawn after
``torch.manual_seed(seed)``. A preset that brings its clean encoder (``encoder:``) has no
pre-training, and its attack key hashes weights that another preset makes: ``encoder`` (its
section) and ``attack_config`` (the attack's slice of the attack key) are pinned instead.
Keys hash the training precision, which ``amp_cpu: auto`` resolves from the CPU; the CPU is
taken to have no native bf16, on every machine.

After changing a preset on purpose, print the new table and paste it over :data:`PINNED`::

    PYTHONPATH=src python tests/experiment/test_preset_keys.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sslpoison.attacks import Hook, badencoder, strikes
from sslpoison.attacks import targets as attack_targets
from sslpoison.eval.downstream import Downstream
from sslpoison.experiment.config import ExperimentConfig, load_config
from sslpoison.experiment.stages import attack_key, key_slice, pretrain_key, pretraining_data
from sslpoison.models.backbone import build_encoder
from sslpoison.sweeps.sweep import load_sweep, run_name, sweep_configs
from sslpoison.train import precision
from sslpoison.utils import stable_hash, tensor_hash

CONFIGS = Path(__file__).parents[2] / "configs"


def preset_keys(cfg: ExperimentConfig, loaded: dict | None = None) -> dict[str, str]:
    """The stage keys of ``cfg`` on a CPU (see the module doc), each stage with its group's
    seed (``cfg.seed_of``: ``seed`` unless ``stage_seeds`` pins it); ``loaded`` memoises
    the pre-training data between presets that share it."""
    device = torch.device("cpu")
    if cfg.encoder is not None:
        keys = {"encoder": stable_hash(cfg.encoder.model_dump(mode="json"))}
        if cfg.attack is not None:
            keys["attack_config"] = stable_hash(key_slice(cfg.attack, device))
        return keys
    loaded = {} if loaded is None else loaded
    seed, attack_seed, eval_seed = (cfg.seed_of(g) for g in ("pretrain", "attack", "eval"))
    which = (cfg.data.model_dump_json(), cfg.pretrain.image_text, seed)
    if which not in loaded:
        loaded[which] = pretraining_data(cfg.data, cfg.pretrain.image_text, seed)
    data, attack = loaded[which], cfg.attack
    keys = {"pretrain": pretrain_key(cfg.pretrain, data, seed, device)}
    if strikes(attack, Hook.PRETRAINING_DATA):
        downstream = Downstream(cfg.eval, data.image_size, data.channels, eval_seed)
        poisoned = attack.poison_pretraining(data, downstream, attack_seed)
        keys["pretrain_poisoned"] = pretrain_key(cfg.pretrain, poisoned.data, attack_seed, device)
    if strikes(attack, Hook.ENCODER):
        torch.manual_seed(seed)
        built = ("stand-in", cfg.pretrain.backbone.model_dump_json(), data.channels, seed)
        if built not in loaded:  # the same weights for the same backbone and seed: reused
            loaded[built] = build_encoder(cfg.pretrain.backbone, data.channels)
        stand_in = loaded[built]
        shadow = attack.shadow_subset(data, seed=attack_seed)
        downstream = loaded.setdefault(
            ("downstream", cfg.eval.model_dump_json(), data.image_size, data.channels, eval_seed),
            Downstream(cfg.eval, data.image_size, data.channels, eval_seed),
        )
        targets = attack.backdoor_targets(data, downstream, attack_seed)
        # What the stand-in prepares (BadEncoder: the references) does not depend on the
        # triggers: memoised, sweep runs over triggers share it.
        dumped = attack.model_dump(mode="json", exclude={"targets": {"__all__": {"trigger"}}})
        which = ("prepared", json.dumps(dumped, sort_keys=True), data.name, seed, attack_seed)
        if which not in loaded:
            prepared = attack.prepare_targets(stand_in, shadow, targets, attack_seed)
            loaded[which] = [(t.references, t.reference_indices) for t in prepared]
        for t, (references, indices) in zip(targets, loaded[which], strict=True):
            t.references, t.reference_indices = references, indices
        keys["attack"] = attack_key(attack, stand_in, shadow, targets, attack_seed, device)
    return keys


def all_preset_keys(configs: Path = CONFIGS) -> dict[str, dict[str, str]]:
    """``{preset (or sweep/run): {stage: key}}`` for every ``cpu-*.yaml`` in ``configs``,
    with the CPU taken to have no native bf16."""
    native, extract = precision.cpu_has_native_bf16, attack_targets.extract_features
    precision.cpu_has_native_bf16 = lambda: False
    features: dict = {}

    def memoised(encoder, images, **kwargs):  # the stand-ins' features, once per image set
        key = (id(encoder), tensor_hash(images), json.dumps(kwargs, default=str, sort_keys=True))
        if key not in features:
            features[key] = extract(encoder, images, **kwargs)
        return features[key]

    # The shadow's features (badencoder.prepare_targets), the pools' (choose_references).
    badencoder.extract_features = attack_targets.extract_features = memoised
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
        badencoder.extract_features = attack_targets.extract_features = extract


#: Computed with the code before the attacks were organised by hook point (issue 17), for
#: the presets as they are now (the indiscriminate ones came after it and have no "before").
#: The encoder attack keys moved once since, on purpose (issue 16): they hash the reference
#: images the clean encoder chooses, and ``reference_choice`` joined the config.
PINNED = {
    "cpu-badencoder-fmnist": {"pretrain": "7b1af3e0c00a31a4", "attack": "343e8557fbf96b0a"},
    "cpu-badencoder-given": {"encoder": "704cf8d8bba46420", "attack_config": "9970b30e3487246b"},
    "cpu-defenses-given": {"encoder": "bed39bdaee13c746", "attack_config": "9970b30e3487246b"},
    "cpu-vit-simclr-fmnist": {"pretrain": "39cd495dcff21915"},
    "cpu-badencoder-targets-sweep/00-kind=solid,position=_22,_22_,target_class=T-shirt_top": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "ea2db9f2d6da67d3",
    },
    "cpu-badencoder-targets-sweep/01-kind=solid,position=_22,_22_,target_class=Trouser": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "a07cdb963ae75d43",
    },
    "cpu-badencoder-targets-sweep/02-kind=solid,position=_22,_22_,target_class=Pullover": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "8e659439cb8e3fff",
    },
    "cpu-badencoder-targets-sweep/03-kind=solid,position=_22,_22_,target_class=Dress": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "26e993b1faa38bb7",
    },
    "cpu-badencoder-targets-sweep/04-kind=solid,position=_22,_22_,target_class=Coat": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "738ae92b712d660d",
    },
    "cpu-badencoder-targets-sweep/05-kind=solid,position=_22,_22_,target_class=Sandal": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "565c3fe076868eb7",
    },
    "cpu-badencoder-targets-sweep/06-kind=solid,position=_22,_22_,target_class=Shirt": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "ba5407c9b3e56199",
    },
    "cpu-badencoder-targets-sweep/07-kind=solid,position=_22,_22_,target_class=Sneaker": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "b6578c8307a5c1f3",
    },
    "cpu-badencoder-targets-sweep/08-kind=solid,position=_22,_22_,target_class=Bag": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "ad5cd64bb819da6c",
    },
    "cpu-badencoder-targets-sweep/09-kind=solid,position=_22,_22_,target_class=Ankle_boot": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "bc310df7882ea7d8",
    },
    "cpu-badencoder-targets-sweep/10-kind=solid,position=_2,_21_,target_class=T-shirt_top": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "f01a7027135dfbed",
    },
    "cpu-badencoder-targets-sweep/11-kind=solid,position=_2,_21_,target_class=Trouser": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "17d9d665616bc6e1",
    },
    "cpu-badencoder-targets-sweep/12-kind=solid,position=_2,_21_,target_class=Pullover": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "540849bd132c3e73",
    },
    "cpu-badencoder-targets-sweep/13-kind=solid,position=_2,_21_,target_class=Dress": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "78e090a3324639e3",
    },
    "cpu-badencoder-targets-sweep/14-kind=solid,position=_2,_21_,target_class=Coat": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "e3f356602eab1e5a",
    },
    "cpu-badencoder-targets-sweep/15-kind=solid,position=_2,_21_,target_class=Sandal": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "e455a9a9b0fc91e1",
    },
    "cpu-badencoder-targets-sweep/16-kind=solid,position=_2,_21_,target_class=Shirt": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "73ccc74b05f9ad81",
    },
    "cpu-badencoder-targets-sweep/17-kind=solid,position=_2,_21_,target_class=Sneaker": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "6700d36f2ba67cc4",
    },
    "cpu-badencoder-targets-sweep/18-kind=solid,position=_2,_21_,target_class=Bag": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "8d5d8d77051c4316",
    },
    "cpu-badencoder-targets-sweep/19-kind=solid,position=_2,_21_,target_class=Ankle_boot": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "4cda73e9253ed060",
    },
    "cpu-badencoder-targets-sweep/20-kind=solid,position=_21,_2_,target_class=T-shirt_top": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "1a192be5fed5408a",
    },
    "cpu-badencoder-targets-sweep/21-kind=solid,position=_21,_2_,target_class=Trouser": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "2f9a6cf8cf73174e",
    },
    "cpu-badencoder-targets-sweep/22-kind=solid,position=_21,_2_,target_class=Pullover": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "03cf15dc599f85b4",
    },
    "cpu-badencoder-targets-sweep/23-kind=solid,position=_21,_2_,target_class=Dress": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "9a893127574f401f",
    },
    "cpu-badencoder-targets-sweep/24-kind=solid,position=_21,_2_,target_class=Coat": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "81460e3e5dfed0ae",
    },
    "cpu-badencoder-targets-sweep/25-kind=solid,position=_21,_2_,target_class=Sandal": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "e2796585ca8991b9",
    },
    "cpu-badencoder-targets-sweep/26-kind=solid,position=_21,_2_,target_class=Shirt": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "0e11122a9f5161ae",
    },
    "cpu-badencoder-targets-sweep/27-kind=solid,position=_21,_2_,target_class=Sneaker": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "64ec148896accd75",
    },
    "cpu-badencoder-targets-sweep/28-kind=solid,position=_21,_2_,target_class=Bag": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "4f2210d0c88f8fb5",
    },
    "cpu-badencoder-targets-sweep/29-kind=solid,position=_21,_2_,target_class=Ankle_boot": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "7e1494158fb79505",
    },
    "cpu-badencoder-targets-sweep/30-kind=noise,position=_22,_22_,target_class=T-shirt_top": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "a5b71438c1f5c9b4",
    },
    "cpu-badencoder-targets-sweep/31-kind=noise,position=_22,_22_,target_class=Trouser": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "729258fff1b0ccf8",
    },
    "cpu-badencoder-targets-sweep/32-kind=noise,position=_22,_22_,target_class=Pullover": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "5af65e06e370951b",
    },
    "cpu-badencoder-targets-sweep/33-kind=noise,position=_22,_22_,target_class=Dress": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "381072c3fa4359f6",
    },
    "cpu-badencoder-targets-sweep/34-kind=noise,position=_22,_22_,target_class=Coat": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "838e87b54ac99736",
    },
    "cpu-badencoder-targets-sweep/35-kind=noise,position=_22,_22_,target_class=Sandal": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "9b77c943e97fcd77",
    },
    "cpu-badencoder-targets-sweep/36-kind=noise,position=_22,_22_,target_class=Shirt": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "d6253dd0b54e4296",
    },
    "cpu-badencoder-targets-sweep/37-kind=noise,position=_22,_22_,target_class=Sneaker": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "e8389b3aa3378aaf",
    },
    "cpu-badencoder-targets-sweep/38-kind=noise,position=_22,_22_,target_class=Bag": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "ef17ed0c711651d5",
    },
    "cpu-badencoder-targets-sweep/39-kind=noise,position=_22,_22_,target_class=Ankle_boot": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "5300307f3ee4e2c9",
    },
    "cpu-badencoder-targets-sweep/40-kind=noise,position=_2,_21_,target_class=T-shirt_top": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "85092dfe968db562",
    },
    "cpu-badencoder-targets-sweep/41-kind=noise,position=_2,_21_,target_class=Trouser": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "69cd907551c59807",
    },
    "cpu-badencoder-targets-sweep/42-kind=noise,position=_2,_21_,target_class=Pullover": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "055837f312db4fbd",
    },
    "cpu-badencoder-targets-sweep/43-kind=noise,position=_2,_21_,target_class=Dress": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "8b20f2c58321e9d9",
    },
    "cpu-badencoder-targets-sweep/44-kind=noise,position=_2,_21_,target_class=Coat": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "ef5b35e9d3bf8cf8",
    },
    "cpu-badencoder-targets-sweep/45-kind=noise,position=_2,_21_,target_class=Sandal": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "29702a611681aefd",
    },
    "cpu-badencoder-targets-sweep/46-kind=noise,position=_2,_21_,target_class=Shirt": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "3becb3b2bfc9691e",
    },
    "cpu-badencoder-targets-sweep/47-kind=noise,position=_2,_21_,target_class=Sneaker": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "d04255ec953dad4e",
    },
    "cpu-badencoder-targets-sweep/48-kind=noise,position=_2,_21_,target_class=Bag": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "05b6fa1f996274f3",
    },
    "cpu-badencoder-targets-sweep/49-kind=noise,position=_2,_21_,target_class=Ankle_boot": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "c32a6e34db16882d",
    },
    "cpu-badencoder-targets-sweep/50-kind=noise,position=_21,_2_,target_class=T-shirt_top": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "c7a317cc5a837396",
    },
    "cpu-badencoder-targets-sweep/51-kind=noise,position=_21,_2_,target_class=Trouser": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "23a9dff13c747181",
    },
    "cpu-badencoder-targets-sweep/52-kind=noise,position=_21,_2_,target_class=Pullover": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "09387ab145c33718",
    },
    "cpu-badencoder-targets-sweep/53-kind=noise,position=_21,_2_,target_class=Dress": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "7a1fe644c568cc4e",
    },
    "cpu-badencoder-targets-sweep/54-kind=noise,position=_21,_2_,target_class=Coat": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "484a132b69ac8486",
    },
    "cpu-badencoder-targets-sweep/55-kind=noise,position=_21,_2_,target_class=Sandal": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "d401490b4dc2dd0b",
    },
    "cpu-badencoder-targets-sweep/56-kind=noise,position=_21,_2_,target_class=Shirt": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "fe24d6d2ca5cce87",
    },
    "cpu-badencoder-targets-sweep/57-kind=noise,position=_21,_2_,target_class=Sneaker": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "f2aca4d331ccb29e",
    },
    "cpu-badencoder-targets-sweep/58-kind=noise,position=_21,_2_,target_class=Bag": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "5d21a6deb3fbb8d8",
    },
    "cpu-badencoder-targets-sweep/59-kind=noise,position=_21,_2_,target_class=Ankle_boot": {
        "pretrain": "7b1af3e0c00a31a4",
        "attack": "b13a8a518d908a8d",
    },
    "cpu-byol-fmnist": {"pretrain": "c462b82605497fd1"},
    "cpu-clip-backdoor-fmnist": {
        "pretrain": "20cffac84e8e11f2",
        "pretrain_poisoned": "ea13f105b79a7f62",
    },
    # The filtering presets share their encoders with the attacks' presets (issue 28).
    "cpu-filtering-clip-fmnist": {
        "pretrain": "20cffac84e8e11f2",
        "pretrain_poisoned": "ea13f105b79a7f62",
    },
    "cpu-filtering-sslbackdoor-fmnist": {
        "pretrain": "70e480839f1e01be",
        "pretrain_poisoned": "34d07148fe7158dc",
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
    "cpu-defenses-fmnist": {"pretrain": "7b1af3e0c00a31a4", "attack": "1b874dcebccdb786"},
    "cpu-indiscriminate-classsplit": {"pretrain": "346c9c3aa8593155"},
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
