"""`sslpoison run` with the SSL-Backdoor attack (and a defense), end to end on tiny data."""

from __future__ import annotations

import json

import pytest
import torch

from sslpoison.cli import main
from sslpoison.data.registry import load_dataset
from sslpoison.experiment.config import load_config
from sslpoison.experiment.stages import pretraining_data
from sslpoison.models import load_encoder
from sslpoison.models.io import read_state_dict

ATTACK = {
    "name": "ssl_backdoor",
    "target_class": "vertical",
    "poison": 0.5,
    "trigger": {"kind": "noise", "size": 5, "box": [0.25, 0.75]},
}


@pytest.fixture
def config(tiny_experiment) -> dict:
    cfg = tiny_experiment
    cfg["attack"] = dict(ATTACK)
    cfg["eval"]["probes"] = ["linear"]
    cfg["eval"]["baselines"] = []
    return cfg


DISTILL = {
    "name": "distill",
    "clean": 0.25,
    "bank": 128,
    "train": {"epochs": 2, "batch_size": 32, "progress": False},
}


@pytest.mark.slow
def test_ssl_backdoor_run_records_poisons_and_reports_fp(tmp_path, config, write_config):
    config["defenses"] = [{**DISTILL, "control": True}]
    path = write_config(config)
    assert main(["run", path, "--out", str(tmp_path / "a")]) == 0
    out = tmp_path / "a"
    results = json.loads((out / "results.json").read_text())
    m = results["metrics"]

    # The poisoned indices are saved with the run: exactly half of the target class.
    poison = json.loads((out / "poison.json").read_text())
    data = load_dataset("synthetic", "train")
    target = data.classes.index("vertical")
    assert poison["target_class"] == target and poison["count"] == 64
    assert poison["rate_of_target_class"] == 0.5 and poison["rate_of_set"] == 64 / 512
    indices = torch.tensor(poison["indices"])
    assert indices.unique().numel() == 64 and bool((data.labels[indices] == target).all())
    assert len(poison["corners"]) == 64
    assert results["artifacts"]["poison"] == str(out / "poison.json")

    # Two pre-trainings: the clean set and the poisoned set, under different keys.
    stages = results["stages"]
    assert stages["pretrain"]["cached"] is False and stages["pretrain_poisoned"]["cached"] is False
    assert stages["pretrain"]["key"] != stages["pretrain_poisoned"]["key"]
    assert stages["pretrain_poisoned"]["poison"]["count"] == 64

    # FP counts the triggered non-target test images called the target, ASR their share.
    non_target = int((load_dataset("synthetic", "test").labels != target).sum())
    for enc, fp, asr in (("clean", "fp_clean", "asr_b"), ("poisoned", "fp_poisoned", "asr")):
        assert isinstance(m[f"synthetic/{fp}"], int), enc
        assert m[f"synthetic/{fp}"] == round(m[f"synthetic/{asr}"] * non_target), enc
    for key in ("ca", "ba"):
        assert 0.5 <= m[f"synthetic/{key}"] <= 1.0

    # The defense: distilled from the poisoned encoder with 25 % of the clean images.
    distill = stages["defense:distill"]
    assert distill["clean_images"] == 128 and distill["student_init"] == "random"
    assert len(distill["losses"]) == 2
    assert m["distill/synthetic/fp"] == round(m["distill/synthetic/asr"] * non_target)
    assert 0.0 <= m["distill/synthetic/ba"] <= 1.0
    assert (out / "encoder-distill.safetensors").exists()

    # The control: the same distillation of the clean encoder, with the same clean images.
    control = stages["defense:distill_on_clean"]
    assert control["clean_images"] == 128 and control["key"] != distill["key"]
    assert m["distill_on_clean/synthetic/fp"] == round(
        m["distill_on_clean/synthetic/asr"] * non_target
    )
    cfg = load_config(path)
    defense = cfg.defenses[0]
    clean = load_encoder(f"{results['artifacts']['stage_cache']}/encoder.safetensors")
    data = pretraining_data(cfg.data, cfg.pretrain.image_text, cfg.seed)
    subset = defense.clean_subset(data, seed=cfg.seed)
    direct = defense.apply(clean, subset, seed=cfg.seed).encoder.state_dict()
    saved = read_state_dict(out / "encoder-distill_on_clean.safetensors")
    assert len(saved) > 10 and set(saved) <= set(direct)
    assert all(torch.equal(saved[k], direct[k]) for k in saved)

    # Confusion matrices: saved (rows = true class) and plotted.
    confusion = json.loads((out / "confusion.json").read_text())["synthetic"]
    triggered = confusion["triggered"]["vertical"]
    assert list(triggered) == ["clean", "attacked", "distill", "distill_on_clean"]
    for role, fp_key in (
        ("clean", "fp_clean"),
        ("attacked", "fp_poisoned"),
        ("distill", "distill/synthetic/fp"),
    ):
        matrix = torch.tensor(triggered[role])
        assert matrix.sum() == 512
        column = matrix[:, target].sum() - matrix[target, target]
        assert column == m[fp_key if "/" in fp_key else f"synthetic/{fp_key}"]
    assert (out / "confusion-synthetic-vertical.png").stat().st_size > 1000

    # The same config again reuses both encoders.
    assert main(["run", path, "--out", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "results.json").read_text())
    for stage in ("pretrain", "pretrain_poisoned", "defense:distill", "defense:distill_on_clean"):
        assert again["stages"][stage]["cached"], stage
    assert again["metrics"] == m

    # Turning the control off keeps the defense's cache entry and drops the control.
    config["defenses"] = [DISTILL]
    assert main(["run", write_config(config), "--out", str(tmp_path / "c")]) == 0
    plain = json.loads((tmp_path / "c" / "results.json").read_text())
    assert plain["stages"]["defense:distill"]["cached"]
    assert "defense:distill_on_clean" not in plain["stages"]
    assert plain["metrics"] == {k: v for k, v in m.items() if "_on_clean" not in k}

    # The defense's own seed: the experiment's by default (the same cache entry); another one
    # re-runs only the defense, on the cached encoders, and gives another student.
    config["defenses"] = [{**DISTILL, "seed": config["seed"]}]
    assert main(["run", write_config(config), "--out", str(tmp_path / "d")]) == 0
    same = json.loads((tmp_path / "d" / "results.json").read_text())["stages"]
    assert same["defense:distill"]["cached"] and same["defense:distill"]["key"] == distill["key"]
    config["defenses"] = [{**DISTILL, "seed": config["seed"] + 1}]
    assert main(["run", write_config(config), "--out", str(tmp_path / "e")]) == 0
    other = json.loads((tmp_path / "e" / "results.json").read_text())["stages"]
    assert other["pretrain"]["cached"] and other["pretrain_poisoned"]["cached"]
    reseeded = other["defense:distill"]
    assert not reseeded["cached"] and reseeded["key"] != distill["key"]
    assert reseeded["seed"] == config["seed"] + 1
    saved = read_state_dict(tmp_path / "e" / "encoder-distill.safetensors")
    first = read_state_dict(out / "encoder-distill.safetensors")
    assert not all(torch.equal(saved[k], first[k]) for k in first)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"target_class": "square"}, "attack.target_class: 'square' is not a class"),
        ({"poison": 1000}, "attack.poison: 1000 gives 1000 images, the target class has 128"),
        ({"trigger": {"size": 20}}, "attack.trigger: trigger size 20 px is larger"),
    ],
)
def test_bad_attack_fails_before_training(tmp_path, capsys, config, write_config, change, message):
    config["attack"].update(change)
    assert main(["run", write_config(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()


def test_ssl_backdoor_needs_its_dataset_in_eval(tmp_path, capsys, config, write_config):
    config["eval"]["datasets"] = ["digits"]
    assert main(["run", write_config(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "eval.datasets: ssl_backdoor is measured on 'synthetic', which is not in" in err
