"""Bad sweep files: each fails with exit 2 and one line naming the file or key — before
any run, or (a metric no run produces) as soon as that is known; a sweep never writes into
another sweep's folder."""

from __future__ import annotations

import json

import pytest
import yaml
from damaged_files import BOMB
from user_errors import assert_user_error, trained_stages


@pytest.fixture
def sweep(tmp_path, tiny_run, write_yaml):
    """``sweep(**changes) -> path`` of a one-run sweep of the tiny run (``None`` deletes a
    key; a string is written verbatim)."""
    base = write_yaml(tiny_run, "base.yaml")

    def write(text: str | None = None, **changes) -> str:
        if text is not None:
            return write_yaml(text.replace("{base}", str(base)), "sweep.yaml")
        spec = {
            "name": "robust-sweep",
            "base": str(base),
            "grid": {"seed": [0]},
            "metrics": ["synthetic/knn_acc"],
        }
        spec |= changes
        return write_yaml({k: v for k, v in spec.items() if v is not None}, "sweep.yaml")

    return write


#: (id, the sweep (text, or changes), what the error names).
CASES = [
    ("invalid-yaml", "base: {base}\ngrid: {seed: [0, 1\n", ["sweep.yaml", "not valid YAML"]),
    ("duplicate-key", "base: {base}\ngrid: {seed: [0]}\ngrid: {seed: [1]}\n",
     ["sweep.yaml", "duplicate key 'grid'"]),
    ("alias-bomb", BOMB + "base: {base}\ngrid: {seed: *i}\n", ["sweep.yaml", "aliases"]),
    ("empty-file", "", ["sweep.yaml", "mapping"]),
    ("top-level-list", "- base\n", ["sweep.yaml", "mapping"]),
    ("over-1-MiB", "base: {base}\n#" + "x" * (1 << 20), ["sweep.yaml", "KiB"]),
    ("python-tag", "base: !!python/name:os.system\ngrid: {seed: [0]}\n", ["sweep.yaml"]),
    ("unknown-key", {"grids": {"seed": [1]}}, ["sweep.yaml", "grids: unknown key"]),
    ("missing-base", {"base": "/no/such/base.yaml"}, ["/no/such/base.yaml", "not found"]),
    ("empty-base", {"base": "EMPTY"}, ["empty.yaml", "empty"]),
    ("grid-unknown-key", {"grid": {"pretrain.trian.epochs": [1]}},
     ["sweep run", "pretrain.trian: unknown key"]),
    ("grid-no-values", {"grid": {"seed": []}}, ["sweep.yaml", "grid.seed: no values"]),
    ("plot-x-not-in-grid", {"plot": {"x": "eval.labelled", "y": ["synthetic/knn_acc"]}},
     ["plot.x", "not a grid key"]),
    ("metric-of-no-dataset", {"metrics": ["fmnist/knn_acc"]},
     ["metrics.0", "fmnist/knn_acc", "synthetic"]),
    ("reach-of-no-dataset", {"reach": {"x": "seed", "y": "acc", "at": 0.5}}, ["reach.y", "'acc'"]),
    ("set-invalid-yaml", {"set": ["pretrain.train.epochs=[1"]}, ["--set", "epochs=[1"]),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "names"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_sweep_is_named_before_any_run(spec, names, sweep, tmp_path, cli, cache_dir):
    if isinstance(spec, dict) and spec.get("base") == "EMPTY":
        (tmp_path / "empty.yaml").write_text("# to do\n")
        spec = {"base": str(tmp_path / "empty.yaml")}
    path = sweep(spec) if isinstance(spec, str) else sweep(**spec)
    out = tmp_path / "out"
    assert_user_error(*cli("sweep", path, "--out", out)[::2], *names)
    assert not out.exists() and trained_stages(cache_dir) == []


def test_a_sweep_out_that_is_a_file_is_named_before_any_run(sweep, tmp_path, cli, cache_dir):
    out = tmp_path / "table.md"
    out.write_text("mine")
    assert_user_error(*cli("sweep", sweep(), "--out", out)[::2], out, "not a folder")
    assert out.read_text() == "mine" and trained_stages(cache_dir) == []


def test_a_metric_no_run_produces_fails_after_the_first_run(sweep, tmp_path, cli):
    """Not 'stayed below 0.5': the key is named, with the metrics that exist, and the
    finished run is kept for the corrected sweep."""
    path = sweep(
        metrics=["synthetic/knn_acc"], reach={"x": "seed", "y": "synthetic/knn_ac", "at": 0.5}
    )
    out = tmp_path / "out"
    line = assert_user_error(*cli("sweep", path, "--out", out)[::2], "reach.y", "synthetic/knn_ac")
    assert "did you mean synthetic/knn_acc" in line and "stayed below" not in line
    (run,) = [p for p in out.iterdir() if p.is_dir() and p.name not in ("logs", "status")]
    assert (run / "results.json").exists() and not (out / "sweep.md").exists()


def test_a_metric_check_waits_for_every_run_when_the_grid_shapes_the_metrics(sweep, tmp_path, cli):
    path = sweep(grid={"eval.knn.k": [3]}, metrics=["synthetic/knn_acc", "synthetic/bogus"])
    line = assert_user_error(*cli("sweep", path, "--out", tmp_path / "out")[::2], "metrics.1")
    assert "any run produced" in line


def test_a_sweep_never_mixes_with_another_sweep_in_its_folder(sweep, tmp_path, cli):
    out = tmp_path / "out"
    old_run = out / "00-epochs=9"
    old_run.mkdir(parents=True)
    (old_run / "results.json").write_text(json.dumps({"metrics": {"a/b": 1}}))
    (out / "sweep.json").write_text(json.dumps({"grid": {"epochs": [9]}, "rows": []}))
    code, _, err = cli("sweep", sweep(), "--out", out)
    assert code == 0, err
    (moved,) = tmp_path.glob("out.old-*")
    assert json.loads((moved / "sweep.json").read_text())["grid"] == {"epochs": [9]}
    assert (moved / "00-epochs=9" / "results.json").exists()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["00-seed=0", "logs", "status"]
    assert yaml.safe_load((out / "sweep.json").read_text())["grid"] == {"seed": [0]}


def test_an_impossible_cell_is_named_by_the_plan_before_any_run(sweep, tmp_path, cli, cache_dir):
    """The plan prepares every cell's attack before anything trains: a cell whose attack
    cannot be made fails the sweep at once, naming the cell and the key."""
    attack = {"name": "ssl_backdoor", "target_class": "vertical", "poison": 2}
    path = sweep(grid={"attack.poison": [2, 500]}, set=[f"attack={json.dumps(attack)}"])
    code, _, err = cli("sweep", path, "--out", tmp_path / "out")
    assert_user_error(code, err, "sweep cell 01-poison=500", "attack.poison: 500")
    assert trained_stages(cache_dir) == []
