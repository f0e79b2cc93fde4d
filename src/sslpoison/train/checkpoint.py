"""Training checkpoints as safetensors (every tensor) + JSON (everything else). No pickle.

A checkpoint is ``DIR/ckpt-EPOCH.safetensors`` plus ``DIR/last.json`` that names it; both
are written atomically and the JSON last, so a crash never leaves a half-written pointer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from sslpoison.errors import one_line, warn
from sslpoison.utils import atomic_write_json, atomic_write_via

POINTER = "last.json"


def _flatten(prefix: str, obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor of a nested dict/list into ``tensors``; leave a reference behind."""
    if isinstance(obj, torch.Tensor):
        key = prefix
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {str(k): _flatten(f"{prefix}.{k}", v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flatten(f"{prefix}.{i}", v, tensors) for i, v in enumerate(obj)]
    return obj


def _restore(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: _restore(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore(v, tensors) for v in obj]
    return obj


def save_checkpoint(directory: Path, epoch: int, state: dict[str, Any]) -> Path:
    """Write ``state`` (nested dicts of tensors and JSON values) for ``epoch``."""
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten("s", state, tensors)
    weights = directory / f"ckpt-{epoch:05d}.safetensors"
    atomic_write_via(weights, lambda tmp: save_file(tensors, str(tmp)))
    previous = latest_checkpoint_file(directory)
    atomic_write_json(
        directory / POINTER, {"epoch": epoch, "tensors": weights.name, "state": skeleton}
    )
    if previous is not None and previous != weights:
        previous.unlink(missing_ok=True)
    return weights


def latest_checkpoint_file(directory: Path) -> Path | None:
    pointer = Path(directory) / POINTER
    try:
        return Path(directory) / Path(json.loads(pointer.read_text())["tensors"]).name
    except (OSError, ValueError, KeyError, TypeError):  # none, or a damaged pointer
        return None


def load_checkpoint(directory: Path) -> tuple[int, dict[str, Any]] | None:
    """The last complete checkpoint as ``(epoch, state)``, or None when there is none — or
    when it is damaged (a warning: training then starts over)."""
    from sslpoison.models.io import read_safetensors

    pointer = Path(directory) / POINTER
    if not pointer.exists():
        return None
    try:
        meta = json.loads(pointer.read_text(encoding="utf-8"))
        weights = Path(directory) / Path(meta["tensors"]).name
        state = _restore(meta["state"], read_safetensors(weights))
        return int(meta["epoch"]), state
    except (OSError, ValueError, KeyError, TypeError) as e:  # incl. ModelFileError
        warn(f"{pointer}: damaged checkpoint ({one_line(e, 200)}); training starts over")
        return None


def load_optimizer(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load ``opt.state_dict()`` as it comes back from JSON (string keys, lists for tuples)."""
    sd = {
        "state": {int(k): v for k, v in state["state"].items()},
        "param_groups": [
            {k: tuple(v) if k == "betas" else v for k, v in g.items()}
            for g in state["param_groups"]
        ],
    }
    opt.load_state_dict(sd)


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
