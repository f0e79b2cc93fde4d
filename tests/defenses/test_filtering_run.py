"""Adding a defense is one file and a test: a toy filter of the pre-training data, written and
registered here, outside the library, runs end to end through `sslpoison run` — scored
against the planted poisons, pre-trained again on what it keeps, evaluated next to the clean
and the poisoned encoder — without any change to the pipeline, the schema or the reports."""

from __future__ import annotations

import json
from typing import ClassVar, Literal

import pytest
import torch
from pydantic import Field

from sslpoison.cli import main
from sslpoison.defenses import DEFENSES, PretrainingDataDefense
from sslpoison.defenses.clusters import suspect_features
from sslpoison.eval.metrics import filter_scores
from sslpoison.experiment.config import ConfigError, load_config
from sslpoison.poisoning import Filtered


class FarFromTheMean(PretrainingDataDefense):
    """Removes the ``share`` of the set whose suspect features lie farthest from their mean."""

    name: Literal["far_from_mean"] = "far_from_mean"
    title: ClassVar[str] = "far from the mean (a toy)"
    share: float = Field(0.2, gt=0, le=1)

    def filter(self, data, suspect, seed=0, *, context=None) -> Filtered:
        features = suspect_features(suspect, data)
        scores = (features - features.mean(0)).norm(dim=1)
        kept = torch.ones(len(data), dtype=torch.bool)
        kept[scores.topk(round(self.share * len(data))).indices] = False
        return Filtered(kept, scores, {"share": self.share})


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(DEFENSES, "far_from_mean", FarFromTheMean)


ATTACK = {
    "name": "ssl_backdoor",
    "target_class": "vertical",
    "poison": 0.5,
    "trigger": {"kind": "noise", "size": 5, "box": [0.25, 0.75]},
}


@pytest.fixture
def config(tiny_experiment) -> dict:
    cfg = tiny_experiment
    cfg["pretrain"]["train"]["epochs"] = 2
    cfg["eval"] |= {"probes": ["linear"], "baselines": []}
    cfg["defenses"] = [{"name": "far_from_mean", "share": 0.25}]
    return cfg


@pytest.mark.slow
def test_a_registered_filter_runs_end_to_end(tmp_path, registered, config, write_config, capsys):
    config["attack"] = dict(ATTACK)
    out = tmp_path / "a"
    assert main(["run", write_config(config), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    m, stages = results["metrics"], results["stages"]

    # Scored against the poisons the attack planted (poison.json), from what it removed.
    planted = torch.tensor(json.loads((out / "poison.json").read_text())["indices"])
    removed = json.loads((out / "filtered-far_from_mean.json").read_text())["removed_indices"]
    assert len(removed) == 128 == m["far_from_mean/removed"]  # 25 % of 512
    kept = torch.ones(512, dtype=torch.bool)
    kept[removed] = False
    recall = len(set(removed) & set(planted.tolist())) / 64
    assert m["far_from_mean/poison_recall"] == pytest.approx(recall)
    expected = filter_scores(kept, torch.zeros(512), planted)
    assert m["far_from_mean/poison_precision"] == pytest.approx(expected["poison_precision"])
    assert m["far_from_mean/clean_removed"] == pytest.approx(expected["clean_removed"])
    assert 0 <= m["far_from_mean/poison_auroc"] <= 1

    # Pre-trained again, with the same recipe, on the 384 it kept; evaluated like a defense.
    assert stages["pretrain:far_from_mean"]["filtered_by"] == "far_from_mean"
    assert stages["pretrain:far_from_mean"]["kept"] == 384
    keys = {stages[k]["key"] for k in ("pretrain", "pretrain_poisoned", "pretrain:far_from_mean")}
    assert len(keys) == 3
    for metric in ("ba", "asr", "fp"):  # FP: SSL-Backdoor's own metric, after re-training
        assert f"far_from_mean/synthetic/{metric}" in m
    assert m["far_from_mean/filter_s"] >= 0 and m["far_from_mean/retrain_s"] > 0
    summary = (out / "summary.md").read_text()
    assert "far_from_mean" in summary and "precision" in summary
    assert "far from the mean (a toy)" in summary  # the title, from the class
    assert (out / "encoder-far_from_mean.safetensors").exists()

    # Run again: the filter and the pre-training on what it kept come from the cache.
    again = tmp_path / "b"
    assert main(["run", write_config(config), "--out", str(again)]) == 0
    stages = json.loads((again / "results.json").read_text())["stages"]
    assert stages["defense:far_from_mean"]["cached"] and stages["pretrain:far_from_mean"]["cached"]
    assert json.loads((again / "results.json").read_text())["metrics"] == m

    # Without an attack (the clean pre-training comes from the cache): the filter's cost.
    del config["attack"]
    out = tmp_path / "c"
    assert main(["run", write_config(config), "--out", str(out)]) == 0
    m = json.loads((out / "results.json").read_text())["metrics"]
    assert m["far_from_mean/clean_removed"] == pytest.approx(0.25)
    assert "far_from_mean/poison_precision" not in m  # n/a: nothing was planted
    assert "synthetic/linear_acc_far_from_mean" in m and "synthetic/linear_acc" in m

    # A filter that would remove everything is an error naming the defense.
    config["defenses"][0]["share"] = 1.0
    assert main(["run", write_config(config), "--out", str(tmp_path / "d")]) == 2
    assert "defenses: far_from_mean would remove all 512" in capsys.readouterr().err


def test_a_registered_filter_is_checked_like_the_others(registered, config, write_config):
    config["defenses"][0]["share"] = 2
    with pytest.raises(ConfigError, match=r"defenses\.0\.share: Input should be less than"):
        load_config(write_config(config))
    config["defenses"][0]["share"] = 0.5
    config["attack"] = {"name": "label_flip"}
    with pytest.raises(ConfigError, match="far_from_mean filters the pre-training data, but"):
        load_config(write_config(config))


def test_an_unregistered_filter_is_unknown(config, write_config):
    with pytest.raises(ConfigError, match=r"defenses\.0: unknown name 'far_from_mean'"):
        load_config(write_config(config))
