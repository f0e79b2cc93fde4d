"""DDP on CPU: two gloo processes under torchrun train one model in lock-step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


@pytest.mark.slow
def test_two_gloo_processes_stay_in_sync(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(worker),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(str(tmp_path / "rank0.safetensors"))
    b = load_file(str(tmp_path / "rank1.safetensors"))
    for key, value in a.items():
        if "running" in key:  # BatchNorm statistics are per rank (no SyncBN)
            continue
        assert torch.equal(value, b[key]), f"{key} differs between ranks"
    # Each rank ran 64 / 2 / (16 / 2) = 4 steps per epoch: the data was sharded.
    assert (tmp_path / "rank0.steps").read_text() == "8"
    assert (tmp_path / "ckpt" / "last.json").exists()
