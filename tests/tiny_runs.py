"""Tiny run configs the test suites share."""

from __future__ import annotations

#: A run that loads, trains one epoch on 64 synthetic images and evaluates (k-NN) in ~1 s.
TINY_RUN = {
    "name": "tiny-robust",
    "seed": 0,
    "threads": 1,  # two threads crawl on a busy 2-core machine; the cases stay fast
    "data": {"dataset": "synthetic", "subset": 64},
    "pretrain": {
        "method": "simclr",
        "backbone": {"width": 0.125},
        "train": {"epochs": 1, "batch_size": 32, "progress": False},
    },
    "eval": {
        "datasets": ["synthetic"],
        "labelled": 64,
        "test_subset": 32,
        "probes": ["knn"],
        "knn": {"k": 5},
        "baselines": [],
    },
}
