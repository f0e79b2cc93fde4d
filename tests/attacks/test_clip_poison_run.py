"""`sslpoison run` with CLIP pre-training and its two poisoning attacks, end to end on tiny
synthetic data (four pattern classes, 512 pairs)."""

from __future__ import annotations

import json

import pytest
import torch

from sslpoison.cli import main
from sslpoison.data.captions import class_prompts
from sslpoison.data.registry import load_dataset
from sslpoison.ssl.clip import load_clip

CLIP_RUN = {
    "name": "tiny-clip",
    "seed": 0,
    "threads": 1,
    "data": {"dataset": "synthetic"},
    "pretrain": {
        "method": "clip",
        "method_args": {"embed_dim": 32},
        "backbone": {"width": 0.125},
        "text": {"width": 32, "layers": 1, "heads": 2, "context_length": 16},
        "train": {
            "epochs": 8,
            "batch_size": 64,
            "progress": False,
            "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
        },
    },
    "eval": {
        "datasets": ["synthetic"],
        "labelled": 256,
        "probes": ["linear"],
        "baselines": [],
        "probe": {"epochs": 20},
    },
}

BACKDOOR = {
    "name": "clip_backdoor",
    "target_class": "vertical",
    "poison": 40,
    "trigger": {"kind": "noise", "size": 5, "box": [0.0, 1.0]},
}


def run(tmp_path, write_config, cfg: dict, out: str) -> dict:
    assert main(["run", write_config(cfg), "--out", str(tmp_path / out)]) == 0
    return json.loads((tmp_path / out / "results.json").read_text())


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, data) -> float:
    """Zero-shot accuracy computed the plain way: per image, the class whose mean prompt
    embedding has the largest cosine with the image embedding."""
    model.eval()
    means = []
    for name in data.classes:
        emb = model.encode_text(tokenizer.encode(class_prompts(name)))
        means.append(emb.mean(0) / emb.mean(0).norm())
    images = model.encode_image(data.images.float() / 255)
    correct = 0
    for i in range(len(data)):
        scores = [float(images[i] @ m) for m in means]
        correct += int(max(range(len(scores)), key=scores.__getitem__) == int(data.labels[i]))
    return correct / len(data)


@pytest.mark.slow
def test_clip_backdoor_run(tmp_path, write_config) -> None:
    cfg = {**CLIP_RUN, "attack": BACKDOOR}
    results = run(tmp_path, write_config, cfg, "a")
    m = results["metrics"]
    for key in ("ca", "ba", "asr", "asr_b", "zs_acc", "zs_acc_clean", "zs_asr", "zs_asr_clean"):
        assert 0.0 <= m[f"synthetic/{key}"] <= 1.0, key
    # Well above chance (0.25), and the 40 poisoned pairs of 512 install the backdoor.
    assert m["synthetic/zs_acc_clean"] >= 0.5
    assert m["synthetic/zs_asr"] >= m["synthetic/zs_asr_clean"] + 0.2

    # The poisoned pairs are recorded: 40 images of other classes, with their patch corners.
    out = tmp_path / "a"
    poison = json.loads((out / "poison.json").read_text())
    train = load_dataset("synthetic", "train")
    target = train.classes.index("vertical")
    assert poison["count"] == 40 == len(poison["indices"]) == len(poison["corners"])
    assert poison["target_name"] == "vertical" and poison["rate_of_set"] == 40 / len(train)
    assert all(int(train.labels[i]) != target for i in poison["indices"])

    # The saved model is the poisoned one, and its zero-shot accuracy is the reported one.
    model, tokenizer = load_clip(out / "clip")
    test = load_dataset("synthetic", "test")
    assert zero_shot_accuracy(model, tokenizer, test) == pytest.approx(m["synthetic/zs_acc"])
    assert "zs ASR" in (out / "summary.md").read_text()

    again = run(tmp_path, write_config, cfg, "b")
    assert again["stages"]["pretrain"]["cached"] and again["stages"]["pretrain_poisoned"]["cached"]
    assert again["metrics"] == m


@pytest.mark.slow
def test_clip_targeted_run(tmp_path, write_config) -> None:
    cfg = {**CLIP_RUN, "attack": {"name": "clip_targeted", "pairs": 5, "trials": 4}}
    m = run(tmp_path, write_config, cfg, "t")["metrics"]
    out = tmp_path / "t"
    poison = json.loads((out / "poison.json").read_text())
    train, test = load_dataset("synthetic", "train"), load_dataset("synthetic", "test")
    assert poison["count"] == 20 and poison["trials"] == 4
    assert poison["indices"] == list(range(len(train), len(train) + 20))
    for t in poison["targeted"]:
        assert t["true_class"] == test.classes[int(test.labels[t["test_index"]])]
        assert t["target_class"] != t["true_class"]

    # The success rates are the share of trials whose image went to its adversarial label.
    trials = json.loads((out / "targeted.json").read_text())
    assert len(trials) == 4
    for column, key in [
        ("zero_shot_attacked", "targeted_success"),
        ("zero_shot_clean", "targeted_success_clean"),
        ("linear_attacked", "targeted_success_probe"),
        ("linear_clean", "targeted_success_probe_clean"),
    ]:
        flipped = sum(t[column] == t["target_class"] for t in trials)
        assert m[f"synthetic/{key}"] == pytest.approx(flipped / 4), key
    assert "synthetic/zs_asr" not in m  # no trigger, no backdoor metric


def test_clip_attack_config_errors(tmp_path, write_config, capsys) -> None:
    simclr = {**CLIP_RUN, "pretrain": {**CLIP_RUN["pretrain"], "method": "simclr"}}
    simclr["pretrain"].pop("text")
    simclr["pretrain"]["method_args"] = {}
    cases = [
        ({**simclr, "attack": BACKDOOR}, "pretrain.method"),
        (
            {
                **CLIP_RUN,
                "pretrain": {**CLIP_RUN["pretrain"], "augment": {"jitter": 0.4}},
            },
            "pretrain.augment.jitter",
        ),
        (
            {**CLIP_RUN, "pretrain": {**CLIP_RUN["pretrain"], "method_args": {"embdim": 8}}},
            "pretrain.method_args.embdim",
        ),
        ({**CLIP_RUN, "attack": {"name": "clip_targeted", "trials": 2, "images": [1]}}, "images"),
        ({**CLIP_RUN, "attack": {**BACKDOOR, "poison": 5000}}, "attack.poison"),
    ]
    for cfg, named in cases:
        assert main(["run", write_config(cfg), "--out", str(tmp_path / "x")]) == 2
        assert named in capsys.readouterr().err
        assert not (tmp_path / "x" / "results.json").exists()
