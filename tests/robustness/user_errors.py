"""What every robustness case asserts, and the tiny run they start from."""

from __future__ import annotations

from pathlib import Path

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


def assert_user_error(code: int, err: str, *names: object) -> str:
    """A user error: exit 2 and exactly one stderr line, ``error: ...``, naming each of
    ``names`` (a file, a key); returns the line."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for name in names:
        assert str(name) in lines[0], f"{name!r} not named in: {lines[0]}"
    return lines[0]


def trained_stages(cache: Path) -> list[Path]:
    """The pre-training stage folders in ``cache`` (training started if any exist)."""
    return sorted((cache / "pretrain").glob("*")) if (cache / "pretrain").exists() else []
