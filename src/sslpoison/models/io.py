"""Encoders on disk: ``NAME.safetensors`` (weights) + ``NAME.json`` (the card).

The card holds the architecture name and its constructor arguments, so ``load_encoder``
rebuilds the module and loads tensors only: nothing is ever unpickled. A file that cannot be
loaded (truncated, not safetensors, a card that names arguments the backbone does not take,
weights of another shape, NaN weights) raises :class:`~sslpoison.errors.ModelFileError`
naming the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sslpoison.errors import ModelFileError, ModelFileMissing, one_line
from sslpoison.utils import atomic_write_json, atomic_write_via

CARD_VERSION = 1
#: The largest safetensors header read (the JSON index of the tensors; real ones are KiB).
MAX_HEADER = 100 << 20
#: The largest JSON card read.
MAX_CARD = 10 << 20


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def save_encoder(encoder: nn.Module, path: str | Path, **extra) -> Path:
    """Write ``path.safetensors`` and ``path.json`` atomically; returns the weights path.

    ``encoder`` must come from :func:`sslpoison.models.build_backbone` (it carries ``card``).
    ``extra`` (JSON-able) is stored in the card, e.g. the training config or provenance.
    """
    card = getattr(encoder, "card", None)
    if card is None:
        raise ValueError("save_encoder: this module has no card; build it with build_backbone")
    weights, meta = _paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    atomic_write_via(weights, lambda tmp: save_file(state, str(tmp)))
    atomic_write_json(
        meta, {"format": "sslpoison-encoder", "version": CARD_VERSION, **card, "extra": extra}
    )
    return weights


def is_saved_encoder(path: str | Path) -> bool:
    """Whether ``path`` names an sslpoison encoder (``NAME``, ``NAME.safetensors`` or
    ``NAME.json`` with its card beside it); ``NAME.pt`` never does, even with a
    ``NAME.safetensors`` and ``NAME.json`` beside it."""
    p = Path(path)
    return p.suffix in ("", ".safetensors", ".json") and _paths(p)[1].is_file()


def read_json_file(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path`` (at most :data:`MAX_CARD` bytes); ModelFileError naming
    the file when it is missing, unreadable, too large, not JSON or not an object."""
    if path.exists() and not path.is_file():  # a folder, a pipe, a device
        raise ModelFileError(f"{path}: not a regular file")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CARD + 1)
    except FileNotFoundError:
        raise ModelFileMissing(f"{what} not found: {path}") from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot be read ({e.strerror or e})") from None
    if len(raw) > MAX_CARD:
        raise ModelFileError(f"{path}: larger than {MAX_CARD >> 20} MiB, not a {what}")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ModelFileError(f"{path}: not a valid JSON {what} ({one_line(e)})") from None
    if not isinstance(obj, dict):
        raise ModelFileError(f"{path}: a {what} must be a JSON object")
    return obj


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on the CPU.

    Raises:
        ModelFileError: naming the file: missing, empty or truncated, a header larger than
            :data:`MAX_HEADER` or than the file, or not safetensors at all.
    """
    p = Path(path)
    if p.exists() and not p.is_file():  # a folder, a pipe, a device
        raise ModelFileError(f"{p}: not a regular file")
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise ModelFileMissing(f"weights file not found: {p}") from None
    except OSError as e:
        raise ModelFileError(f"{p}: cannot be read ({e.strerror or e})") from None
    if len(head) < 8:
        raise ModelFileError(f"{p}: {size} bytes, too short for a safetensors file")
    header = int.from_bytes(head, "little")
    if header > min(MAX_HEADER, size - 8):
        raise ModelFileError(
            f"{p}: not a safetensors file, or truncated (its header claims {header} bytes, "
            f"the file has {size})"
        )
    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError, MemoryError) as e:
        raise ModelFileError(f"{p}: damaged safetensors file ({one_line(e)})") from None


def check_finite(state: dict[str, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
    """``state``, after checking that every floating-point tensor is finite (ModelFileError
    naming the file and the first tensor holding NaN or ±inf)."""
    for name, t in state.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise ModelFileError(f"{path}: tensor {name!r} holds NaN or infinite values")
    return state


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """``model.load_state_dict(state, strict=True)``, after checking names and shapes: a
    mismatch raises ModelFileError naming the file, with counts and the first few names
    (not torch's list of every key)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        problems = []
        if shapes:
            k = shapes[0]
            problems.append(
                f"{len(shapes)} tensors of another shape (first: {k} is "
                f"{tuple(state[k].shape)}, the model wants {tuple(own[k].shape)})"
            )
        for what, names in (("missing", missing), ("unexpected", unexpected)):
            if names:
                problems.append(f"{len(names)} {what} (first: {', '.join(names[:3])})")
        raise ModelFileError(f"{path}: the weights do not fit the model: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def build_from_card(card: dict[str, Any], meta: Path, what: str = "card") -> nn.Module:
    """The backbone a card's ``arch`` and ``args`` describe (ModelFileError naming the
    card when they are missing or not what the backbone takes)."""
    from sslpoison.models import build_backbone

    arch, args = card.get("arch"), card.get("args")
    if not isinstance(arch, str) or not isinstance(args, dict):
        raise ModelFileError(f"{meta}: the {what} needs 'arch' (a name) and 'args' (a mapping)")
    try:
        return build_backbone(arch, **args)
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"{meta}: {what} arch {arch!r}, args {args}: {one_line(e)}") from None


def read_card(path: str | Path) -> dict:
    """The JSON card of a saved encoder."""
    _, meta = _paths(path)
    card = read_json_file(meta, "encoder card")
    if card.get("format") != "sslpoison-encoder":
        raise ModelFileError(f"{meta} is not an sslpoison encoder card")
    return card


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a saved encoder from its card and load its weights (no unpickling).

    Raises:
        ModelFileError: naming the file that is missing or cannot be loaded.
    """
    weights, meta = _paths(path)
    card = read_card(path)
    model = build_from_card(card, meta)
    load_state_into(model, check_finite(read_safetensors(weights), weights), weights)
    if isinstance(card.get("source"), dict):  # where it came from, for export
        model.card["source"] = dict(card["source"])
    return model.to(device)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a plain checkpoint: ``.safetensors``, or ``.pt``/``.pth``/``.bin`` read with
    ``torch.load(weights_only=True)`` (tensors and containers only, no code). A nested
    ``state_dict`` / ``model`` entry is used when present (common training checkpoints)."""
    p = Path(path)
    if not p.exists():
        raise ModelFileMissing(f"checkpoint not found: {p}")
    if p.is_dir():
        raise ModelFileError(f"{p}: is a folder, not a checkpoint file")
    if not p.is_file():  # a pipe, a device
        raise ModelFileError(f"{p}: not a regular file")
    if p.suffix == ".safetensors":
        return check_finite(read_safetensors(p), p)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # the restricted unpickler refuses anything but tensors
        raise ModelFileError(
            f"{p}: not a plain tensor checkpoint ({_torch_load_problem(e)})"
        ) from None
    for nested in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(nested), dict):
            obj = obj[nested]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(f"{p}: expected a mapping of names to tensors")
    return check_finite(obj, p)


def _torch_load_problem(error: Exception) -> str:
    """The gist of a ``torch.load`` failure (its messages run to a page of advice): the
    first paragraph that is not PyTorch's general advice."""
    advice = ("Weights only load failed", "Check the documentation", "In PyTorch 2.6")
    for part in str(error).split("\n\n"):
        part = part.replace("WeightsUnpickler error:", "").strip()
        if part and not part.startswith(advice):
            return one_line(part.split(" Check the documentation")[0].split(". ")[0], 200)
    return one_line(str(error).split(". ")[0], 200)


def remap_keys(state: dict[str, torch.Tensor], key_map: dict[str, str]) -> dict[str, torch.Tensor]:
    """Rename checkpoint keys: each (regex → replacement) of ``key_map`` is applied in order
    with ``re.sub``; a key that becomes empty is dropped (e.g. ``{"^fc\\\\..*": ""}``)."""
    out = {}
    for key, value in state.items():
        for pattern, repl in key_map.items():
            key = re.sub(pattern, repl, key)
        if key:
            out[key] = value
    return out
