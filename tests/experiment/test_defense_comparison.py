"""`sslpoison run` with a BadEncoder attack, every encoder defense and the DECREE detector,
end to end on tiny synthetic data: the comparison's keys, costs, table, plot and cache (the
filters of pre-training and downstream data have their own end-to-end tests)."""

from __future__ import annotations

import json

import pytest

from sslpoison.cli import main
from sslpoison.defenses import DEFENSES
from sslpoison.hooks import Hook

TRAIN = {
    "epochs": 2,
    "batch_size": 16,
    "progress": False,
    "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
}
DEFENSE_LIST = [
    {"name": "mimic", "clean": 64, "mi": {"epochs": 1, "hidden": 16}, "train": TRAIN},
    {"name": "distill", "clean": 64, "bank": 64, "train": TRAIN},
    {"name": "feature_distill", "clean": 64, "train": TRAIN},
    {"name": "finetune", "clean": 64, "train": TRAIN},
    {"name": "fineprune", "clean": 64, "prune": 0.5, "train": TRAIN},
]
#: Every registered defense that acts on the encoder.
ENCODER_DEFENSES = {name for name, d in DEFENSES.items() if d.hook is Hook.ENCODER}
DECREE = {
    "name": "decree",
    "clean": 64,
    "train": {"epochs": 2, "batch_size": 32, "progress": False},
}


@pytest.fixture
def config(tiny_experiment, tiny_badencoder) -> dict:
    cfg = tiny_experiment
    cfg["attack"] = tiny_badencoder
    cfg["defenses"] = DEFENSE_LIST
    cfg["detectors"] = [DECREE]
    cfg["eval"]["probes"] = ["linear"]
    cfg["eval"]["baselines"] = []
    return json.loads(json.dumps(cfg))


def test_the_list_covers_every_defense():
    assert {d["name"] for d in DEFENSE_LIST} == ENCODER_DEFENSES


@pytest.mark.slow
def test_every_defense_and_the_detector_are_measured_and_cached(
    tmp_path, capsys, config, write_config
):
    path = write_config(config)
    assert main(["run", path, "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    m, stages = results["metrics"], results["stages"]
    for d in ENCODER_DEFENSES:
        assert 0.0 <= m[f"{d}/synthetic/ba"] <= 1.0 and 0.0 <= m[f"{d}/synthetic/asr"] <= 1.0
        record = stages[f"defense:{d}"]
        assert record["clean_images"] == 64 and record["wall_s"] > 0
        assert f"\n{'synthetic'}  {d}" in printed or f"synthetic  {d}" in printed
        assert (tmp_path / "a" / f"encoder-{d}.safetensors").exists()
    assert set(stages["defense:mimic"]["mi"]) == {"layer1", "layer2", "layer3", "layer4"}
    for role in ("clean", "attacked"):
        assert m[f"decree/{role}_flagged"] in (0, 1)
        assert m[f"decree/{role}_pl1"] == pytest.approx(m[f"decree/{role}_norm"] / (16 * 16))
        assert (tmp_path / "a" / f"decree-{role}.png").exists()
    assert "decree: attacked encoder judged" in printed
    summary = (tmp_path / "a" / "summary.md").read_text()
    assert "mimic" in summary and "fineprune" in summary and "time s" in summary
    assert (tmp_path / "a" / "defenses.png").stat().st_size > 0

    assert main(["run", path, "--out", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "results.json").read_text())
    assert all(r["cached"] for k, r in again["stages"].items() if k.startswith(("defense", "det")))
    assert again["metrics"] == m


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"detectors": [DECREE, DECREE]}, "detectors.1.name: 'decree' is listed twice"),
        ({"detectors": [{"name": "nope"}]}, "detectors.0"),
        ({"detectors": [{**DECREE, "threshold": -1}]}, "detectors.0.threshold"),
        ({"defenses": [{"name": "mimic", "clean": 0}]}, "defenses.0.clean"),
        ({"defenses": [{"name": "fineprune", "prune": 2}]}, "defenses.0.prune"),
    ],
)
def test_bad_sections_fail_naming_the_key(tmp_path, capsys, config, write_config, change, message):
    config.update(change)
    assert main(["run", write_config(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()
