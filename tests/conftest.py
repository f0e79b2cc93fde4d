"""Shared fixtures: small synthetic data, and an isolated data/cache environment."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from sslpoison.data.synthetic import synthetic
from sslpoison.train import precision


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own stage cache and results store; CPU threads are kept modest;
    ``amp_cpu: auto`` resolves to fp32 on every machine (the numbers a test expects must not
    depend on whether the CPU has native bf16; tests of the precision choice patch this
    themselves)."""
    monkeypatch.setenv("SSLPOISON_CACHE", str(tmp_path_factory.mktemp("cache")))
    store = tmp_path_factory.mktemp("store") / "results.sqlite"
    monkeypatch.setenv("SSLPOISON_RESULTS", str(store))
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    torch.set_num_threads(2)


@pytest.fixture
def tiny_set():
    """A 64-image, 4-class, 16×16 grayscale synthetic set."""
    return synthetic(n=64, num_classes=4, size=16, channels=1, seed=0)


#: A whole experiment that pre-trains and evaluates in seconds on the synthetic set.
TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"dataset": "synthetic"},
    "pretrain": {
        "method": "simclr",
        "method_args": {"temperature": 0.2},
        "backbone": {"width": 0.125},
        "augment": {"crop_scale": [0.5, 1.0]},
        "train": {
            "epochs": 4,
            "batch_size": 64,
            "progress": False,
            "optimizer": {"name": "sgd", "lr": 0.1, "weight_decay": 1e-4},
        },
    },
    "eval": {
        "datasets": ["synthetic"],
        "labelled": 256,
        "probes": ["linear", "knn"],
        "knn": {"k": 20},
        "probe": {"epochs": 20},
    },
}


#: A BadEncoder attack that backdoors a :data:`TINY` encoder in seconds (ASR ≥ 0.9).
TINY_BADENCODER = {
    "name": "badencoder",
    "shadow": 256,
    "lambda2": 2.0,
    "targets": [
        {
            "dataset": "synthetic",
            "target_class": "vertical",
            "trigger": {"size": 5, "position": [10, 10]},
        }
    ],
    "train": {
        "epochs": 10,
        "batch_size": 16,
        "progress": False,
        "optimizer": {"name": "adam", "lr": 2e-3, "weight_decay": 0.0, "warmup_epochs": 0.0},
    },
}


@pytest.fixture
def tiny_badencoder() -> dict:
    """A fresh copy of :data:`TINY_BADENCODER` to modify."""
    return copy.deepcopy(TINY_BADENCODER)


@pytest.fixture
def tiny_experiment() -> dict:
    """A fresh copy of :data:`TINY` to modify."""
    return copy.deepcopy(TINY)


@pytest.fixture
def write_config(tmp_path):
    """``write_config(cfg) -> path``: ``cfg`` written as ``tmp_path/cfg.yaml``."""

    def write(cfg: dict) -> str:
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return str(path)

    return write
