"""Where a run's numbers came from: the code, the software, the hardware, the precision and
the seed, recorded in ``results.json`` (``provenance``) and in the results store."""

from __future__ import annotations

import datetime
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import sslpoison


def package_version() -> str:
    """The installed version of sslpoison (the source's ``__version__`` when not installed)."""
    try:
        return metadata.version("sslpoison")
    except metadata.PackageNotFoundError:
        return sslpoison.__version__


def git_commit(where: Path | None = None) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout holding ``where`` (default:
    this package's source), or None outside one (an installed wheel) or without git."""
    where = where or Path(sslpoison.__file__).parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(where), *args], capture_output=True, text=True, timeout=5
        )
        if done.returncode != 0:
            raise OSError(done.stderr.strip())
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def device_name(device: torch.device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    if device.type == "cuda" and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def precisions(stages: dict[str, Any]) -> dict[str, str]:
    """``{stage: "bf16" | "fp32"}`` of every stage record that trained (or was cached from a
    training) and says its precision."""
    return {
        name: record["precision"]
        for name, record in stages.items()
        if isinstance(record, dict) and record.get("precision")
    }


def overall_precision(used: dict[str, str]) -> str | None:
    """The one precision every stage used, ``mixed``, or None when no stage trained."""
    kinds = sorted(set(used.values()))
    return kinds[0] if len(kinds) == 1 else ("mixed" if kinds else None)


def provenance(
    device: torch.device,
    stages: dict[str, Any],
    seed: int,
    stage_seeds: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The run's provenance: package version, git commit (when run from a checkout), Python
    and torch versions, device, torch's CPU capability, the precision (one value when every
    stage used the same, else ``mixed``; per stage in ``precisions``), the seed (and, where
    a stage group's differs from it, ``stage_seeds``: each group's) and the time it finished
    (UTC, ISO 8601)."""
    used = precisions(stages)
    return {
        "package": "sslpoison",
        "version": package_version(),
        "git": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device_name(device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "precision": overall_precision(used),
        "precisions": used,
        "seed": seed,
        **({"stage_seeds": stage_seeds} if set((stage_seeds or {}).values()) - {seed} else {}),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


__all__ = ["git_commit", "overall_precision", "package_version", "precisions", "provenance"]
