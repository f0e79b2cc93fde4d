"""A downstream-data attack written and registered here, outside the library, runs end to end
through `sslpoison run`: the pipeline and the experiment schema need no change for it."""

from __future__ import annotations

import json
from typing import Literal

import pytest
import torch
from pydantic import Field

from sslpoison.attacks import ATTACKS, DownstreamDataAttack, Measured
from sslpoison.cli import main
from sslpoison.data.imageset import ImageSet
from sslpoison.eval import accuracy, poison_rates
from sslpoison.eval.downstream import train_predictor
from sslpoison.eval.rows import CLEAN, Row
from sslpoison.experiment.config import ConfigError, load_config
from sslpoison.poisoning import PoisonedSet


class ShareFlip(DownstreamDataAttack):
    """Gives ``share`` of each downstream training set (seeded) the next class's label."""

    name: Literal["share_flip"] = "share_flip"
    share: float = Field(0.8, gt=0, le=1)

    def poison_downstream(self, encoder, train: ImageSet, seed: int = 0) -> PoisonedSet:
        n = round(self.share * len(train))
        picked = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
        indices = picked.sort().values
        labels = train.labels.clone()
        labels[indices] = (labels[indices] + 1) % train.num_classes
        flipped = ImageSet(train.images, labels, list(train.classes), train.captions, train.name)
        return PoisonedSet(flipped, indices, poison_rates(n, len(train)), list(train.classes))

    def measure(self, outcome) -> Measured:
        """``<dataset>/flipped`` (a count) and ``<dataset>/acc_flipped``: the accuracy of a
        linear probe of the clean encoder trained on the flipped labels."""
        rows, encoder = [], outcome.encoders[CLEAN]
        for name, poisoned in outcome.poisoned_downstream.items():
            train, test = poisoned.data, outcome.downstream.test(name)
            f_train = outcome.features.get(encoder, train)
            y_train = train.labels.to(f_train.device)
            predict = train_predictor("linear", f_train, y_train, train.num_classes, outcome.cfg)
            acc = accuracy(predict(outcome.features.get(encoder, test)), test.labels)
            count = int(poisoned.indices.numel())
            rows.append(Row(name, CLEAN, "linear", "acc_flipped", acc, f"{name}/acc_flipped"))
            rows.append(Row(name, CLEAN, "linear", "flipped", count, f"{name}/flipped"))
        return Measured(rows)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(ATTACKS, "share_flip", ShareFlip)


@pytest.fixture
def config(tiny_experiment) -> dict:
    cfg = tiny_experiment
    cfg["attack"] = {"name": "share_flip", "share": 0.8}
    cfg["eval"]["probes"] = ["linear"]
    cfg["eval"]["baselines"] = []
    return cfg


@pytest.mark.slow
def test_a_registered_downstream_attack_runs_end_to_end(tmp_path, registered, config, write_config):
    assert main(["run", write_config(config), "--out", str(tmp_path / "a")]) == 0
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    m = results["metrics"]
    assert m["synthetic/flipped"] == round(0.8 * 256)
    # The clean encoder separates the classes; a probe taught the next class's name for 80 %
    # of each class mostly names the next class.
    assert m["synthetic/linear_acc"] >= 0.8
    assert m["synthetic/acc_flipped"] <= m["synthetic/linear_acc"] - 0.5
    assert results["config"]["attack"] == {"name": "share_flip", "share": 0.8}
    assert "poison_downstream" in results["timings"]
    assert "attack" not in results["stages"] and "pretrain_poisoned" not in results["stages"]
    assert "synthetic/acc_flipped" in (tmp_path / "a" / "summary.md").read_text()
    assert (tmp_path / "a" / "encoder.safetensors").exists()  # the clean one: no other


def test_a_registered_attack_is_checked_like_the_others(registered, config, write_config):
    config["attack"]["share"] = 2
    with pytest.raises(ConfigError, match=r"attack\.share: Input should be less than or equal"):
        load_config(write_config(config))
    config["attack"]["share"] = 0.5
    config["defenses"] = [{"name": "distill"}]
    with pytest.raises(
        ConfigError, match="defenses: distill defends an encoder, but share_flip poisons the downs"
    ):
        load_config(write_config(config))
    config["attack"]["name"] = "share_flop"
    with pytest.raises(
        ConfigError, match=r"attack: unknown name 'share_flop' \(known: .*share_flip"
    ):
        load_config(write_config(config))


def test_an_unregistered_attack_is_unknown(config, write_config):
    assert "share_flip" not in ATTACKS
    with pytest.raises(ConfigError, match="attack: unknown name 'share_flip'"):
        load_config(write_config(config))
