"""Hand an encoder back in the user's format: the layout it came in (its card's ``source``),
or another one asked for.

Formats (:func:`export_encoder`):

* ``safetensors`` — one ``.safetensors`` file of the encoder's weights in a layout's key
  names (default: the layout it came in); for the ``sslpoison`` layout, our saved encoder
  (weights + JSON card).
* ``torchvision`` — a ResNet as a ``.pth`` state dict with torchvision's key names (plain
  tensors: ``torch.load(..., weights_only=True)`` reads it; ``fc.*`` only when a head was
  kept, so load it into ``torchvision.models.resnetXX()`` with ``strict=False`` or after
  ``model.fc = nn.Identity()``).
* ``hf`` — a folder ``from_pretrained`` loads (``config.json``, ``model.safetensors``,
  ``preprocessor_config.json`` with the input size and normalisation): a wrapped Hugging Face
  model as its own class; our CLIP-style ViT (``ln_pre``, no patch bias, class-token pooling)
  as a ``CLIPVisionModel`` (``CLIPVisionModelWithProjection`` with a projection). Needs the
  ``[hub]`` extra.

An encoder whose pruned features are held at zero by a mask (fine-pruning) exports only as
an sslpoison encoder: no other layout has the mask.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
from pydantic import field_validator
from safetensors.torch import save_file

from sslpoison.configbase import Config
from sslpoison.errors import UserError
from sslpoison.models.hf import HFEncoder, quiet_transformers, require_transformers
from sslpoison.models.io import save_encoder
from sslpoison.models.layouts import LAYOUTS, family_of, known_layout
from sslpoison.models.vit import VisionTransformer
from sslpoison.utils import atomic_write_json, atomic_write_via

log = logging.getLogger(__name__)

FORMATS = ("hf", "safetensors", "torchvision")
Format = Literal["hf", "safetensors", "torchvision"]


class ExportError(UserError, ValueError):
    """An encoder that cannot be written in the format or layout asked for; says why."""


class ExportConfig(Config):
    """One entry of an experiment's ``export:`` list: write an encoder of the run at its end.

    ``format``: ``hf``, ``safetensors`` or ``torchvision``. ``out``: the file or folder,
    relative to the run's folder (default ``export/<format>``, ``export/encoder.safetensors``
    or ``export/encoder.pth``). ``encoder``: which encoder, by role (``clean``,
    ``attacked``, a defense's name; default: see :func:`default_role`). ``layout``
    (``safetensors`` only): the key names to write (default: the encoder's own layout).
    """

    format: Format
    out: str | None = None
    encoder: str | None = None
    layout: str | None = None

    _known_layout = field_validator("layout")(known_layout)

    def target(self, run_dir: Path) -> Path:
        default = {
            "hf": "export/hf",
            "safetensors": "export/encoder.safetensors",
            "torchvision": "export/encoder.pth",
        }[self.format]
        out = Path(self.out or default).expanduser()
        return out if out.is_absolute() else run_dir / out


def default_role(roles: list[str], defenses: list[str]) -> str:
    """The encoder a run hands back when none is named: the defended one when the run has
    exactly one defense (controls ``*_on_clean`` aside), else the attacked one, else the
    clean one."""
    if len(defenses) == 1 and defenses[0] in roles:
        return defenses[0]
    return "attacked" if "attacked" in roles else "clean"


def source_layout(encoder: nn.Module) -> str:
    """The layout the encoder came in (its card's ``source``), ``sslpoison`` for ours."""
    return ((getattr(encoder, "card", None) or {}).get("source") or {}).get("layout", "sslpoison")


def _pruned(encoder: nn.Module) -> bool:
    return bool(((getattr(encoder, "card", None) or {}).get("args") or {}).get("pruned"))


def export_encoder(
    encoder: nn.Module, fmt: str, out: str | Path, layout: str | None = None
) -> Path:
    """Write ``encoder`` as ``fmt`` to ``out`` (a file, or a folder for ``hf``); returns what
    it wrote (for ``safetensors`` in the ``sslpoison`` layout: the weights file, the card
    beside it).

    Raises:
        ExportError: the format or layout cannot hold this encoder (says why and what can).
        MissingExtra: ``hf`` without ``transformers``.
    """
    out = Path(out).expanduser()
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    if layout is not None and fmt != "safetensors":
        raise ExportError(f"--layout is for --format safetensors; {fmt} has its own layout")
    if fmt == "hf":
        return _export_hf(encoder, out)
    if isinstance(encoder, HFEncoder):
        if fmt != "safetensors" or layout not in (None, "hf"):
            raise ExportError(
                f"this encoder is a Hugging Face model: export it as --format hf or "
                f"safetensors (its own key names), not {fmt}"
                + (f" in the {layout} layout" if layout else "")
            )
        state = {k: v.detach().cpu().contiguous() for k, v in encoder.model.state_dict().items()}
        return _write_safetensors(state, out)
    if fmt == "torchvision":
        layout = "torchvision"
    layout = layout or source_layout(encoder)
    if layout == "hf":  # came in as an HF folder, now one of ours: write it the ours way
        layout = "sslpoison"
    if layout == "sslpoison":
        if fmt == "torchvision":  # pragma: no cover - layout forced above
            raise ExportError("torchvision")
        weights = out if out.suffix == ".safetensors" else out.with_suffix(".safetensors")
        return save_encoder(encoder, weights)
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    family = family_of(state)
    chosen = LAYOUTS[layout]
    if family not in chosen.families:
        raise ExportError(
            f"the {layout} layout holds {', '.join(chosen.families)} encoders; this one is a "
            f"{family or type(encoder).__name__}"
        )
    if _pruned(encoder):
        raise ExportError(
            f"this encoder is pruned (its features are masked, which the {layout} layout cannot "
            "hold); export it as --format safetensors --layout sslpoison"
        )
    theirs = {k: v.contiguous() for k, v in chosen.from_ours(state).items()}
    if fmt == "torchvision":
        target = out if out.suffix in (".pth", ".pt") else out.with_suffix(".pth")
        atomic_write_via(target, lambda tmp: torch.save(theirs, tmp))
        return target
    return _write_safetensors(theirs, out)


def _write_safetensors(state: dict[str, torch.Tensor], out: Path) -> Path:
    target = out if out.suffix == ".safetensors" else out.with_suffix(".safetensors")
    atomic_write_via(target, lambda tmp: save_file(state, str(tmp)))
    return target


def clip_style(vit: VisionTransformer) -> str | None:
    """Why our ViT is not a CLIP vision tower (None when it is one)."""
    args = vit.card["args"] if hasattr(vit, "card") else {}
    if not isinstance(vit.ln_pre, nn.LayerNorm):
        return "it has no ln_pre"
    if vit.patch_embed.bias is not None:
        return "its patch embedding has a bias"
    if vit.pool != "cls":
        return "it pools the mean of the patch tokens"
    if args.get("layer_scale"):
        return "it has layer scale"
    if vit.proj is not None and vit.proj.bias is not None:
        return "its projection has a bias"
    if vit.keep is not None:
        return "it is pruned (masked features)"
    return None


def _export_hf(encoder: nn.Module, out: Path) -> Path:
    """A folder ``from_pretrained`` loads, with ``preprocessor_config.json``."""
    tf = require_transformers()
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: a file; hf writes a folder")
    if isinstance(encoder, HFEncoder):
        if encoder.keep is not None:
            raise ExportError("this encoder is pruned (masked features): export it as sslpoison")
        model = encoder.model
        size, mean, std = encoder.image_size, encoder.mean, encoder.std
    elif isinstance(encoder, VisionTransformer):
        why = clip_style(encoder)
        if why is not None:
            raise ExportError(
                f"--format hf writes our ViTs as CLIP vision towers, and this one is not one "
                f"({why}); use --format safetensors"
            )
        model = _as_hf_clip(encoder, tf)
        size, mean, std = encoder.image_size, encoder.mean, encoder.std
    else:
        raise ExportError(
            f"--format hf has no transformers class for a {type(encoder).__name__}; use "
            "--format safetensors (or torchvision for a ResNet)"
        )
    out.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(str(out))
    processor = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": int(size)},
        "do_center_crop": True,
        "crop_size": {"height": int(size), "width": int(size)},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": mean.flatten().tolist(),
        "image_std": std.flatten().tolist(),
    }
    atomic_write_json(out / "preprocessor_config.json", processor)
    return out


def _as_hf_clip(vit: VisionTransformer, tf) -> nn.Module:
    """Our CLIP-style ViT as a ``transformers`` CLIP vision model with the same weights."""
    block = vit.blocks[0] if len(vit.blocks) else None
    act = (
        "quick_gelu"
        if block is not None and type(block.mlp.act).__name__ == "QuickGELU"
        else "gelu"
    )
    config = tf.CLIPVisionConfig(
        hidden_size=vit.patch_embed.out_channels,
        intermediate_size=block.mlp.fc1.out_features if block is not None else 4,
        num_hidden_layers=len(vit.blocks),
        num_attention_heads=block.attn.heads if block is not None else 1,
        num_channels=vit.in_channels,
        image_size=vit.image_size,
        patch_size=vit.patch_size,
        hidden_act=act,
        layer_norm_eps=vit.ln_post.eps,
        projection_dim=vit.proj.out_features if vit.proj is not None else 512,
    )
    cls = tf.CLIPVisionModelWithProjection if vit.proj is not None else tf.CLIPVisionModel
    with quiet_transformers():
        model = cls(config)
    theirs = LAYOUTS["hf-clip"].from_ours(
        {k: v.detach().cpu() for k, v in vit.state_dict().items()}
    )
    own = model.state_dict()
    aligned = {}
    for key, value in theirs.items():  # transformers 5 names a CLIPVisionModel unprefixed
        name = key if key in own else key.removeprefix("vision_model.")
        aligned[name] = value
    missing = sorted(set(own) - set(aligned))
    unexpected = sorted(set(aligned) - set(own))
    if missing or unexpected:  # pragma: no cover - a transformers renaming we do not know
        raise ExportError(
            f"the transformers CLIP vision model's names changed: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    model.load_state_dict(aligned)
    return model.eval()


__all__ = [
    "FORMATS",
    "ExportConfig",
    "ExportError",
    "clip_style",
    "default_role",
    "export_encoder",
    "source_layout",
]
