"""Sweeps beyond one process: the plan (shared stages first), the executors (serial, local
processes, SLURM arrays through a fake ``sbatch``), failed and killed cells, ``--status``."""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from fake_slurm import install_fake_slurm, submissions

from sslpoison.cli import launch, main
from sslpoison.experiment.config import ExperimentConfig
from sslpoison.sweeps.cells import status_path, status_table, update_status
from sslpoison.sweeps.plan import PlannedStage, SweepPlan, plan_sweep
from sslpoison.sweeps.sweep import SweepIncomplete, load_sweep, run_sweep, with_executor
from tiny_runs import TINY_RUN

SRC = Path(__file__).parents[2] / "src"

#: The tiny run (one epoch on 64 synthetic images, k-NN) as a sweep's cell; fp32 on every
#: machine, so that runs in this process and in subprocesses share their stage keys and
#: their numbers.
BASE = copy.deepcopy(TINY_RUN) | {"name": "tiny-cells"}
BASE["pretrain"]["train"]["amp_cpu"] = False


@pytest.fixture
def sweep_file(tmp_path):
    """``sweep_file(grid, **changes) -> path`` of a sweep of :data:`BASE`."""

    def write(grid=None, base=BASE, **changes) -> Path:
        (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
        spec = {
            "name": "cells",
            "base": "base.yaml",
            "grid": grid or {"eval.knn.k": [3, 5], "eval.labelled": [32, 64]},
            "metrics": ["synthetic/knn_acc"],
            **changes,
        }
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return write


def _rows(out: Path) -> list[dict]:
    return json.loads((out / "sweep.json").read_text())["rows"]


def _stages(out: Path, row: dict) -> dict:
    return json.loads((out / row["run"] / "results.json").read_text())["stages"]


# ---- the plan ---------------------------------------------------------------------------


def test_the_plan_runs_one_leader_per_shared_stage_first():
    p1, p2 = PlannedStage("pretrain", "p1", 0, True), PlannedStage("pretrain", "p2", 0, True)
    a = {k: PlannedStage("attack", k, 1, False) for k in ("a1", "a2", "a3")}
    plan = SweepPlan(
        {
            "c0": [p1, a["a1"]],
            "c1": [p1, a["a1"]],
            "c2": [p1, a["a2"]],
            "c3": [p1, a["a2"]],
            "c4": [p2, a["a3"]],  # p2 is cached: nothing to share first
            "c5": [p2, a["a3"]],
        },
        cached={"p2"},
    )
    assert set(plan.shared()) == {p1, a["a1"], a["a2"], a["a3"]}
    # depth 0: c0 computes p1 (and a1); depth 1: c2 for a2, c4 for a3; then the rest.
    assert plan.phases() == [["c0"], ["c2", "c4"], ["c1", "c3", "c5"]]
    text = "\n".join(plan.describe(finished=1))
    assert "7 cells, 6 to run (1 finished before)" in text
    assert "pretrain: 2 stages, 1 shared (by up to 4 cells), 1 cached" in text
    assert "attack: 3 stages, 3 shared (by up to 2 cells)" in text
    assert SweepPlan({"c0": [p1], "c1": [p2]}).phases() == [["c0", "c1"]]  # nothing shared


def test_the_plan_keys_the_pretraining_as_the_run_does(tmp_path, tiny_badencoder):
    tiny_badencoder["shadow"] = 32
    """The plan's pre-training keys are the cache keys the cells use; an encoder attack
    shared by cells (same config, same clean encoder) is one stage of the plan."""
    cfg = ExperimentConfig.model_validate(
        BASE | {"attack": tiny_badencoder, "defenses": [{"name": "finetune", "clean": 32}]}
    )
    other = cfg.model_copy(update={"defenses": []})
    reseeded = ExperimentConfig.model_validate(cfg.model_dump() | {"seed": 1})
    plan = plan_sweep({"a": cfg, "b": other, "c": reseeded}, lambda _: torch.device("cpu"))
    kinds = {name: [s.kind for s in stages] for name, stages in plan.stages.items()}
    assert kinds == {"a": ["pretrain", "attack", "defense"], "b": ["pretrain", "attack"],
                     "c": ["pretrain", "attack", "defense"]}  # fmt: skip
    shared = plan.shared()
    assert set(shared) == set(plan.stages["b"]) and all(v == ["a", "b"] for v in shared.values())
    assert plan.phases() == [["a"], ["b", "c"]]


# ---- the executor section ---------------------------------------------------------------


def test_the_executor_section_and_its_command_line_overrides(sweep_file, tmp_path, capsys):
    path = sweep_file(executor={"name": "slurm", "partition": "gpu", "gpus_per_node": 4})
    sweep, _ = load_sweep(path)
    ex = with_executor(sweep, jobs=8, sets=["time=90", "sbatch={account: lab}"])
    assert (ex.name, ex.partition, ex.time, ex.array_parallelism) == ("slurm", "gpu", 90, 8)
    assert ex.tasks == 4 and ex.sbatch == {"account": "lab"}  # one process per GPU
    assert with_executor(sweep, "local", jobs=3).jobs == 3
    code = main(["sweep", str(path), "--executor-set", "partiton=gpu", "--out", str(tmp_path)])
    assert code == 2 and "executor.partiton: unknown key" in capsys.readouterr().err
    code = main(["sweep", str(path), "--executor", "serial", "--executor-set", "tasks_per_node=2"])
    assert code == 2 and "executor.tasks_per_node" in capsys.readouterr().err


def test_local_cells_with_gpus_get_gpus_of_their_own(tmp_path, monkeypatch):
    from sslpoison.errors import ConfigError
    from sslpoison.sweeps.executors import ExecutorConfig, SubmititExecutor

    class Recorder:
        def update_parameters(self, **params):
            self.visible = params["visible_gpus"]

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    cfg = ExecutorConfig(name="local", jobs=2, gpus_per_node=2)
    executor, ex = SubmititExecutor(cfg, tmp_path, tmp_path / "logs", "s"), Recorder()
    executor._give_gpus(ex, "a")
    assert ex.visible == (0, 1) and cfg.tasks == 2  # one process per GPU
    executor.in_flight["a"] = object()
    executor._give_gpus(ex, "b")
    assert ex.visible == (2, 3)
    del executor.in_flight["a"]  # a ended: its GPUs are free again
    executor.in_flight["b"] = object()
    executor._give_gpus(ex, "c")
    assert ex.visible == (0, 1)
    three = SubmititExecutor(cfg.model_copy(update={"jobs": 3}), tmp_path, tmp_path, "s")
    with pytest.raises(ConfigError, match="3 jobs × 2 GPUs asked for, this machine has 4"):
        three._give_gpus(ex, "a")


# ---- failures, resuming, status --------------------------------------------------------


def test_a_failed_cell_is_listed_the_others_finish_and_only_it_runs_again(sweep_file, tmp_path):
    from sslpoison.experiment.runner import run_experiment

    calls = []

    def flaky(cfg, folder):
        calls.append(folder.name)
        if cfg.eval.knn.k == 5 and len(calls) < 4:
            raise RuntimeError("the node went away")
        return run_experiment(cfg, folder)

    sweep, base = load_sweep(sweep_file({"eval.knn.k": [3, 5, 7]}))
    out = tmp_path / "out"
    with pytest.raises(SweepIncomplete) as failed:
        run_sweep(sweep, base, out, run=flaky)
    message = str(failed.value)
    assert "1 of 3 cells failed" in message and "01-k=5" in message
    log_file = out / "logs" / "01-k=5.log"
    assert str(log_file) in message and "RuntimeError: the node went away" in log_file.read_text()
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["done", "failed", "done"]
    assert rows[1]["synthetic/knn_acc"] is None and rows[1]["minutes"] == "failed"
    assert "| 5 | - | failed |" in (out / "sweep.md").read_text()
    assert _stages(out, rows[0])["pretrain"]["cached"] is False  # the shared stage, once
    assert _stages(out, rows[2])["pretrain"]["cached"] is True
    table = status_table(out, [r["run"] for r in rows])
    assert "01-k=5  failed" in table and "the node went away" in table
    assert table.endswith("3 cells: 2 done, 1 failed")

    mtimes = {r["run"]: (out / r["run"] / "results.json").stat().st_mtime_ns for r in rows[::2]}
    rows = run_sweep(sweep, base, out, run=flaky)
    assert calls[3:] == ["01-k=5"]  # only the missing cell ran again
    assert [r["status"] for r in rows] == ["done"] * 3
    assert all((out / n / "results.json").stat().st_mtime_ns == t for n, t in mtimes.items())


def test_the_status_table_names_each_state(tmp_path):
    out = tmp_path / "out"
    now = time.time()
    update_status(status_path(out, "a"), state="running", started=now - 90, host="elsewhere",
                  pid=1, log="logs/a.err")  # fmt: skip
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    update_status(status_path(out, "b"), state="running", started=now - 5,
                  host=socket.gethostname(), pid=dead.pid)  # fmt: skip
    update_status(status_path(out, "c"), state="failed", started=now - 9, ended=now - 4,
                  error="boom", log="logs/c.err")  # fmt: skip
    lines = status_table(out, ["a", "b", "c", "d"]).splitlines()
    assert lines[0].split() == ["cell", "state", "started", "wall", "log"]
    assert lines[1].split()[:2] == ["a", "running"] and "1.5 min" in lines[1]
    assert lines[2].split()[:2] == ["b", "failed"]  # its process is gone
    assert lines[3].split()[:2] == ["c", "failed"] and "5 s" in lines[3]
    assert lines[3].endswith("logs/c.err (boom)")
    assert lines[4].split()[:2] == ["d", "pending"]
    assert lines[-1] == "4 cells: 1 pending, 1 running, 2 failed"


# ---- local processes --------------------------------------------------------------------


def test_local_jobs_give_the_serial_metrics_and_a_killed_cell_is_the_only_one_run_again(
    sweep_file, tmp_path, monkeypatch, caplog
):
    """The pipeline's end-to-end test. Four cells sharing one pre-training (12 epochs, a
    checkpoint each) run as two parallel processes (submitit's local executor): the first
    cell computes the shared pre-training alone, before the others start. Killed (SIGKILL)
    mid-training, it is listed as failed with its log; the three others finish (one resumes
    the pre-training from the checkpoint, two reuse it) and the sweep exits 3. The same
    command again runs the killed cell alone. Every cell then has the metrics of the same
    sweep run serially, with a cache of its own."""
    base = copy.deepcopy(BASE)
    base["pretrain"]["train"] |= {"epochs": 12, "checkpoint_every": 1}
    path = sweep_file({"eval.knn.k": [3, 5, 7, 9]}, base=base)
    assert main(["sweep", str(path), "--out", str(tmp_path / "serial")]) == 0
    monkeypatch.setenv("SSLPOISON_CACHE", str(tmp_path / "local-cache"))
    out, local = tmp_path / "local", with_executor(load_sweep(path)[0], "local", jobs=2)
    ended: list[BaseException | None] = []

    def sweep() -> None:  # the driver, as `sslpoison sweep --executor local --jobs 2` runs it
        try:
            run_sweep(*load_sweep(path), out, run=launch, executor=local)
            ended.append(None)
        except BaseException as e:
            ended.append(e)

    driver = threading.Thread(target=sweep)
    driver.start()
    leader = status_path(out, "00-k=3")
    cache = tmp_path / "local-cache" / "pretrain"
    deadline = time.monotonic() + 300
    while not list(cache.glob("*/checkpoints/last.json")) or not leader.exists():
        assert time.monotonic() < deadline and driver.is_alive(), ended
        time.sleep(0.05)
    os.kill(json.loads(leader.read_text())["pid"], signal.SIGKILL)
    driver.join(timeout=300)
    (failed,) = ended
    assert isinstance(failed, SweepIncomplete) and failed.exit_code == 3, failed
    assert "1 of 4 cells failed" in str(failed) and "00-k=3 (log: " in str(failed)
    assert "| 3 | - | failed |" in (out / "sweep.md").read_text()
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["failed", "done", "done", "done"]
    statuses = [json.loads(status_path(out, r["run"]).read_text()) for r in rows]
    assert statuses[0]["state"] == "failed" and Path(statuses[0]["log"]).exists()
    assert all(s["started"] > statuses[0]["ended"] for s in statuses[1:])  # shared stage first
    pretrained = [_stages(out, r)["pretrain"] for r in rows[1:]]
    assert sorted(p["cached"] for p in pretrained) == [False, True, True]  # computed once
    assert [p["resumed_from_epoch"] >= 1 for p in pretrained if not p["cached"]] == [True]

    mtimes = {r["run"]: (out / r["run"] / "results.json").stat().st_mtime_ns for r in rows[1:]}
    caplog.clear()
    caplog.set_level(logging.INFO)
    run_sweep(*load_sweep(path), out, run=launch, executor=local)  # again: the killed cell
    assert "4 cells, 1 to run (3 finished before)" in caplog.text
    assert all((out / n / "results.json").stat().st_mtime_ns == t for n, t in mtimes.items())
    assert json.loads(leader.read_text())["state"] == "done"
    serial, rows = _rows(tmp_path / "serial"), _rows(out)
    assert [r["status"] for r in rows] == ["done"] * 4
    assert [r["synthetic/knn_acc"] for r in rows] == [r["synthetic/knn_acc"] for r in serial]
    assert len(list(cache.iterdir())) == 1


# ---- SLURM, through a fake sbatch -------------------------------------------------------


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """``sbatch``, ``srun`` and ``sacct`` of :mod:`fake_slurm` first on PATH; returns the
    folder where they keep what they were given."""
    state = tmp_path / "slurm-state"
    install_fake_slurm(tmp_path / "bin", state)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_STATE", str(state))
    return state


def test_slurm_submits_one_array_per_phase_with_the_executor_section(
    sweep_file, tmp_path, fake_slurm, monkeypatch, capsys
):
    monkeypatch.setenv("FAKE_SLURM_CANCEL", "1")  # record the submissions only
    executor = {
        "name": "slurm",
        "partition": "gpu",
        "time": 90,
        "cpus_per_task": 6,
        "gpus_per_node": 2,
        "mem_gb": 32,
        "array_parallelism": 2,
        "sbatch": {"account": "lab", "qos": "high"},
        "setup": ["module load cuda"],
    }
    path = sweep_file(executor=executor)
    out = tmp_path / "out"
    code = main(["sweep", str(path), "--out", str(out), "--executor-set", "partition=a100"])
    err = capsys.readouterr().err
    assert code == 3 and "4 of 4 cells failed" in err  # every job cancelled
    first, second = submissions(fake_slurm)
    assert len(first["argv"]) == 1 and first["argv"][0].endswith(".sh")  # sbatch SCRIPT
    for flag in ("--partition=a100", "--time=90", "--cpus-per-task=6", "--gpus-per-node=2",
                 "--ntasks-per-node=2", "--mem=32768MB", "--account=lab", "--qos=high",
                 "--job-name=sslpoison-cells"):  # fmt: skip
        assert f"#SBATCH {flag}\n" in first["script"] and f"#SBATCH {flag}\n" in second["script"]
    assert "module load cuda" in first["script"] and "srun" in first["script"]
    assert "--array" not in first["script"]  # the leader: one job
    assert "#SBATCH --array=0-2%2\n" in second["script"]  # the others: one array, 2 at once
    assert "#SBATCH --dependency=afterany:1000\n" in second["script"]  # after the leader
    statuses = [json.loads(status_path(out, r["run"]).read_text()) for r in _rows(out)]
    assert [s["job_id"] for s in statuses] == ["1000", "1001_0", "1001_1", "1001_2"]
    assert [s["state"] for s in statuses] == ["failed"] * 4
    assert statuses[2]["log"].endswith("logs/1001_1_0_log.err")
    assert all("its job ended before the cell did" in s["error"] for s in statuses)
    # --status asks sacct about a cell its status file still has running (a sweep gone)
    update_status(status_path(out, "01-k=3,labelled=64"), state="running", error=None)
    assert main(["sweep", str(path), "--out", str(out), "--status"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("01-"))
    assert line.split()[1] == "failed" and line.endswith("(its job ended: CANCELLED)")


@pytest.mark.slow
def test_slurm_cells_run_and_a_cell_of_two_tasks_runs_under_torch_distributed(
    sweep_file, tmp_path, fake_slurm
):
    """On the fake cluster the jobs run: a one-cell sweep with ``tasks_per_node: 2`` runs
    its cell as two processes that join one gloo process group from the variables mapped
    from SLURM's; rank 0 writes the results, which the sweep's table shows."""
    import cloudpickle
    import env_recorder

    cloudpickle.register_pickle_by_value(env_recorder)
    path = sweep_file({"eval.knn.k": [3]}, executor={"name": "slurm", "tasks_per_node": 2})
    sweep, base = load_sweep(path)
    out = tmp_path / "out"
    rows = run_sweep(sweep, base, out, run=env_recorder.record_then_launch)
    assert rows[0]["status"] == "done" and rows[0]["synthetic/knn_acc"] is not None
    seen = [json.loads((out / f"env-rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["RANK"] for s in seen] == ["0", "1"] and [s["LOCAL_RANK"] for s in seen] == ["0", "1"]
    assert all(s["WORLD_SIZE"] == "2" for s in seen)
    assert seen[0]["MASTER_PORT"] == seen[1]["MASTER_PORT"]
    assert all(s["world_size_in_training"] == 2 for s in seen)
    (job,) = submissions(fake_slurm)
    assert "#SBATCH --ntasks-per-node=2\n" in job["script"]
