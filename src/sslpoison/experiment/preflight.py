"""Checks before any training: every input readable and every output writable, so that a
run never fails at its end for a reason known at its start.

:func:`preflight` (called by the runner once the inputs are loaded) checks:

* the counts taken from the pre-training set (``attack.shadow``, what each defense says it
  takes, e.g. ``defenses.N.clean``, ``detectors.N.clean``) against its size (see
  ``data.allow_smaller``);
* every downstream dataset: both splits load (a damaged file is named), and the probes'
  counts fit them (see :class:`~sslpoison.eval.downstream.EvalConfig`);
* the stage cache: a folder that can be written;
* the output folder (:func:`claim_folder`): a folder (not a file) that can be written, and
  not another experiment's — an earlier run of a different config there is moved aside to
  ``<out>.old-<time>`` (with a warning) so that no two runs' files mix;
* free space on the disks of both, where it can be estimated (the encoders and checkpoints).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from sslpoison.configbase import checked_count, without_neutral
from sslpoison.data.imageset import ImageSet
from sslpoison.errors import OutputError, warn
from sslpoison.eval.downstream import Downstream
from sslpoison.utils import atomic_write_json, stable_hash

#: The file that says which experiment (or sweep) an output folder holds.
MARKER = ".sslpoison-run.json"

__all__ = [
    "MARKER",
    "claim_folder",
    "preflight",
    "run_identity",
    "sweep_grid_identity",
    "writable_folder",
]


def run_identity(config: dict[str, Any]) -> str:
    """A hash of a run's config (as ``results.json`` stores it) without the keys that cannot
    change its numbers (:data:`~sslpoison.configbase.RESULT_NEUTRAL`): a run that differs
    only in them is the same experiment."""
    return stable_hash(without_neutral(config), length=24)


def writable_folder(path: Path, what: str) -> Path:
    """``path`` as a folder that exists and can be written (created with its parents).

    Raises:
        OutputError: naming ``what`` and ``path``: a file is there (or in its way), or the
            filesystem refuses to create or write it (permissions, read-only, full).
    """
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise OutputError(f"{what} {path}: exists and is not a folder")
        path.mkdir(parents=True, exist_ok=True)
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(f"{what} {path}: cannot be created ({e.strerror or e})") from None
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".sslpoison-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{what} {path}: cannot be written ({e.strerror or e})") from None
    return path


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def sweep_grid_identity(grid: dict[str, Any]) -> str:
    """What an unmarked sweep folder (written before markers) is known by: its grid."""
    return "grid:" + stable_hash(grid, length=24)


def _held_identity(out: Path) -> tuple[str | None, str]:
    """(identity, name) of what ``out`` holds: from its marker, else (written before
    markers) from its ``results.json``'s config or its ``sweep.json``'s grid; (None, "")
    when it holds none of them."""
    marker = _read_json(out / MARKER)
    if marker is not None and isinstance(marker.get("identity"), str):
        return marker["identity"], str(marker.get("name", ""))
    results = _read_json(out / "results.json")
    if results is not None and isinstance(results.get("config"), dict):
        config = results["config"]
        return run_identity(config), str(config.get("name", ""))
    sweep = _read_json(out / "sweep.json")
    if sweep is not None and isinstance(sweep.get("grid"), dict):
        return sweep_grid_identity(sweep["grid"]), "a sweep"
    return None, ""


def claim_folder(
    out: Path, kind: str, name: str, identity: str, also: frozenset[str] = frozenset()
) -> Path | None:
    """Make ``out`` the folder of this run (or sweep): writable, and marked with
    ``identity``. When it holds another experiment (an identity other than ``identity`` and
    ``also``), that one is moved aside to ``<out>.old-<YYYYmmdd-HHMMSS>`` first, with a
    warning; returns where to (None when nothing was moved).

    Raises:
        OutputError: ``out`` is a file, cannot be written, or cannot be moved aside.
    """
    out = Path(out)
    writable_folder(out, "--out")
    held, held_name = _held_identity(out)
    moved = None
    only_marker = all(p.name == MARKER for p in out.iterdir())
    if held is not None and held not in {identity, *also} and not only_marker:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        moved = out.with_name(f"{out.name}.old-{stamp}")
        n = 1
        while moved.exists():
            n += 1
            moved = out.with_name(f"{out.name}.old-{stamp}-{n}")
        try:
            out.rename(moved)
        except OSError as e:
            raise OutputError(
                f"--out {out}: holds another experiment ({held_name or 'unnamed'}) and cannot "
                f"be moved aside to {moved} ({e.strerror or e}); choose another --out"
            ) from None
        warn(f"--out {out} held another experiment ({held_name or 'unnamed'}); moved it to {moved}")
        writable_folder(out, "--out")
    atomic_write_json(out / MARKER, {"kind": kind, "name": name, "identity": identity})
    return moved


def _parameters(backbone: Any, channels: int, size: int | None = None) -> int:
    """The parameter count of ``backbone`` (built on the meta device: no memory, no time)."""
    from sslpoison.models.backbone import build_encoder

    with torch.device("meta"):
        model = build_encoder(backbone, channels, size)
    return sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())


def needed_bytes(
    cfg: Any, channels: int, size: int | None = None, params: int | None = None
) -> tuple[int, int]:
    """About how many bytes (output folder, stage cache) the run writes: every encoder it
    saves (fp32), and in the cache each trained model with a checkpoint (weights and up to
    two optimizer buffers) while it trains. ``params``: the clean encoder's parameter count
    when it is given (else that of ``pretrain.backbone``)."""
    if params is None:
        params = _parameters(cfg.pretrain.backbone, channels, size)
    model = 4 * params
    defended = sum(d.saved_encoders() for d in cfg.defenses)
    encoders = 1 + (cfg.attack is not None) + defended
    slack = 4 << 20  # JSON, plots, features
    return model * encoders + slack, model * encoders * 4 + slack


def check_free_space(needs: dict[Path, tuple[str, int]]) -> None:
    """Refuse when a disk has less free space than the folders on it need (estimated)."""
    by_disk: dict[int, list[tuple[Path, str, int]]] = {}
    for path, (what, need) in needs.items():
        by_disk.setdefault(os.stat(path).st_dev, []).append((path, what, need))
    for entries in by_disk.values():
        need = sum(n for _, _, n in entries)
        path = entries[0][0]
        free = shutil.disk_usage(path).free
        if free < need:
            whats = " and ".join(f"{what} {p}" for p, what, _ in entries)
            raise OutputError(
                f"{whats}: {free / 2**20:.0f} MiB free, the run needs about "
                f"{need / 2**20:.0f} MiB; free some space or choose another folder"
            )


def check_counts(cfg: Any, data: ImageSet) -> None:
    """The counts of pre-training images the attack, defenses and detectors take fit the
    pre-training set (see ``data.allow_smaller``)."""
    wanted = []
    if cfg.attack is not None and hasattr(cfg.attack, "shadow"):
        wanted.append(("attack.shadow", cfg.attack.shadow))
    wanted += [
        (f"defenses.{i}.{key}", asked)
        for i, d in enumerate(cfg.defenses)
        for key, asked in d.pretraining_counts().items()
    ]
    wanted += [(f"detectors.{i}.clean", d.clean) for i, d in enumerate(cfg.detectors)]
    what = f"the pre-training set ({cfg.data.dataset})"
    for key, asked in wanted:
        checked_count(
            key, asked, len(data), what, allowed=cfg.data.allow_smaller, flag="data.allow_smaller"
        )


def preflight(
    cfg: Any, out: Path, data: ImageSet, downstream: Downstream, params: int | None = None
) -> None:
    """Every check of the module doc, before any training (``cfg``: the experiment's
    :class:`~sslpoison.experiment.config.ExperimentConfig`; ``params``: the parameter count
    of a given clean encoder)."""
    check_counts(cfg, data)
    for name in cfg.eval.datasets:  # the files first, then what is taken of them
        downstream.split(name, "train")
        downstream.split(name, "test")
    for name in cfg.eval.datasets:
        downstream.train(name)
        downstream.test(name)
    cache = writable_folder(cfg.resolved_cache_dir(), "stage cache (cache_dir / $SSLPOISON_CACHE)")
    out = writable_folder(out, "--out")
    out_need, cache_need = needed_bytes(cfg, data.channels, data.image_size, params)
    check_free_space({out: ("--out", out_need), cache: ("stage cache", cache_need)})
    claim_folder(out, "run", cfg.name, run_identity(cfg.model_dump(mode="json")))
