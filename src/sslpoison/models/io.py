"""Encoders on disk: ``NAME.safetensors`` (weights) + ``NAME.json`` (the card).

The card holds the architecture name and its constructor arguments, so ``load_encoder``
rebuilds the module and loads tensors only: nothing is ever unpickled.
"""

from __future__ import annotations

import json
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
