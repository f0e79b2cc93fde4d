"""Runs that share a stage cache, and runs that are killed: two identical runs started
together train once (the second waits on the stage's lock, then reuses it); a lock held
too long is a one-line error naming it; a run killed by SIGKILL or Ctrl-C leaves no lock
behind and resumes to the same weights."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from user_errors import assert_user_error, trained_stages

from sslpoison.experiment.cache import file_lock
from sslpoison.experiment.config import load_config
from sslpoison.experiment.stages import pretrain_key, pretraining_data

SRC = Path(__file__).parents[2] / "src"


def _wait(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _held(lock: Path) -> bool:
    """Whether another process holds ``lock`` now."""
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@pytest.fixture
def long_run(tiny_run, write_yaml, tmp_path):
    """A config whose pre-training checkpoints every epoch for a few seconds, in fp32 on
    every machine (so that in-process and subprocess runs share their stage keys); the
    fixture ``tiny_run`` becomes the same run without ``cache_dir``."""
    tiny_run["pretrain"]["train"] |= {"epochs": 10, "amp_cpu": False, "checkpoint_every": 1}
    return write_yaml(tiny_run | {"cache_dir": str(tmp_path / "cache")}, "long.yaml")


def _start(cfg: Path, out: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    with open(log, "w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "sslpoison.cli", "run", str(cfg), "--out", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
        )


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_two_identical_runs_started_together_train_once(long_run, tmp_path):
    first = _start(long_run, tmp_path / "a", tmp_path / "a.log")
    second = None
    try:
        cache = tmp_path / "cache" / "pretrain"
        _wait(lambda: any(_held(p) for p in cache.glob("*/.lock")), "the first run's lock")
        first.send_signal(signal.SIGSTOP)  # holding the lock, mid-training
        second = _start(long_run, tmp_path / "b", tmp_path / "b.log")
        _wait(lambda: "waiting" in (tmp_path / "b.log").read_text(), "the second run to wait")
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=300) == 0, (tmp_path / "a.log").read_text()
        assert second.wait(timeout=300) == 0, (tmp_path / "b.log").read_text()
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
    a, b = _results(tmp_path / "a"), _results(tmp_path / "b")
    assert a["stages"]["pretrain"]["cached"] is False
    assert b["stages"]["pretrain"]["cached"] is True  # waited, then reused: trained once
    assert a["metrics"] == b["metrics"] and len(list(cache.iterdir())) == 1


def test_a_lock_held_too_long_is_named(tiny_run, write_yaml, tmp_path, cli, monkeypatch):
    cfg = load_config(write_yaml(tiny_run))
    data = pretraining_data(cfg.data, False, cfg.seed)
    key = pretrain_key(cfg.pretrain, data, cfg.seed, torch.device("cpu"))
    lock = Path(os.environ["SSLPOISON_CACHE"]) / "pretrain" / key / ".lock"
    monkeypatch.setenv("SSLPOISON_LOCK_TIMEOUT", "0.5")
    with file_lock(lock, "the test"):  # another holder (flock: per open file)
        code, _, err = cli("run", write_yaml(tiny_run), "--out", tmp_path / "out")
    line = assert_user_error(code, err, str(lock), "SSLPOISON_LOCK_TIMEOUT")
    assert "another process" in line and not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "ctrl-c"])
def test_a_killed_run_leaves_no_lock_and_resumes_to_the_same_weights(
    sig, long_run, tmp_path, tiny_run, write_yaml, cli
):
    run = _start(long_run, tmp_path / "killed", tmp_path / "killed.log")
    try:
        cache = tmp_path / "cache" / "pretrain"
        _wait(lambda: list(cache.glob("*/checkpoints/last.json")), "a checkpoint")
        run.send_signal(sig)
        code = run.wait(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    log = (tmp_path / "killed.log").read_text()
    if sig == signal.SIGINT and code != 0:  # Ctrl-C: one line, exit 130, no traceback
        assert code == 130 and "Traceback" not in log and "interrupted" in log, log
    (stage,) = trained_stages(tmp_path / "cache")
    assert not _held(stage / ".lock")
    code_again, _, err = cli("run", long_run, "--out", tmp_path / "resumed")
    assert code_again == 0, err
    record = _results(tmp_path / "resumed")["stages"]["pretrain"]
    if code != 0:  # killed before the stage finished: it resumed from its checkpoint
        assert record["cached"] is False and record["resumed_from_epoch"] >= 1

    straight = tiny_run | {"cache_dir": str(tmp_path / "straight-cache")}  # a cache of its own
    code_straight, _, err = cli(
        "run", write_yaml(straight, "straight.yaml"), "--out", tmp_path / "s"
    )
    assert code_straight == 0, err
    got = load_file(tmp_path / "resumed" / "encoder.safetensors")
    want = load_file(tmp_path / "s" / "encoder.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
