"""`sslpoison run` with a BadEncoder attack, end to end on tiny synthetic data."""

from __future__ import annotations

import json

import pytest

from sslpoison.cli import main


@pytest.fixture
def config(tiny_experiment, tiny_badencoder) -> dict:
    """The tiny experiment with a BadEncoder attack and the backdoor evaluation."""
    cfg = tiny_experiment
    cfg["attack"] = tiny_badencoder
    cfg["eval"]["probes"] = ["mlp", "linear"]
    cfg["eval"]["baselines"] = []
    return json.loads(json.dumps(cfg))  # a deep copy


@pytest.mark.slow
def test_badencoder_run_backdoors_and_keeps_utility(tmp_path, config, write_config):
    path = write_config(config)
    assert main(["run", path, "--out", str(tmp_path / "a")]) == 0
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    m = results["metrics"]
    for key in ("ca", "ba", "asr", "asr_b", "ca_linear", "ba_linear", "asr_linear", "asr_b_linear"):
        assert 0.0 <= m[f"synthetic/{key}"] <= 1.0
    # Measured: ASR 0.97, ASR-B 0.01, CA 0.975, BA 0.955.
    assert m["synthetic/asr"] >= 0.9 and m["synthetic/asr_b"] <= 0.1
    assert abs(m["synthetic/ca"] - m["synthetic/ba"]) <= 0.05
    # The triggered images go to the target, which the probe also calls the reference.
    assert m["synthetic/top_class"] == 1 and m["synthetic/top_share"] == m["synthetic/asr"]
    assert m["synthetic/ref_target"] == 1.0 and m["synthetic/ref_target_b"] == 1.0
    attack = results["stages"]["attack"]
    assert attack["cached"] is False and attack["shadow_images"] == 256
    (target,) = attack["targets"]
    assert target["class_name"] == "vertical" and len(target["reference_indices"]) == 3
    assert "collapsed" not in (tmp_path / "a" / "summary.md").read_text()
    assert len(attack["loss_terms"]) == 10
    picture = results["artifacts"]["trigger:synthetic/vertical"]
    assert picture.endswith("trigger-synthetic-vertical.png")
    assert (tmp_path / "a" / "trigger-synthetic-vertical.png").exists()

    assert main(["run", path, "--out", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "results.json").read_text())
    assert again["stages"]["attack"]["cached"] is True
    assert again["metrics"] == m


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dataset": "digits"}, "attack.targets.0.dataset: 'digits' is not in eval.datasets"),
        ({"target_class": 7}, "attack.targets.0.target_class: 7 is outside"),
        ({"trigger": {"size": 20}}, "attack.targets.0.trigger: trigger size 20 px is larger"),
    ],
)
def test_bad_targets_fail_before_training(tmp_path, capsys, config, write_config, change, message):
    config["attack"]["targets"][0].update(change)
    assert main(["run", write_config(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()


def test_a_given_state_dict_is_attacked_without_pre_training(
    tmp_path, capsys, caplog, config, write_config
):
    import logging

    import torch

    from sslpoison.models import build_backbone
    from sslpoison.utils import module_hash

    caplog.set_level(logging.INFO)
    torch.manual_seed(0)
    foreign = build_backbone("resnet18", width=0.125, in_channels=1)
    torch.save({f"module.{k}": v for k, v in foreign.state_dict().items()}, tmp_path / "enc.pt")
    config["pretrain"]["train"]["epochs"] = 10_000  # would never finish if it ran
    path = str(tmp_path / "enc.pt")
    config["encoder"] = {"source": "file", "path": path, "key_map": {r"^module\.": ""}}
    config["attack"]["train"]["epochs"] = 1
    assert main(["run", write_config(config), "--out", str(tmp_path / "a")]) == 0
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    given = results["stages"]["pretrain"]["given"]
    assert (given["path"], given["layout"], given["arch"]) == (path, "sslpoison", "resnet18")
    assert given["weights"] == module_hash(foreign)
    assert results["stages"]["attack"]["cached"] is False
    assert "synthetic/asr" in results["metrics"]
    assert "encoder: given, so it takes precedence" in caplog.text

    config["encoder"]["key_map"] = {}
    assert main(["run", write_config(config), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "encoder:" in err and "fit no known layout" in err and "module.layer1" in err
    assert not (tmp_path / "b").exists()


def test_the_old_attack_encoder_keys_point_at_encoder(tmp_path, capsys, config, write_config):
    config["attack"]["encoder"] = "x.pt"
    assert main(["run", write_config(config), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "attack.encoder moved to the top-level encoder: section" in err[0]
