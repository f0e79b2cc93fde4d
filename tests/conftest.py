"""Shared fixtures: small synthetic data, and an isolated data/cache environment."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import yaml

from sslpoison.data.synthetic import synthetic
from sslpoison.train import precision


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own stage cache and results store; CPU threads are kept modest
    (2, or ``SSLPOISON_TEST_THREADS``);
    ``amp_cpu: auto`` resolves to fp32 on every machine (the numbers a test expects must not
    depend on whether the CPU has native bf16; tests of the precision choice patch this
    themselves)."""
    monkeypatch.setenv("SSLPOISON_CACHE", str(tmp_path_factory.mktemp("cache")))
    store = tmp_path_factory.mktemp("store") / "results.sqlite"
    monkeypatch.setenv("SSLPOISON_RESULTS", str(store))
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    torch.set_num_threads(int(os.environ.get("SSLPOISON_TEST_THREADS", "2")))


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


#: The words of :func:`write_clip_tokenizer`'s vocabulary (a caption template and the class
#: names of the synthetic set).
CLIP_WORDS = ["a", "photo", "of", "the", "vertical", "horizontal", "grid", "plaid", "dots"]
CLIP_WORDS += ["checker", "diagonal", "stripes", "ring", "blob", "cross", "gradient", "noise"]


def write_clip_tokenizer(folder) -> int:
    """A tiny CLIP BPE tokenizer (``vocab.json`` + ``merges.txt``: letters, then merges that
    build each of :data:`CLIP_WORDS`) saved as a Hugging Face tokenizer in ``folder``;
    returns the vocabulary size."""
    import json
    from pathlib import Path

    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = sorted(set("".join(CLIP_WORDS)))
    vocab = {c: i for i, c in enumerate(chars)}
    vocab |= {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    merges: list[str] = []
    for word in CLIP_WORDS:
        tokens = [*word[:-1], word[-1] + "</w>"]
        while len(tokens) > 1:
            merges.append(f"{tokens[0]} {tokens[1]}")
            vocab.setdefault(tokens[0] + tokens[1], len(vocab))
            tokens = [tokens[0] + tokens[1], *tokens[2:]]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    merges = list(dict.fromkeys(merges))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer.save_pretrained(str(folder))
    return len(vocab)


@pytest.fixture
def tiny_clip_folder(tmp_path_factory):
    """``make(channels=3, size=16, text=True, seed=0) -> folder``: a Hugging Face CLIP model
    folder written with ``save_pretrained`` (random weights: a 2-block ViT of width 32 on
    16-px images in 4-px patches, a 24-d joint space) with its tokenizer, or a
    CLIPVisionModelWithProjection alone (``text=False``)."""
    transformers = pytest.importorskip("transformers")

    def make(channels: int = 3, size: int = 16, text: bool = True, seed: int = 0):
        folder = tmp_path_factory.mktemp("hf-clip")
        vocab = write_clip_tokenizer(folder) if text else 100
        vision = dict(
            hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            image_size=size, patch_size=4, num_channels=channels,
        )  # fmt: skip
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            if text:
                config = transformers.CLIPConfig(
                    text_config=dict(
                        hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, vocab_size=vocab, max_position_embeddings=77,
                        bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1,
                    ),
                    vision_config=vision,
                    projection_dim=24,
                )  # fmt: skip
                model = transformers.CLIPModel(config)
            else:
                config = transformers.CLIPVisionConfig(**vision, projection_dim=24)
                model = transformers.CLIPVisionModelWithProjection(config)
        from sslpoison.models.hf import quiet_transformers

        with quiet_transformers():  # no progress bars on stderr, which tests read
            model.save_pretrained(str(folder))
        return folder

    return make


@pytest.fixture
def make_run(tmp_path):
    """``make_run(folder, rows, seed=0, wall=60, **config changes) -> path``: a hand-made run
    folder under ``tmp_path`` (``tests/results/handmade.py``'s ``write_run``)."""
    from handmade import write_run  # tests/results, on the path while its tests run

    def make(folder, rows, seed=0, wall=60.0, **changes):
        return write_run(tmp_path, folder, rows, seed, wall, **changes)

    return make
