"""Encoders on disk: ``NAME.safetensors`` (weights) + ``NAME.json`` (the card).

The card holds the architecture name and its constructor arguments, so ``load_encoder``
rebuilds the module and loads tensors only: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from sslpoison.utils import atomic_write_json, atomic_write_via

CARD_VERSION = 1


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


def read_card(path: str | Path) -> dict:
    """The JSON card of a saved encoder."""
    _, meta = _paths(path)
    if not meta.exists():
        raise FileNotFoundError(f"encoder card not found: {meta}")
    card = json.loads(meta.read_text())
    if card.get("format") != "sslpoison-encoder":
        raise ValueError(f"{meta} is not an sslpoison encoder card")
    return card


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a saved encoder from its card and load its weights (no unpickling)."""
    from sslpoison.models import build_backbone

    weights, _ = _paths(path)
    card = read_card(path)
    if not weights.exists():
        raise FileNotFoundError(f"encoder weights not found: {weights}")
    model = build_backbone(card["arch"], **card["args"])
    model.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    return model.to(device)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a plain checkpoint: ``.safetensors``, or ``.pt``/``.pth``/``.bin`` read with
    ``torch.load(weights_only=True)`` (tensors and containers only, no code). A nested
    ``state_dict`` / ``model`` entry is used when present (common training checkpoints)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        return load_file(str(p), device="cpu")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # the restricted unpickler refuses anything but tensors
        raise ValueError(f"{p}: not a plain tensor checkpoint ({e})") from None
    for nested in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(nested), dict):
            obj = obj[nested]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{p}: expected a mapping of names to tensors")
    return obj


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


def load_weights(model: nn.Module, path: str | Path, key_map: dict[str, str]) -> nn.Module:
    """Load a plain checkpoint into ``model`` through ``key_map``; every key must match.

    Raises:
        ValueError: listing the missing and unexpected keys (after mapping) or a shape
            mismatch, so the map can be fixed.
    """
    state = remap_keys(read_state_dict(path), key_map)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{path}: keys do not match the backbone after key_map; "
            f"missing {missing[:6]}{' …' if len(missing) > 6 else ''}, "
            f"unexpected {unexpected[:6]}{' …' if len(unexpected) > 6 else ''}"
        )
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise ValueError(
                f"{path}: {k} has shape {tuple(v.shape)}, the backbone wants {tuple(own[k].shape)}"
            )
    model.load_state_dict(state, strict=True)
    return model
