"""Bad, careless and hostile experiment configs and ``--set`` values: each fails before any
training with exit 2 and one line naming the file or the key; YAML never runs code and is
bounded; an output name never leaves the output folder."""

from __future__ import annotations

import json
import os

import pytest
import torch
from damaged_files import BOMB
from user_errors import assert_user_error, trained_stages

from sslpoison.errors import collecting_warnings, warn
from sslpoison.experiment.config import DataConfig
from sslpoison.experiment.stages import pretraining_data


def _set(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


#: (id, the config file's text or None for the tiny run, --set items, what the error names).
TEXT_CASES = [
    ("empty-file", "", [], ["cfg.yaml", "empty"]),
    ("comments-only", "# nothing here\n", [], ["cfg.yaml", "empty"]),
    ("empty-mapping", "{}\n", [], ["cfg.yaml", "empty"]),
    ("top-level-list", "- a\n- b\n", [], ["cfg.yaml", "mapping"]),
    ("invalid-yaml", "data: {dataset: [\n", [], ["cfg.yaml", "not valid YAML", "line"]),
    ("duplicate-top-key", "seed: 1\nseed: 2\n", [], ["cfg.yaml", "duplicate key 'seed'"]),
    (
        "duplicate-nested-key",
        "pretrain:\n  train:\n    epochs: 1\n    epochs: 5\n",
        [],
        ["cfg.yaml", "duplicate key 'epochs'", "line 4"],
    ),
    ("alias-bomb", BOMB, [], ["cfg.yaml", "aliases"]),
    ("recursive-alias", "a: &a [*a]\n", [], ["cfg.yaml", "aliases"]),
    ("over-1-MiB", "x: " + "a" * (1 << 20) + "\n", [], ["cfg.yaml", "KiB"]),
    ("not-utf8", b"name: \xff\xfe\n", [], ["cfg.yaml", "UTF-8"]),
    (
        "python-tag",
        "name: !!python/object/apply:os.system ['touch {sentinel}']\n",
        [],
        ["cfg.yaml"],
    ),
    (
        "unknown-key",
        None,
        _set("pretrain.trian.epochs=1"),
        ["pretrain.trian: unknown key (did you mean 'train'?)"],
    ),
    (
        "misspelt-attack-key",
        None,
        _set("attack={name: badencoder, lamda2: 1.0}"),
        ["attack.lamda2: unknown key (did you mean 'lambda2'?)"],
    ),
    ("set-invalid-yaml", None, _set("pretrain.train.epochs=[1"), ["--set", "epochs=[1"]),
    ("set-no-equals", None, _set("seed"), ["--set 'seed'", "key=value"]),
    ("set-empty-key", None, _set("=3"), ["--set '=3'", "empty key"]),
    ("set-empty-part", None, _set("pretrain..epochs=3"), ["--set", "empty part"]),
    ("set-into-a-value", None, _set("seed.x=3"), ["--set 'seed.x=3'", "not a section"]),
    ("set-bad-index", None, _set("eval.datasets.4=mnist"), ["--set", "not an index"]),
    ("set-alias-bomb", None, ["--set", "name=" + BOMB.replace("\n", "; ")], ["--set"]),
    ("set-wrong-type", None, _set("pretrain.train.epochs=many"), ["pretrain.train.epochs"]),
]


@pytest.mark.parametrize(
    ("text", "sets", "names"), [c[1:] for c in TEXT_CASES], ids=[c[0] for c in TEXT_CASES]
)
def test_a_bad_config_is_named_before_any_training(
    text, sets, names, tmp_path, tiny_run, write_yaml, cli, cache_dir, sentinel
):
    if text is None:
        path = write_yaml(tiny_run)
    elif isinstance(text, bytes):
        path = tmp_path / "cfg.yaml"
        path.write_bytes(text)
    else:
        path = write_yaml(text.replace("{sentinel}", str(sentinel)))
    out = tmp_path / "out"
    assert_user_error(*cli("run", path, "--out", out, *sets)[::2], *names)
    assert not out.exists() and trained_stages(cache_dir) == []


def test_a_config_that_is_a_folder_or_missing_is_named(tmp_path, cli):
    assert_user_error(*cli("run", tmp_path)[::2], str(tmp_path), "folder")
    assert_user_error(*cli("run", tmp_path / "nope.yaml")[::2], "nope.yaml", "not found")


def test_an_endless_config_is_read_no_further_than_the_bound(cli):
    assert_user_error(*cli("run", "/dev/zero")[::2], "/dev/zero", "KiB")


ATTACK = {
    "name": "badencoder",
    "shadow": 8,
    "targets": [{"dataset": "synthetic", "target_class": 1}],
}

#: (id, a change to the tiny run, what the error names).
KEY_CASES = [
    ("data-root-missing", {"data": {"dataset": "fashion-mnist", "root": "{tmp}/no-such"}},
     ["data.dataset", "{tmp}/no-such", "no such folder"]),
    ("data-root-of-a-builtin-missing", {"data": {"dataset": "synthetic", "root": "{tmp}/no"}},
     ["data.dataset", "{tmp}/no", "no such folder"]),
    ("data-root-of-a-builtin", {"data": {"dataset": "synthetic", "root": "{tmp}"}},
     ["data.dataset", "built in"]),
    ("data-root-without-the-dataset", {"data": {"dataset": "mnist", "root": "{tmp}"}},
     ["data.dataset", "holds no mnist files"]),
    ("eval-root-missing",
     {"eval": {"datasets": ["imagefolder"], "roots": {"imagefolder": "{tmp}/x"}}},
     ["eval.datasets.0", "{tmp}/x"]),
    ("subset-larger-than-data", {"data": {"dataset": "synthetic", "subset": 600}},
     ["data.subset", "600", "512", "data.allow_smaller"]),
    ("labelled-larger-than-data", {"eval": {"labelled": 1000}},
     ["eval.labelled", "1000", "512", "eval.allow_smaller"]),
    ("test-subset-larger-than-data", {"eval": {"test_subset": 2000}},
     ["eval.test_subset", "2000", "eval.allow_smaller"]),
    ("knn-k-larger-than-labelled", {"eval": {"knn": {"k": 100}}},
     ["eval.knn.k", "100", "64"]),
    ("shadow-larger-than-data", {"attack": ATTACK | {"shadow": 100}},
     ["attack.shadow", "100", "64", "data.allow_smaller"]),
    ("defense-clean-larger-than-data",
     {"attack": ATTACK, "defenses": [{"name": "distill", "clean": 80}]},
     ["defenses.0.clean", "80", "data.allow_smaller"]),
    ("data-classes-unknown", {"data": {"dataset": "synthetic", "classes": [0, 99]}},
     ["data.classes", "99"]),
    ("eval-classes-unknown", {"eval": {"classes": {"synthetic": [1, "no-such-class"]}}},
     ["eval.classes.synthetic", "no-such-class"]),
    ("cache-dir-is-a-file", {"cache_dir": "{tmp}/cfg.yaml"}, ["stage cache", "not a folder"]),
    ("cuda-not-available", {"device": "cuda"}, ["cuda", "not available"]),
]  # fmt: skip


def _merge(cfg: dict, change: dict, tmp: str) -> dict:
    for key, value in change.items():
        value = json.loads(json.dumps(value).replace("{tmp}", tmp))
        cfg[key] = cfg[key] | value if isinstance(value, dict) and key in cfg else value
    return cfg


@pytest.mark.parametrize(
    ("change", "names"), [c[1:] for c in KEY_CASES], ids=[c[0] for c in KEY_CASES]
)
def test_a_config_the_data_cannot_serve_is_named_before_any_training(
    change, names, tmp_path, tiny_run, write_yaml, cli, cache_dir
):
    if "cuda" in str(change) and __import__("torch").cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "out"
    cfg = write_yaml(_merge(tiny_run, change, str(tmp_path)))
    names = [n.replace("{tmp}", str(tmp_path)) for n in names]
    assert_user_error(*cli("run", cfg, "--out", out)[::2], *names)
    assert not (out / "results.json").exists() and trained_stages(cache_dir) == []


def test_an_oversized_count_allowed_runs_and_is_recorded(tmp_path, tiny_run, write_yaml, cli):
    tiny_run["eval"] |= {"labelled": 1000, "knn": {"k": 800}}
    tiny_run["eval"] |= {"allow_smaller": True}
    out = tmp_path / "out"
    code, _, err = cli("run", write_yaml(tiny_run), "--out", out)
    assert code == 0, err
    warnings = json.loads((out / "results.json").read_text())["warnings"]
    assert any(w.startswith("eval.labelled: 1000") and "using all 512" in w for w in warnings)
    assert any(w.startswith("eval.knn.k: 800") for w in warnings), warnings


def test_an_oversized_subset_allowed_is_the_whole_set_and_recorded():
    with collecting_warnings() as warnings:
        config = DataConfig(dataset="synthetic", subset=600, allow_smaller=True)
        data = pretraining_data(config, False)
    assert len(data) == 512 and warnings == [
        "data.subset: 600 asked for, but the synthetic train split has 512; using all 512"
    ]


def test_two_collections_in_one_process_keep_their_own_warnings():
    with collecting_warnings() as first:
        warn("one")
        with collecting_warnings() as inner:
            warn("two")
        warn("three")
    warn("after: recorded nowhere")
    with collecting_warnings() as second:
        warn("four")
    assert first == ["one", "three"] and inner == ["two"] and second == ["four"]


def test_what_a_config_allowed_is_recorded_but_not_printed_as_a_warning(caplog):
    from sslpoison.configbase import checked_count

    with collecting_warnings() as warnings, caplog.at_level("INFO", logger="sslpoison"):
        checked_count("eval.labelled", 10000, 1198, "digits", allowed=True)
        checked_count("eval.labelled", 10000, 599, "tiny", allowed=False, explicit=False)
    assert len(warnings) == 2  # both in results.json
    levels = {r.getMessage().split(":")[0]: r.levelname for r in caplog.records}
    assert levels == {"note": "INFO", "warning": "WARNING"}  # only the default is loud


def test_two_runs_in_one_process_keep_separate_warnings(tmp_path, tiny_run, write_yaml, cli):
    tiny_run["eval"] |= {"labelled": 1000, "allow_smaller": True}  # allowed: a warning
    code, _, err = cli("run", write_yaml(tiny_run), "--out", tmp_path / "a")
    assert code == 0, err
    tiny_run["eval"] |= {"labelled": 256, "allow_smaller": False}  # no warning
    code, _, err = cli("run", write_yaml(tiny_run), "--out", tmp_path / "b")
    assert code == 0, err
    a, b = (json.loads((tmp_path / r / "results.json").read_text()) for r in "ab")
    assert any(w.startswith("eval.labelled: 1000") for w in a["warnings"])
    assert not b.get("warnings")  # results.json leaves out an empty list


def test_a_name_that_climbs_out_stays_in_runs(tmp_path, tiny_run, write_yaml, cli, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    tiny_run["name"] = "../../escaped"
    code, out, err = cli("run", write_yaml(tiny_run))
    assert code == 0, err
    (run,) = (work / "runs").iterdir()
    assert (run / "results.json").exists() and ".." not in run.name and "/" not in run.name
    assert not (tmp_path / "escaped").exists() and sorted(os.listdir(tmp_path)) == [
        "cfg.yaml",
        "work",
    ]
    assert str(run.name) in out


def test_debug_shows_the_traceback_of_a_user_error(tmp_path, write_yaml, cli):
    path = write_yaml("seed: 1\nseed: 2\n")
    with pytest.raises(ValueError, match="duplicate key"):
        cli("--debug", "run", path)
    with pytest.raises(ValueError, match="duplicate key"):
        cli("run", path, "--debug")


def test_every_cpu_preset_and_sweep_run_passes_the_preflight_counts(monkeypatch):
    """The shipped configs ask for no more images than their datasets have (or allow it)."""
    import functools
    from pathlib import Path

    import sslpoison.eval.downstream as downstream_module
    from sslpoison.eval.downstream import Downstream
    from sslpoison.experiment.config import load_config
    from sslpoison.experiment.preflight import check_counts
    from sslpoison.sweeps.sweep import load_sweep, sweep_configs

    torch.set_num_threads(1)  # two threads crawl on a busy 2-core machine
    cached = functools.cache(downstream_module.load_fitted)  # each split loaded once
    monkeypatch.setattr(downstream_module, "load_fitted", cached)
    configs = []
    for path in sorted((Path(__file__).parents[2] / "configs").glob("cpu-*.yaml")):
        if path.stem.endswith("-sweep"):
            configs += [cfg for _, cfg in sweep_configs(*load_sweep(path))]
        else:
            configs.append(load_config(path))
    loaded: dict = {}
    for cfg in configs:
        which = (cfg.data.model_dump_json(), cfg.pretrain.image_text)
        if which not in loaded:
            loaded[which] = pretraining_data(cfg.data, cfg.pretrain.image_text, cfg.seed)
        data = loaded[which]
        check_counts(cfg, data)
        downstream = Downstream(cfg.eval, data.image_size, data.channels, cfg.seed)
        for name in cfg.eval.datasets:
            downstream.train(name)
            downstream.test(name)
