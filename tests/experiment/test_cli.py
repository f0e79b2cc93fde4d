"""`sslpoison run` end to end on tiny synthetic data, the stage cache, and config errors."""

from __future__ import annotations

import json

import pytest

from sslpoison.cli import main
from sslpoison.experiment.config import ConfigError, load_config
from sslpoison.train.engine import TrainConfig


@pytest.mark.slow
def test_run_writes_results_and_reuses_the_cached_encoder(
    tmp_path, capsys, tiny_experiment, write_config
):
    cfg = write_config(tiny_experiment)
    assert main(["run", cfg, "--out", str(tmp_path / "a")]) == 0
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert set(results) == {
        "metrics", "config", "timings", "artifacts", "stages", "rows", "provenance"
    }  # fmt: skip
    m = results["metrics"]
    for key in ("linear_acc", "knn_acc", "linear_acc_random_init", "linear_acc_pixels"):
        assert 0.0 <= m[f"synthetic/{key}"] <= 1.0
    # The synthetic classes are easy: a trained encoder separates them well.
    assert m["synthetic/linear_acc"] >= 0.8
    assert m["synthetic/linear_acc"] >= m["synthetic/linear_acc_random_init"] + 0.1
    assert results["stages"]["pretrain"]["cached"] is False
    used = TrainConfig().precision("cpu")  # amp_cpu: auto, the default (fp32 in tests)
    assert results["stages"]["pretrain"]["precision"] == used == "fp32"
    assert (tmp_path / "a" / "encoder.safetensors").exists()
    assert results["config"]["pretrain"]["train"]["epochs"] == 4

    assert main(["run", cfg, "--out", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "results.json").read_text())
    assert again["stages"]["pretrain"]["cached"] is True
    assert again["timings"]["pretrain"] < results["timings"]["pretrain"]
    assert again["metrics"] == results["metrics"]  # same encoder, same seeds, same numbers
    # Settings that cannot change the weights do not invalidate the cache (forcing the
    # precision that `auto` chose is the same run) ...
    same = ["--set", "pretrain.train.checkpoint_every=2"]
    same += ["--set", f"pretrain.train.amp_cpu={str(used == 'bf16').lower()}"]
    assert main(["run", cfg, "--out", str(tmp_path / "c"), *same]) == 0
    assert (
        json.loads((tmp_path / "c" / "results.json").read_text())["stages"]["pretrain"]["cached"]
        is True
    )
    # ... and ones that can, do.
    assert main(["run", cfg, "--out", str(tmp_path / "d"), "--set", "seed=1"]) == 0
    assert (
        json.loads((tmp_path / "d" / "results.json").read_text())["stages"]["pretrain"]["cached"]
        is False
    )
    assert "synthetic/linear_acc" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("bogus=1", "bogus: unknown key"),
        ("pretrain.train.epochs=-3", "pretrain.train.epochs"),
        ("pretrain.method_args.temprature=0.1", "pretrain.method_args.temprature: unknown key"),
        ("pretrain.method=swav", "unknown SSL method 'swav'"),
        ("data.dataset=cifar10", "data.dataset: dataset 'cifar10' not found"),
        ("eval.datasets=[svhn]", "eval.datasets.0: dataset 'svhn' not found"),
        ("eval.labelled=1.5", "eval.labelled: a share must lie in (0, 1]"),
        ("attack={name: mystery}", "attack: unknown name 'mystery'"),
        ("attack={target_class: 1}", "attack: the key 'name' is missing"),
        ("defenses=[{name: distill}]", "defenses: there is no attack section"),
        (
            "defenses=[{name: prune}]",
            "defenses.0: unknown name 'prune' (known: patchsearch, spectral,",
        ),
        (
            "attack={name: ssl_backdoor, target_class: 1, poison: 0}",
            "attack.poison: a share must lie in (0, 1]",
        ),
    ],
)
def test_a_broken_config_fails_in_one_line_and_writes_nothing(
    tmp_path, capsys, monkeypatch, override, message, tiny_experiment, write_config
):
    monkeypatch.setenv("SSLPOISON_DATA", str(tmp_path / "no-data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    code = main(["run", write_config(tiny_experiment), "--set", override, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert message in err and len(err.splitlines()) == 1, err
    assert not (out / "results.json").exists()


def test_overrides_are_parsed_as_yaml_and_missing_files_named(
    tmp_path, tiny_experiment, write_config
):
    cfg = load_config(
        write_config(tiny_experiment),
        ["pretrain.train.batch_size=32", "eval.probes=[mlp]"],
    )
    assert cfg.pretrain.train.batch_size == 32 and cfg.eval.probes == ["mlp"]
    tiny_experiment["attack"] = {"name": "ssl_backdoor", "target_class": 1}
    tiny_experiment["defenses"] = [{"name": "distill"}]
    path = write_config(tiny_experiment)
    cfg = load_config(path, ["defenses.0.clean=0.2", "defenses.0.train.epochs=3"])
    assert cfg.defenses[0].clean == 0.2 and cfg.defenses[0].train.epochs == 3
    with pytest.raises(ConfigError, match="'1' is not an index of that list"):
        load_config(path, ["defenses.1.clean=0.2"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_every_preset_loads():
    from pathlib import Path

    from sslpoison.sweeps.sweep import load_sweep, sweep_configs

    presets = sorted(Path(__file__).parents[2].joinpath("configs").glob("*.yaml"))
    assert presets
    for preset in presets:
        if preset.stem.endswith("-sweep"):
            assert sweep_configs(*load_sweep(preset))  # every run of the grid validates
        else:
            load_config(preset)


def test_datasets_command_lists_every_dataset(capsys):
    from sslpoison.data.registry import DATASETS

    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in DATASETS:
        assert name in out
    assert main(["datasets", "--check", "synthetic"]) == 0


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_encoder(
    tmp_path, monkeypatch, tiny_experiment, write_config
):
    import sslpoison.ssl.pretrain as pretrain_module
    from sslpoison.train.engine import fit as real_fit

    cfg = write_config(tiny_experiment)
    monkeypatch.setenv("SSLPOISON_CACHE", str(tmp_path / "straight-cache"))
    assert main(["run", cfg, "--out", str(tmp_path / "straight")]) == 0
    straight = json.loads((tmp_path / "straight" / "results.json").read_text())

    def interrupt_after_2(epoch: int, _loss: float) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    def fit_interrupted(*args, **kwargs):
        return real_fit(*args, **kwargs, on_epoch_end=[interrupt_after_2])

    monkeypatch.setenv("SSLPOISON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrain_module, "fit", fit_interrupted)
    assert main(["run", cfg, "--out", str(tmp_path / "resumed")]) == 130
    assert not (tmp_path / "resumed" / "results.json").exists()
    monkeypatch.setattr(pretrain_module, "fit", real_fit)
    assert main(["run", cfg, "--out", str(tmp_path / "resumed")]) == 0
    resumed = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert resumed["stages"]["pretrain"]["resumed_from_epoch"] == 2
    assert resumed["metrics"] == straight["metrics"]


def test_help_says_what_the_tool_is_for_in_one_line(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    description = out.split("\n\n")[1]
    assert description.startswith("Poison and backdoor self-supervised encoders")
    assert description.rstrip().endswith("from one YAML experiment.")
