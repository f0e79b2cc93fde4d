"""A sweep cell's ``run`` for the tests: write what torch.distributed sees in this task, then
run the cell as the CLI does (pickled by value into the job: this module is not installed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def record_then_launch(cfg, folder: Path):
    """Join the process group the job's variables describe, write them and the group's size
    to ``<folder>/../env-rank<RANK>.json``, then :func:`sslpoison.cli.launch` the cell."""
    from sslpoison.cli import launch
    from sslpoison.train import dist

    dist.init_from_env(torch.device("cpu"))
    seen = {k: os.environ.get(k) for k in VARIABLES} | {"world_size_in_training": dist.world_size()}
    rank = os.environ.get("RANK", "0")
    (Path(folder).parent / f"env-rank{rank}.json").write_text(json.dumps(seen))
    return launch(cfg, folder)
