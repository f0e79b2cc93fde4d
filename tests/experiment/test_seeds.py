"""Repetitions over seeds: the aggregate of hand-made per-seed results, what a repetition's
seed drives (``vary``), resuming, the sweep's mean ± std, and a tiny run over three seeds end
to end whose do-nothing attack's null control equals its effect."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Literal

import pytest
import torch
import yaml
from test_preset_keys import preset_keys

from sslpoison.attacks import ATTACKS
from sslpoison.attacks.indiscriminate import Crafted, IndiscriminateAttack
from sslpoison.attacks.label_flip import pick_base
from sslpoison.cli import main
from sslpoison.eval.backdoor import backdoor_row
from sslpoison.eval.rows import CLEAN, Row
from sslpoison.experiment.config import ConfigError, ExperimentConfig, load_config
from sslpoison.experiment.results import Results, write_results
from sslpoison.experiment.seeds import (
    aggregate,
    control_verdicts,
    missing_keys,
    repetition_config,
    run_seeds,
)
from sslpoison.results.store import ResultsStore, read_run, run_folders
from sslpoison.sweeps.sweep import load_sweep, run_sweep

#: A run that pre-trains and evaluates in about a second on the synthetic set.
MICRO = {
    "name": "micro",
    "seed": 0,
    "data": {"dataset": "synthetic", "subset": 64},
    "pretrain": {
        "method": "simclr",
        "backbone": {"width": 0.125},
        "augment": {"crop_scale": [0.5, 1.0]},
        "train": {
            "epochs": 1,
            "batch_size": 32,
            "progress": False,
            "checkpoint_every": 0,
            "optimizer": {"name": "sgd", "lr": 0.1},
        },
    },
    "eval": {
        "datasets": ["synthetic"],
        "labelled": 64,
        "test_subset": 64,
        "probes": ["linear"],
        "baselines": [],
        "probe": {"l2_grid": [1e-3], "max_iter": 50},
    },
}


def micro(**changes) -> dict:
    return copy.deepcopy(MICRO) | changes


# --- the aggregate, by hand ------------------------------------------------------------------


def test_the_aggregate_of_hand_made_seeds():
    per_seed = {
        0: {"d/asr": 0.9, "d/fp": 10, "d/only_here": 0.5},
        1: {"d/asr": 0.8, "d/fp": 12},
        2: {"d/asr": 1.0, "d/fp": 17},
    }
    agg = aggregate(per_seed)
    assert list(agg) == ["d/asr", "d/fp", "d/only_here"]
    asr = agg["d/asr"]
    assert set(asr) == {"mean", "std", "n", "values"}
    assert asr["mean"] == pytest.approx(0.9) and asr["n"] == 3
    assert asr["std"] == pytest.approx(0.1)  # sample std: √(0.02 / 2)
    assert asr["values"] == [0.9, 0.8, 1.0]  # in seed order
    fp = agg["d/fp"]
    assert fp["values"] == [10, 12, 17] and all(type(v) is int for v in fp["values"])
    assert fp["mean"] == pytest.approx(13.0)
    assert fp["std"] == pytest.approx(math.sqrt((9 + 1 + 16) / 2))
    assert agg["d/only_here"] == {"mean": 0.5, "std": None, "n": 1, "values": [0.5]}
    assert missing_keys(per_seed) == {"d/only_here": [1, 2]}


# --- what a repetition's seed drives --------------------------------------------------------


def test_a_repetition_pins_the_groups_that_do_not_vary():
    cfg = ExperimentConfig.model_validate(micro(seed=7, seeds=[0, 1], vary=["attack", "eval"]))
    one = repetition_config(cfg, 1)
    assert one.seed == 1 and one.seeds is None
    assert [one.seed_of(g) for g in ("pretrain", "attack", "eval")] == [7, 1, 1]
    every = ExperimentConfig.model_validate(micro(seeds=[0, 1]))
    assert repetition_config(every, 1).stage_seeds is None  # all three vary: seed 1 everywhere
    plain = ExperimentConfig.model_validate(micro(seed=3))
    assert [plain.seed_of(g) for g in ("pretrain", "attack", "eval")] == [3, 3, 3]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"seeds": [0, 1, 0]}, r"seeds\.2: 0 is listed twice"),
        ({"seeds": []}, r"seeds: List should have at least 1 item"),
        ({"vary": ["eval", "training"]}, r"vary\.1: Input should be 'pretrain', 'attack'"),
        (
            {"seeds": [0, 1], "stage_seeds": {"attack": 4}},
            r"stage_seeds\.attack: pinned, but vary lists 'attack'",
        ),
    ],
)
def test_bad_seeds_are_refused_naming_the_key(changes, message, write_config):
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(micro(**changes)))


def test_bad_seeds_on_the_command_line_are_one_line(tmp_path, capsys, write_config):
    assert main(["run", write_config(MICRO), "--seeds", "0,x", "--out", str(tmp_path)]) == 2
    assert "--seeds '0,x': expected integers separated by commas" in capsys.readouterr().err


def test_repetitions_keep_the_stage_keys_and_share_the_clean_encoder():
    raw = micro(attack={"name": "ssl_backdoor", "target_class": 1, "trigger": {"size": 3}})
    plain = preset_keys(ExperimentConfig.model_validate(raw))
    shared = ExperimentConfig.model_validate(raw | {"seeds": [0, 1], "vary": ["attack", "eval"]})
    first, second = (preset_keys(repetition_config(shared, s)) for s in (0, 1))
    assert first == plain  # seed 0 of a run over seeds is the one-seed run
    assert second["pretrain"] == plain["pretrain"]  # one clean encoder for every repetition
    assert second["pretrain_poisoned"] != plain["pretrain_poisoned"]  # the attack's: its own
    every = ExperimentConfig.model_validate(raw | {"seeds": [0, 1]})
    assert preset_keys(repetition_config(every, 1))["pretrain"] != plain["pretrain"]


# --- running, resuming, sweeping (a stand-in for the run) -----------------------------------


def stand_in(calls: list):
    """A one-seed run that trains nothing: ``d/acc`` = 0.8 + seed / 100 and ``d/count`` =
    seed (an int), written as a real ``results.json``."""

    def run(cfg: ExperimentConfig, folder: Path) -> Results:
        calls.append((cfg.seed, cfg.seed_of("pretrain"), folder.name))
        rows = [
            Row("synthetic", CLEAN, "linear", "acc", 0.8 + cfg.seed / 100, "synthetic/acc"),
            Row("synthetic", CLEAN, "linear", "count", cfg.seed, "synthetic/count"),
        ]
        config = cfg.model_dump(mode="json")
        results = Results(rows, config, {"total": 2.0}, {}, {}, [])
        write_results(folder, results)
        return results

    return run


def test_run_seeds_aggregates_and_resumes(tmp_path):
    cfg = ExperimentConfig.model_validate(micro(seed=5, seeds=[0, 1, 2], vary=["eval"]))
    calls: list = []
    result = run_seeds(cfg, tmp_path / "out", run=stand_in(calls))
    assert calls == [(0, 5, "seed-0"), (1, 5, "seed-1"), (2, 5, "seed-2")]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved == json.loads(json.dumps(result.as_json()))
    assert saved["seeds"] == [0, 1, 2] and saved["vary"] == ["eval"]
    assert saved["metrics"]["synthetic/acc"] == pytest.approx(0.81)
    assert saved["aggregate"]["synthetic/count"] == {
        "mean": 1.0, "std": 1.0, "n": 3, "values": [0, 1, 2]
    }  # fmt: skip
    assert saved["timings"]["total"] == 6.0 and saved["runs"]["2"] == "seed-2"
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| synthetic/acc | 0.8100 ± 0.0100 | 3 |" in summary
    assert "vary: eval" in summary
    run_seeds(cfg, tmp_path / "out", run=stand_in(calls))  # again: every seed finished
    assert len(calls) == 3
    more = cfg.model_copy(update={"seeds": [0, 1, 2, 3]})
    run_seeds(more, tmp_path / "out", run=stand_in(calls))  # one more seed: only it runs
    assert calls[3:] == [(3, 5, "seed-3")]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["seeds"] == [0, 1, 2, 3]


def test_a_sweep_over_seeds_shows_mean_and_std(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(MICRO))
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        yaml.safe_dump(
            {
                "base": "base.yaml",
                "grid": {"eval.labelled": [32, 64]},
                "metrics": ["synthetic/acc"],
                "seeds": [0, 1],
            }
        )
    )
    calls: list = []
    sweep, base = load_sweep(sweep_file)
    rows = run_sweep(sweep, base, tmp_path / "out", run=stand_in(calls))
    assert len(calls) == 4 and {c[2] for c in calls} == {"seed-0", "seed-1"}
    assert rows[0]["synthetic/acc"] == pytest.approx(0.805)
    assert rows[0]["std"]["synthetic/acc"] == pytest.approx(math.sqrt(0.5) / 100)
    table = (tmp_path / "out" / "sweep.md").read_text()
    assert "| 32 | 0.8050 ± 0.0071 |" in table
    assert (tmp_path / "out" / "00-labelled=32" / "seed-1" / "results.json").exists()
    calls.clear()  # the command line's --seeds wins over the file's
    run_sweep(sweep, base, tmp_path / "again", ["seeds=[3]"], run=stand_in(calls))
    assert [c[0] for c in calls] == [3, 3]


# --- end to end: a do-nothing attack over three seeds ---------------------------------------


class Duplicates(IndiscriminateAttack):
    """An attack that does nothing: its "poisons" are clean copies of seeded training points
    with their true labels — exactly what the null control adds."""

    name: Literal["duplicates"] = "duplicates"

    def craft(self, encoder, train, features, victim, seed=0, pretraining=None) -> Crafted:
        base = pick_base(len(train), self.poison_count(len(train)), seed)
        at = base.to(train.device)
        return Crafted(train.images[at].cpu(), train.labels[at].cpu(), base)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(ATTACKS, "duplicates", Duplicates)


def test_seeds_end_to_end_with_a_do_nothing_attack(tmp_path, registered, write_config):
    torch.set_num_threads(1)  # tiny tensors: one thread is the fastest, on a busy CPU too
    attack = {"name": "duplicates", "epsilon": 0.25}
    cfg = micro(attack=attack, vary=["attack", "eval"], defenses=[{"name": "sphere"}])
    out = tmp_path / "out"
    assert main(["run", write_config(cfg), "--seeds", "0,1,2", "--out", str(out)]) == 0
    runs = [json.loads((out / f"seed-{s}" / "results.json").read_text()) for s in (0, 1, 2)]
    assert [r["provenance"]["seed"] for r in runs] == [0, 1, 2]
    assert [r["stages"]["pretrain"]["cached"] for r in runs] == [False, True, True]
    keys = {r["stages"]["pretrain"]["key"] for r in runs}
    assert len(keys) == 1  # pre-trained once: the seeds share the clean encoder
    assert len({r["metrics"]["synthetic/acc_clean"] for r in runs}) > 1  # eval did vary
    for r in runs:  # the null control is the effect of doing nothing, exactly
        m = r["metrics"]
        assert m["synthetic/acc_drop"] == m["synthetic/acc_drop_null"]
        assert m["synthetic/acc_drop_sphere"] == m["synthetic/acc_drop_null_sphere"]
    agg = json.loads((out / "results.json").read_text())
    assert agg["aggregate"]["synthetic/acc_drop"]["n"] == 3
    verdicts = {(c["effect"], c["control"]): c["verdict"] for c in agg["controls"]}
    assert verdicts[("synthetic/acc_drop", "synthetic/acc_drop_null")] == "within noise"
    assert verdicts[("synthetic/acc_drop_sphere", "synthetic/acc_drop_null_sphere")] == (
        "within noise"
    )
    assert "within noise" in (out / "summary.md").read_text()
    with ResultsStore(os.environ["SSLPOISON_RESULTS"]) as store:  # each seed is a run ...
        stored = store.runs()
    assert sorted(r.seed for r in stored) == [0, 1, 2]  # ... and the aggregate is none
    assert len({r.settings for r in stored}) == 1  # one setting: they differ only in seeds
    assert run_folders([out]) == [out / f"seed-{s}" for s in (0, 1, 2)]
    with pytest.raises(ValueError, match="the aggregate of a run over seeds, not a run"):
        read_run(out)


def test_each_effect_is_judged_against_its_controls():
    def rows(asr: float, asr_b: float, other: float, fp: int) -> list[Row]:
        return [
            backdoor_row("attacked", "d", "linear", "asr", asr),
            backdoor_row("clean", "d", "linear", "asr", asr_b),
            backdoor_row("attacked", "d", "linear", "asr_other_trigger", other),
            backdoor_row("attacked", "d", "linear", "fp", fp),
            backdoor_row("distill", "d", "linear", "asr", asr / 2),
            backdoor_row("distill_on_clean", "d", "linear", "asr", asr_b),
        ]

    per_seed = {
        0: rows(0.90, 0.01, 0.30, 40),
        1: rows(0.95, 0.02, 0.50, 44),
        2: rows(1.0, 0.0, 0.4, 42),
    }
    found = {(c["effect"], c["control"]): c for c in control_verdicts(per_seed)}
    assert set(found) == {
        ("d/asr", "d/asr_b"),
        ("d/asr", "d/asr_other_trigger"),
        ("distill/d/asr", "distill_on_clean/d/asr"),
    }  # no FP control was measured: FP is not judged
    against_b = found["d/asr", "d/asr_b"]
    assert against_b["verdict"] == "effect" and against_b["k"] == 2.0
    assert against_b["difference"] == pytest.approx(0.95 - 0.01)
    assert against_b["threshold"] == pytest.approx(2 * math.sqrt(0.05**2 + 0.01**2))
    assert against_b["effect_spread"]["values"] == [0.90, 0.95, 1.0]
    assert found["d/asr", "d/asr_other_trigger"]["verdict"] == "effect"  # 0.55 > 2·0.112
    assert found["distill/d/asr", "distill_on_clean/d/asr"]["verdict"] == "effect"
    one = control_verdicts({0: rows(0.9, 0.01, 0.3, 40)})
    assert {c["verdict"] for c in one} == {"untested (n < 2)"}


def test_a_pre_trained_encoder_is_judged_against_its_baselines():
    def rows(acc: float, random_init: float) -> list[Row]:
        return [
            Row("d", CLEAN, "linear", "acc", acc, "d/linear_acc"),
            Row("d", "random_init", "linear", "acc", random_init, "d/random_init/linear_acc"),
        ]

    per_seed = {0: rows(0.85, 0.80), 1: rows(0.86, 0.79), 2: rows(0.84, 0.81)}
    (verdict,) = control_verdicts(per_seed)
    assert (verdict["effect"], verdict["control"]) == ("d/linear_acc", "d/random_init/linear_acc")
    assert verdict["what"] == "the same probe on the untrained network"
    assert verdict["verdict"] == "effect"  # 0.05 > 2·√(0.01² + 0.01²) = 0.028
