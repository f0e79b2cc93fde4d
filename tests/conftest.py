"""Shared fixtures: small synthetic data, and an isolated data/cache environment."""

from __future__ import annotations

import pytest
import torch

from sslpoison.data.synthetic import synthetic


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own stage cache; CPU threads are kept modest."""
    monkeypatch.setenv("SSLPOISON_CACHE", str(tmp_path_factory.mktemp("cache")))
    torch.set_num_threads(2)


@pytest.fixture
def tiny_set():
    """A 64-image, 4-class, 16×16 grayscale synthetic set."""
    return synthetic(n=64, num_classes=4, size=16, channels=1, seed=0)
