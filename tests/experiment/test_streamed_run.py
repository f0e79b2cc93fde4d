"""`sslpoison run` with CLIP pairs streamed from WebDataset shards (``data.dataset:
webdataset``), end to end on tiny shards the test writes: the backdoor's pairs are named by
key, the stages are keyed by the shards (a second run reuses them), and what streaming
cannot do is refused at load time."""

from __future__ import annotations

import copy
import json

import pytest

from shard_files import write_shards
from sslpoison.cli import main
from sslpoison.data.captions import caption_imageset
from sslpoison.data.synthetic import synthetic
from sslpoison.experiment.config import ConfigError, load_config
from tiny_runs import TINY_RUN


def streamed_run(shards: str) -> dict:
    return {
        "name": "tiny-stream",
        "seed": 0,
        "threads": 1,
        "data": {
            "dataset": "webdataset",
            "shards": shards,
            "size": 16,
            "channels": 3,
            "workers": 0,
            "shuffle_buffer": 16,
        },
        "pretrain": {
            "method": "clip",
            "method_args": {"embed_dim": 16},
            "backbone": {"arch": "resnet10", "width": 0.125, "stem_stride": 2},
            "text": {"width": 16, "layers": 1, "heads": 2, "context_length": 12},
            "train": {"epochs": 1, "batch_size": 32, "progress": False, "amp_cpu": False},
        },
        "attack": {
            "name": "clip_backdoor",
            "dataset": "synthetic",
            "target_class": "vertical",
            "poison": 8,
            "trigger": {"kind": "noise", "size": 4},
        },
        "eval": copy.deepcopy(TINY_RUN["eval"]),
    }


@pytest.fixture
def shards(tmp_path) -> str:
    pairs = caption_imageset(synthetic(n=64, num_classes=4, size=16, channels=3, seed=0), 0)
    return write_shards(pairs, tmp_path / "shards", per_shard=16)


def test_a_streamed_clip_run_poisons_by_key_and_reuses_its_stages(tmp_path, shards, write_config):
    path = write_config(streamed_run(shards))
    assert main(["run", path, "--out", str(tmp_path / "a")]) == 0
    poison = json.loads((tmp_path / "a" / "poison.json").read_text())
    assert poison["count"] == 8 and len(poison["keys"]) == 8
    for index, key in zip(poison["indices"], poison["keys"], strict=True):
        assert key == f"{index // 16:05d}.tar/{index:06d}"  # position in the shards' order
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    stages = results["stages"]
    assert not stages["pretrain"]["cached"] and not stages["pretrain_poisoned"]["cached"]
    assert stages["pretrain_poisoned"]["poison"]["count"] == 8
    assert results["config"]["data"]["shards"] == shards
    assert 0.0 <= results["metrics"]["synthetic/zs_asr"] <= 1.0

    assert main(["run", path, "--out", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "results.json").read_text())["stages"]
    assert again["pretrain"]["cached"] and again["pretrain_poisoned"]["cached"]
    assert again["pretrain"]["key"] == stages["pretrain"]["key"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"data": {"dataset": "webdataset", "size": 16}}, "data.shards"),
        ({"data": {"dataset": "webdataset", "shards": "x.tar"}}, "data.size"),
        ({"data": {"dataset": "synthetic", "shards": "x.tar"}}, "data.shards: only for"),
        ({"pretrain": {"method": "simclr"}}, "pretrain.method"),
        ({"attack": {"name": "clip_backdoor", "target_class": 0}}, "attack.dataset"),
        ({"defenses": [{"name": "finetune"}]}, "defenses: takes images"),
    ],
)
def test_what_streamed_pairs_cannot_do_is_named_at_load_time(change, named, write_config):
    cfg = streamed_run("/data/{0..3}.tar")
    cfg.update(change)
    with pytest.raises(ConfigError, match=named):
        load_config(write_config(cfg))


def test_missing_shards_are_named_before_any_training(tmp_path, write_config, capsys):
    cfg = streamed_run(str(tmp_path / "none-{00..03}.tar"))
    assert main(["run", write_config(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "data.shards" in err and "none-00.tar" in err
