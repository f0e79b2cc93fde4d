"""The results store: atomic inserts from several processes, re-import, filters and
comparisons, round trips, and clear errors for a broken database."""

from __future__ import annotations

import json
import logging
import multiprocessing
import sqlite3

import pytest
from handmade import backdoor_rows

from sslpoison.cli import main
from sslpoison.eval.rows import Row
from sslpoison.experiment.results import read_results
from sslpoison.results import store as store_module
from sslpoison.results.compare import compare, format_comparison, group_runs
from sslpoison.results.store import (
    Filters,
    ResultsStore,
    StoreError,
    import_runs,
    read_run,
    store_finished_run,
    store_path,
)

CELLS = {"clean": {"acc": 0.9, "asr": 0.1}, "attacked": {"acc": 0.8, "asr": 0.95}}
ROWS = [
    *backdoor_rows(CELLS),
    Row(None, "attacked", "decree", "flagged", 1, "decree/attacked_flagged"),
]


def _insert_all(path, folders, barrier) -> None:
    barrier.wait(timeout=60)  # both processes start inserting at the same moment
    with ResultsStore(path) as store:
        for folder in folders:
            store.add(folder)


def test_two_processes_inserting_at_once_lose_nothing(tmp_path, make_run):
    folders = [str(make_run(f"run{i}", ROWS, seed=i)) for i in range(40)]
    shared = str(make_run("both", ROWS))  # inserted by both at once: stored once
    path = tmp_path / "store.sqlite"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_insert_all, args=(path, [shared, *folders[i::2]], barrier))
        for i in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    with ResultsStore(path, read_only=True) as store:
        runs = store.runs()
    assert sorted(r.folder for r in runs) == sorted(
        str(read_run(f).folder) for f in [*folders, shared]
    )
    assert all(len(r.rows) == len(ROWS) for r in runs)


def test_importing_the_same_folders_twice_adds_nothing(tmp_path, make_run, capsys):
    make_run("runs/a", ROWS, seed=0)
    make_run("runs/b", ROWS, seed=1)
    db = tmp_path / "store.sqlite"
    assert import_runs([tmp_path / "runs"], db) == (2, 0)
    assert import_runs([tmp_path / "runs", tmp_path / "runs" / "a"], db) == (0, 3)
    assert main(["runs", "import", str(tmp_path / "runs"), "--db", str(db)]) == 0
    assert "0 runs added, 2 already there" in capsys.readouterr().out
    with ResultsStore(db) as store:
        assert store.count() == 2
        assert sqlite3.connect(db).execute("SELECT count(*) FROM rows").fetchone()[0] == 2 * len(
            ROWS
        )
    # A new run written into the same folder replaces the old one: the folder holds it now.
    make_run("runs/a", ROWS, seed=5)
    assert import_runs([tmp_path / "runs"], db) == (1, 1)
    with ResultsStore(db) as store:
        assert sorted(r.seed for r in store.runs()) == [1, 5]


def hand_made_store(tmp_path, make_run):
    """Three seeds of BadEncoder + MIMIC, two of BadEncoder + distill on digits, one SSL
    run without an attack."""
    mimic = backdoor_rows({"mimic": {"acc": 0.0, "asr": 0.0}})
    for seed, (acc, asr) in enumerate([(0.80, 0.02), (0.84, 0.04), (0.88, 0.06)]):
        rows = ROWS + [
            Row(r.dataset, r.encoder, r.probe, r.metric, v, r.key)
            for r, v in zip(mimic, (acc, asr), strict=True)
        ]
        make_run(f"runs/mimic{seed}", rows, seed, defenses=[{"name": "mimic", "clean": 0.04}])
    for seed in (0, 1):
        make_run(
            f"runs/distill{seed}", ROWS[:4], seed,
            name="hand-digits", defenses=[{"name": "distill"}],
            data={"dataset": "digits"}, eval={"datasets": ["synthetic"], "probes": ["mlp"]},
        )  # fmt: skip
    ssl = [Row("synthetic", "clean", "linear", "acc", 0.7, "synthetic/linear_acc")]
    make_run("runs/ssl", ssl, name="hand-ssl", attack=None)
    db = tmp_path / "store.sqlite"
    import_runs([tmp_path / "runs"], db)
    return db


def test_filters_pick_runs_by_attack_defense_dataset_and_preset(tmp_path, make_run, capsys):
    db = hand_made_store(tmp_path, make_run)
    with ResultsStore(db, read_only=True) as store:

        def names(**f):
            return sorted(r.folder.rsplit("/", 1)[1] for r in store.runs(Filters(**f)))

        assert names(attack="badencoder") == [*(f"distill{i}" for i in range(2)), *(
            f"mimic{i}" for i in range(3)
        )]  # fmt: skip
        assert names(defense="mimic") == ["mimic0", "mimic1", "mimic2"]
        assert names(dataset="digits") == ["distill0", "distill1"]
        assert names(preset="hand-s*") == ["ssl"]
        assert names(defense="mimic", dataset="digits") == []
        assert names(attack="nothing") == []
    assert main(["runs", "--db", str(db), "--defense", "distill"]) == 0
    out = capsys.readouterr().out
    assert "distill0" in out and "mimic0" not in out and "2 runs in" in out


def test_comparison_is_mean_and_std_over_seeds_of_one_setting(tmp_path, make_run, capsys):
    db = hand_made_store(tmp_path, make_run)
    with ResultsStore(db, read_only=True) as store:
        runs = store.runs(Filters(attack="badencoder"))
    table = compare(runs, ["mimic/*"])
    assert table.columns == ["mimic/synthetic/asr", "mimic/synthetic/ba"]
    (mimic,) = [g for g in table.groups if g.name == "hand-badencoder"]
    assert sorted(mimic.seeds) == [0, 1, 2]
    mean, std, n = table.cell(mimic, "mimic/synthetic/ba")
    assert (round(mean, 6), round(std, 6), n) == (0.84, 0.04, 3)
    text = format_comparison(table)
    assert "0.8400 ± 0.0400" in text and "0.0400 ± 0.0200" in text
    # The headline keys by default: the first probe's CA/BA/ASR-B/ASR, the defenses', verdicts.
    default = compare(runs).columns
    assert "synthetic/ba" in default and "mimic/synthetic/asr" in default
    assert "decree/attacked_flagged" in default
    assert main(["runs", "--db", str(db), "--compare", "--metric", "*/ba"]) == 0
    out = capsys.readouterr().out
    assert "| hand-digits | 2 | 0,1 | 0.8000 ± 0.0000 | - |" in out


def test_groups_name_what_sets_them_apart():
    def run(seed, lr, name="p", depth=1):
        attack = {"name": "x", "lr": lr, "depth": depth}
        config = {"name": name, "seed": seed, "attack": attack, "threads": seed}
        return store_module.StoredRun("u", "f", config, {}, [], {}, {}, {}, {}, "results.json")

    groups = group_runs([run(0, 0.1), run(1, 0.1), run(0, 0.2), run(0, 0.1, name="q")])
    labels = [(g.label, len(g.runs)) for g in groups]
    assert labels == [("p (attack.lr=0.1)", 2), ("p (attack.lr=0.2)", 1), ("q", 1)]
    # A base setting and variants of one key each: a variant names its key only (the base,
    # whose every value most settings share, none); all keys, never "+N more".
    runs = [run(0, 0.1), run(0, 0.2), run(0, 0.1, depth=2), run(0, 0.1, depth=3)]
    runs.append(run(0, 0.3, depth=4))
    assert [g.label for g in group_runs(runs)] == [
        "p", "p (attack.lr=0.2)", "p (attack.depth=2)", "p (attack.depth=3)",
        "p (attack.lr=0.3, attack.depth=4)",
    ]  # fmt: skip
    assert group_runs(runs)[4].full_label == "p (attack.lr=0.3, attack.depth=4)"


def test_config_metrics_and_rows_round_trip_unchanged(tmp_path, make_run):
    rows = [*ROWS, Row("synthetic", "clean", "linear", "fp", 7, "synthetic/fp_clean")]
    rows.append(Row("d", "clean", "linear", "acc_drop", 0.1, "d/acc_drop_sphere", setting="sphere"))
    rows.append(Row("d", "attacked", "mlp", "asr", 0.5, "d/vertical/asr", target="vertical"))
    folder = make_run("run", rows, defenses=[{"name": "mimic", "clean": 0.04, "seed": None}])
    written = read_results(folder)
    db = tmp_path / "store.sqlite"
    import_runs([folder], db)
    with ResultsStore(db, read_only=True) as store:
        (run,) = store.runs()
    assert run.config == written["config"]
    assert json.dumps(run.metrics) == json.dumps(written["metrics"])  # ints stay ints
    assert run.rows == rows and isinstance(run.rows[-3].value, int)
    assert run.provenance == written["provenance"] and run.stages == written["stages"]
    assert run.rows_source == "results.json"
    assert run.artifacts["trigger:synthetic/vertical"] == str(
        folder / "trigger-synthetic-vertical.png"
    )


def test_old_folders_without_rows_get_them_from_config_and_metrics(tmp_path, make_run):
    folder = make_run("old", ROWS)
    results = json.loads((folder / "results.json").read_text())
    del results["rows"], results["provenance"]
    (folder / "results.json").write_text(json.dumps(results))
    run = read_run(folder)
    assert run.rows_source == "reconstructed"
    assert sorted(run.rows, key=lambda r: r.key) == sorted(ROWS[:4], key=lambda r: r.key)
    assert run.provenance["seed"] == 0 and run.provenance["precision"] == "fp32"


def test_a_corrupt_database_is_one_error_naming_the_file(tmp_path, make_run, capsys, caplog):
    folder = make_run("run", ROWS)
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=f"results store {bad}: file is not a database"):
        import_runs([folder], bad)
    assert main(["runs", "--db", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == f"error: results store {bad}: file is not a database"
    with caplog.at_level(logging.ERROR):
        assert store_finished_run(folder, bad) is None
    (message,) = [r.getMessage() for r in caplog.records]
    assert str(bad) in message and "results.json is written" in message
    assert (folder / "results.json").exists()
    assert bad.read_bytes() == b"this is not a database" * 100  # left as it was


def test_a_locked_database_is_one_error_naming_the_file(tmp_path, make_run, monkeypatch):
    folder = make_run("run", ROWS)
    db = tmp_path / "store.sqlite"
    ResultsStore(db).close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process in the middle of a long write
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.2)
    try:
        with pytest.raises(StoreError, match=f"results store {db}: database is locked"):
            import_runs([folder], db)
        assert store_finished_run(folder, db) is None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store_finished_run(folder, db) == 1  # free again: stored
    assert store_finished_run(folder, False) is None  # results_db: false, no store


def test_the_store_path_comes_from_config_then_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SSLPOISON_RESULTS", str(tmp_path / "env.sqlite"))
    assert store_path("given.sqlite").name == "given.sqlite"
    assert store_path(None) == tmp_path / "env.sqlite"
    monkeypatch.delenv("SSLPOISON_RESULTS")
    assert str(store_path(None)) == "runs/results.sqlite"


def test_a_missing_store_is_named_and_not_created(tmp_path, capsys):
    db = tmp_path / "none.sqlite"
    assert main(["runs", "--db", str(db)]) == 2
    assert f"results store {db}: no such file" in capsys.readouterr().err
    assert not db.exists()


@pytest.mark.slow
def test_a_run_adds_itself_and_survives_a_corrupt_store(
    tmp_path, tiny_experiment, write_config, capsys, caplog
):
    tiny_experiment["pretrain"]["train"]["epochs"] = 1
    tiny_experiment["eval"] |= {"probes": ["linear"], "baselines": [], "labelled": 128}
    tiny_experiment |= {"results_db": str(tmp_path / "store.sqlite"), "tracker": {}}
    cfg = write_config(tiny_experiment)
    assert main(["run", cfg, "--out", str(tmp_path / "a")]) == 0
    written = read_results(tmp_path / "a")
    assert written["provenance"]["seed"] == 0 and written["provenance"]["precision"] == "fp32"
    with ResultsStore(tmp_path / "store.sqlite", read_only=True) as store:
        (run,) = store.runs()
    assert run.metrics == written["metrics"] and run.config == written["config"]
    assert [r.key for r in run.rows] == ["synthetic/linear_acc"]
    if (tmp_path / "a" / "tensorboard").exists():  # the tracking extra is installed
        assert list((tmp_path / "a" / "tensorboard").glob("events.out.tfevents.*"))

    bad = tmp_path / "bad.sqlite"
    bad.write_text("not a database")
    capsys.readouterr()
    with caplog.at_level(logging.ERROR):
        assert main(["run", cfg, "--out", str(tmp_path / "b"), "--set", f"results_db={bad}"]) == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"results store {bad}: file is not a database; the run was not added (its results.json "
        f"is written)"
    ]
    assert read_results(tmp_path / "b")["metrics"] == written["metrics"]
