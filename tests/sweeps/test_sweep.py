"""`sslpoison sweep`: one run per grid combination, one table, resumable."""

from __future__ import annotations

import json

import pytest
import yaml

from sslpoison.cli import main
from sslpoison.sweeps.sweep import ReachSpec, combinations, format_reach, run_name


def test_combinations_vary_the_first_key_slowest():
    combos = combinations({"a": [1, 2], "b.c": ["x", "y", "z"]})
    assert len(combos) == 6
    assert combos[0] == {"a": 1, "b.c": "x"} and combos[3] == {"a": 2, "b.c": "x"}
    assert run_name(3, combos[3]) == "03-a=2,c=x"
    assert run_name(0, {"t.box": [0.1, 0.9], "n": "Ankle boot"}) == "00-box=_0.1,_0.9_,n=Ankle_boot"


@pytest.fixture
def sweep_file(tmp_path, tiny_experiment, write_config):
    tiny_experiment["pretrain"]["train"]["epochs"] = 1
    tiny_experiment["eval"]["probes"] = ["linear"]
    tiny_experiment["eval"]["baselines"] = []
    base = write_config(tiny_experiment)
    sweep = {
        "name": "labels",
        "base": base,
        "grid": {"eval.labelled": [64, 256], "eval.probe.epochs": [5]},
        "metrics": ["synthetic/linear_acc"],
        "plot": {"x": "eval.labelled", "y": ["synthetic/linear_acc"]},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_sweep_runs_every_combination_once(tmp_path, capsys, sweep_file):
    out = tmp_path / "out"
    assert main(["sweep", str(sweep_file), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| eval.labelled | eval.probe.epochs | synthetic/linear_acc | minutes |" in table
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["eval.labelled"] for r in rows] == [64, 256]
    for r in rows:
        results = json.loads((out / r["run"] / "results.json").read_text())
        assert results["config"]["eval"]["labelled"] == r["eval.labelled"]
        assert results["metrics"]["synthetic/linear_acc"] == r["synthetic/linear_acc"]
    first = json.loads((out / rows[0]["run"] / "results.json").read_text())
    second = json.loads((out / rows[1]["run"] / "results.json").read_text())
    assert first["stages"]["pretrain"]["cached"] is False
    assert second["stages"]["pretrain"]["cached"] is True  # the shared encoder, once
    assert (out / "sweep.png").stat().st_size > 1000

    (out / rows[1]["run"] / "results.json").unlink()  # as if interrupted in the last run
    before = (out / rows[0]["run"] / "results.json").stat().st_mtime_ns
    assert main(["sweep", str(sweep_file), "--out", str(out)]) == 0
    assert (out / rows[0]["run"] / "results.json").stat().st_mtime_ns == before
    assert (out / rows[1]["run"] / "results.json").exists()


def test_a_bad_grid_value_fails_before_any_run(tmp_path, capsys, sweep_file):
    sweep = yaml.safe_load(sweep_file.read_text())
    sweep["grid"]["eval.labelled"] = [64, -1]
    sweep_file.write_text(yaml.safe_dump(sweep))
    assert main(["sweep", str(sweep_file), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "sweep run {'eval.labelled': -1, 'eval.probe.epochs': 5}: eval.labelled" in err
    assert not (tmp_path / "out").exists()


def test_format_reach_names_the_smallest_value_per_setting():
    rows = [
        {"attack.poison": p, "attack.trigger.size": s, "asr": a}
        for p, s, a in [(10, 4, 0.1), (50, 4, 0.6), (100, 4, 0.9), (10, 8, 0.7), (50, 8, 0.4)]
    ]
    rows.append({"attack.poison": 100, "attack.trigger.size": 8, "asr": None})
    spec = ReachSpec(x="attack.poison", y="asr", at=0.5)
    lines = format_reach(rows, spec, ["attack.poison", "attack.trigger.size"]).splitlines()
    assert lines == [
        "smallest attack.poison with asr ≥ 0.5 (attack.trigger.size=4): 50",
        "smallest attack.poison with asr ≥ 0.5 (attack.trigger.size=8): 10",
    ]
    low = [{"attack.poison": p, "asr": 0.2} for p in (10, 30)]
    assert format_reach(low, spec, ["attack.poison"]) == (
        "asr stayed below 0.5 up to attack.poison = 30"
    )
