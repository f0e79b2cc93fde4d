"""Bring your own encoder: the ``encoder:`` section of an experiment (:class:`EncoderSource`)
and loading it (:func:`load_source`).

Two sources:

* ``file`` — a saved sslpoison encoder (``NAME`` with its ``NAME.json`` card), or a plain
  checkpoint (``.safetensors``; ``.pt``/``.pth``/``.pth.tar``/``.bin`` read with
  ``torch.load(weights_only=True)``: no code in the file ever runs) in one of the
  :data:`~sslpoison.models.layouts.LAYOUTS`, detected from its key names unless ``layout``
  says. The architecture's shapes are read from the tensors; ``arch``, when given, must fit
  them.
* ``hf`` — a Hugging Face ``transformers`` model folder (or a hub id, when the hub can be
  reached): a CLIP vision tower (and, for a whole CLIP model, its text tower for zero-shot
  evaluation), a ViT, DINOv2, ... (the ``[hub]`` extra).

Either way the encoder takes [0, 1] pixels and carries its input: size, channels and the
normalisation (from the HF processor config, the layout's preset, the checkpoint's own
buffers, or ``input:``). Its card remembers where it came from (``card["source"]``), so an
attacked or defended copy can be exported in the same layout
(:mod:`sslpoison.models.export`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field, PositiveInt, ValidationInfo, field_validator, model_validator

from sslpoison.configbase import Config, check_kwargs
from sslpoison.errors import ModelFileError, one_line
from sslpoison.models import BACKBONES, backbone_family, backbone_parameters, build_backbone
from sslpoison.models.clip_resnet import ModifiedResNet
from sslpoison.models.hf import OUTPUTS, HFCLIPText
from sslpoison.models.inputs import InputSpec, per_channel
from sslpoison.models.io import (
    check_finite,
    is_saved_encoder,
    load_encoder,
    load_state_into,
    read_card,
    read_state_dict,
    remap_keys,
)
from sslpoison.models.layouts import (
    LAYOUTS,
    LayoutError,
    detect_layout,
    drop_head,
    known_layout,
    layout_defaults,
    read_args,
)
from sslpoison.models.resnet import ResNet
from sslpoison.models.vit import VisionTransformer
from sslpoison.utils import module_hash

log = logging.getLogger(__name__)

#: The class behind each family a layout converts to.
FAMILY_CLASSES = {"resnet": ResNet, "vit": VisionTransformer, "modified_resnet": ModifiedResNet}
#: Arguments read from a checkpoint that are a guess, not a shape (attention heads: the
#: weights are the same for any head count); a named architecture's value wins.
GUESSED = frozenset({"heads"})


class InputOverride(Config):
    """``encoder.input``: what the encoder takes, where its source does not say (or says
    wrong). ``size``: the image side (a ViT's is fixed by its position embeddings);
    ``channels``: must be the encoder's; ``mean``/``std``: the normalisation, one value per
    channel."""

    size: PositiveInt | None = None
    channels: Literal[1, 3] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None

    @model_validator(mode="after")
    def _positive_std(self) -> InputOverride:
        if self.std is not None and any(v <= 0 for v in self.std):
            raise ValueError(f"std: values must be positive, got {self.std}")
        return self


class EncoderSource(Config):
    """The ``encoder:`` section: the clean encoder comes from here and the pre-training stage
    is skipped.

    ``source``: ``file`` or ``hf``. ``path``: the file, the HF folder, or a hub id.
    ``arch`` (file): a name of :data:`sslpoison.models.BACKBONES`, checked against the
    weights (default: the one they fit). ``layout`` (file): one of
    :data:`~sslpoison.models.layouts.LAYOUTS` (default: detected from the key names).
    ``output`` (hf): ``pooled``, ``cls`` or ``proj`` (default: ``proj`` for a CLIP model or
    a CLIP vision model with its projection — the image embedding —, ``pooled`` otherwise).
    ``head`` (file): ``keep`` or ``drop`` a projection head found in the checkpoint
    (default: kept for CLIP, where it is part of the image encoder; dropped for SSL
    projection heads and timm classifiers). ``input``:
    overrides of size, channels, mean and std. ``key_map`` (file): regex → replacement,
    applied to every key in order before the layout (an empty result drops the key): for
    layouts without a name. ``args`` (file): architecture arguments the weights cannot tell
    (a ViT's ``heads``, ``act``, ``eps``, ``pool``; a ResNet's ``stem_stride``).
    """

    source: Literal["hf", "file"]
    path: str = Field(min_length=1)
    arch: str | None = None
    layout: str | None = None
    output: Literal["pooled", "cls", "proj"] | None = None
    head: Literal["drop", "keep"] | None = None
    input: InputOverride = Field(default_factory=InputOverride)
    key_map: dict[str, str] = Field(default_factory=dict)
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str | None) -> str | None:
        if v is not None and (v not in BACKBONES or v == "hf"):
            known = ", ".join(sorted(k for k in BACKBONES if k != "hf"))
            raise ValueError(f"unknown architecture {v!r}; known: {known}")
        return v

    _known_layout = field_validator("layout")(known_layout)

    @field_validator("output", "arch", "layout", "head", "key_map", "args", mode="after")
    @classmethod
    def _key_of_the_source(cls, value: Any, info: ValidationInfo) -> Any:
        """``output`` is for ``hf`` only; the others for ``file`` only."""
        wanted = "hf" if info.field_name == "output" else "file"
        source = info.data.get("source")
        if value and source is not None and source != wanted:
            raise ValueError(f"only for source: {wanted} (this is {source})")
        return value


@dataclass
class LoadedEncoder:
    """An encoder from an :class:`EncoderSource`: the module (eval mode, on the device),
    its input, the record of where it came from (the ``pretrain`` stage record), and a CLIP
    text tower for zero-shot evaluation when the source has one (else None)."""

    encoder: nn.Module
    input: InputSpec
    record: dict[str, Any]
    text: HFCLIPText | None = None


def encoder_input(encoder: nn.Module, size: int | None = None) -> InputSpec:
    """The input an encoder of ours takes: its ``image_size`` (or ``size``), channels and
    its normalisation buffers."""
    mean, std = encoder.mean.flatten().tolist(), encoder.std.flatten().tolist()
    side = getattr(encoder, "image_size", None) or size
    return InputSpec(side, int(encoder.in_channels), tuple(mean), tuple(std))


def parameter_count(encoder: nn.Module) -> int:
    return sum(p.numel() for p in encoder.parameters())


def load_source(cfg: EncoderSource, device: torch.device | str = "cpu") -> LoadedEncoder:
    """Load the encoder ``cfg`` describes onto ``device`` (eval mode), with its input spec
    and record.

    Raises:
        ModelFileError: naming the file or folder: missing, unreadable, not a layout we
            know, keys or shapes that do not fit (listed), an ``arch`` that does not fit.
        MissingExtra: ``source: hf`` without ``transformers`` (names the ``[hub]`` extra).
    """
    loaded = load_hf(cfg) if cfg.source == "hf" else load_file(cfg)
    encoder = loaded.encoder.to(device).eval()
    loaded.encoder = encoder
    if loaded.text is not None:
        loaded.text = loaded.text.to(device)
    loaded.record |= {
        "weights": module_hash(encoder),
        "parameters": parameter_count(encoder),
        "feature_dim": int(encoder.feature_dim),
        "input": loaded.input.to_dict(),
    }
    return loaded


def _override_input(cfg: InputOverride, spec: InputSpec, fixed_size: bool, where: str) -> InputSpec:
    """``spec`` with the overrides of ``cfg`` (the size only where the weights do not fix
    it; channels only the encoder's own)."""
    size = spec.size
    if cfg.size is not None:
        if fixed_size and spec.size is not None and cfg.size != spec.size:
            raise ModelFileError(
                f"encoder.input.size: {where} takes {spec.size}×{spec.size} images (its position "
                f"embeddings fix it), not {cfg.size}"
            )
        size = cfg.size
    if cfg.channels is not None and cfg.channels != spec.channels:
        raise ModelFileError(
            f"encoder.input.channels: {where} takes {spec.channels}-channel images, not "
            f"{cfg.channels} (grey images are repeated to 3 channels by themselves)"
        )
    mean = tuple(cfg.mean) if cfg.mean is not None else spec.mean
    std = tuple(cfg.std) if cfg.std is not None else spec.std
    for key, values in (("mean", mean), ("std", std)):
        if len(values) != spec.channels:
            raise ModelFileError(
                f"encoder.input.{key}: {len(values)} values for a {spec.channels}-channel encoder"
            )
    return InputSpec(size, spec.channels, mean, std)


def _set_normalisation(encoder: nn.Module, spec: InputSpec) -> None:
    encoder.mean.copy_(torch.tensor(spec.mean).view_as(encoder.mean))
    encoder.std.copy_(torch.tensor(spec.std).view_as(encoder.std))
    encoder.card["args"] |= {"mean": list(spec.mean), "std": list(spec.std)}


# ---- files -----------------------------------------------------------------------------


def load_file(cfg: EncoderSource) -> LoadedEncoder:
    """``source: file``: a saved sslpoison encoder, or a plain checkpoint in a layout."""
    path = Path(cfg.path).expanduser()
    if path.is_dir():
        hint = (
            " (a Hugging Face model folder is source: hf)"
            if (path / "config.json").is_file()
            else ""
        )
        raise ModelFileError(f"{path}: a folder, not a checkpoint file{hint}")
    if is_saved_encoder(path) and cfg.layout in (None, "sslpoison") and not cfg.key_map:
        return _load_saved(cfg, path)
    state = read_state_dict(path)
    if cfg.key_map:
        state = remap_keys(state, cfg.key_map)
    try:
        name = cfg.layout or detect_layout(state, str(path))
        layout = LAYOUTS[name]
        ours = layout.to_ours(state)
        family, shapes = read_args(ours)
    except LayoutError as e:
        raise ModelFileError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None
    except KeyError as e:
        raise ModelFileError(f"{path}: not a {cfg.layout} checkpoint (no {e.args[0]})") from None
    if family not in layout.families:
        raise ModelFileError(f"{path}: the {name} layout holds no {family}")
    keep = cfg.head == "keep" if cfg.head is not None else layout.keeps_head
    if not keep:
        ours = drop_head(ours, family)
        shapes = {k: v for k, v in shapes.items() if k not in ("head", "proj_dim", "proj_bias")}
    implied, preset = layout_defaults(layout, family, shapes)
    arch, args = resolve_arch(cfg.arch, family, {**shapes, **implied}, path)
    args |= _checked_args(cfg.args, arch)
    channels = int(args.get("in_channels", 3))
    mean = ours["mean"].flatten().tolist() if "mean" in ours else preset.get("mean")
    std = ours["std"].flatten().tolist() if "std" in ours else preset.get("std")
    size = args.get("image_size", preset.get("size"))
    spec = InputSpec(
        size,
        channels,
        tuple(per_channel(mean, channels) if mean else [0.5] * channels),
        tuple(per_channel(std, channels) if std else [0.25] * channels),
    )
    spec = _override_input(cfg.input, spec, "image_size" in args, str(path))
    try:
        model = build_backbone(arch, **args, mean=list(spec.mean), std=list(spec.std))
    except (TypeError, ValueError) as e:
        raise ModelFileError(
            f"{path}: cannot build a {arch} with {args}: {one_line(e, 200)}"
        ) from None
    own = model.state_dict()
    for buffer in ("mean", "std"):
        ours[buffer] = own[buffer]
    for key in own:  # older PyTorch saved BatchNorm without its (unused here) step count
        if key.endswith("num_batches_tracked") and key not in ours:
            ours[key] = own[key]
    load_state_into(model, check_finite(ours, path), path)
    model.card["source"] = {"source": "file", "path": str(path), "layout": name}
    record = {"source": "file", "path": str(path), "layout": name, "arch": arch}
    log.info("encoder: %s, %s layout, %s (%s)", path, name, arch, spec.describe())
    return LoadedEncoder(model, spec, record)


def _load_saved(cfg: EncoderSource, path: Path) -> LoadedEncoder:
    """A saved sslpoison encoder, from its card; its input size from the card's record of
    the data it was trained on."""
    model = load_encoder(path)
    extra = read_card(path).get("extra") or {}
    size = (extra.get("input") or {}).get("size")
    spec = _override_input(
        cfg.input, encoder_input(model, size), hasattr(model, "image_size"), str(path)
    )
    if cfg.input.mean is not None or cfg.input.std is not None:
        _set_normalisation(model, spec)
    source = dict(model.card.get("source") or {"source": "file", "layout": "sslpoison"})
    model.card["source"] = source | {"path": str(path)}
    arch = model.card["arch"]
    record = {"source": "file", "path": str(path), "layout": source["layout"], "arch": arch}
    log.info("encoder: %s, a saved sslpoison encoder, %s (%s)", path, arch, spec.describe())
    return LoadedEncoder(model, spec, record)


def _checked_args(args: dict[str, Any], arch: str) -> dict[str, Any]:
    """``encoder.args`` validated against ``arch``'s constructor (ModelFileError naming the
    key)."""
    if not args:
        return {}
    family, fixed = backbone_family(arch)
    for name in args:
        if name in fixed:
            raise ModelFileError(f"encoder.args.{name}: fixed by the architecture {arch}")
    try:
        return check_kwargs(family, args, "encoder.args", skip=tuple(fixed))
    except ValueError as e:
        raise ModelFileError(str(e)) from None


def describe_shapes(family: str, args: dict[str, Any]) -> str:
    """What a checkpoint's shapes say, for an error message."""
    keys = {
        "resnet": ("depth", "width", "stem"),
        "vit": ("patch_size", "width", "depth", "image_size"),
        "modified_resnet": ("layers", "base_width", "output_dim", "image_size"),
    }[family]
    return f"a {family} ({', '.join(f'{k} {args[k]}' for k in keys if k in args)})"


def resolve_arch(
    given: str | None, family: str, args: dict[str, Any], path: Path
) -> tuple[str, dict[str, Any]]:
    """(the architecture name, its remaining arguments) for weights of ``family`` with the
    arguments ``args`` read from them: ``given`` when it fits (ModelFileError naming
    ``encoder.arch`` otherwise), else the named architecture they fit, else the family's
    generic one (``vit``, ``modified_resnet``)."""
    cls = FAMILY_CLASSES[family]

    def same(found: Any, fixed: Any) -> bool:
        return list(found) == list(fixed) if isinstance(fixed, (list, tuple)) else found == fixed

    def fits(arch: str) -> bool:
        entry, fixed = backbone_family(arch)
        return entry is cls and all(
            k in GUESSED or k not in args or same(args[k], v) for k, v in fixed.items()
        )

    if given is not None:
        if not fits(given):
            raise ModelFileError(
                f"encoder.arch: {given} does not fit {path}: its weights are "
                f"{describe_shapes(family, args)}"
            )
        arch = given
    else:
        named = [a for a, e in BACKBONES.items() if fits(a) and backbone_family(a)[1]]
        generic = [a for a, e in BACKBONES.items() if fits(a) and not backbone_family(a)[1]]
        arch = (named or generic)[0]
    _, fixed = backbone_family(arch)
    takes = backbone_parameters(arch)
    return arch, {k: v for k, v in args.items() if k not in fixed and k in takes}


# ---- Hugging Face --------------------------------------------------------------------------


def load_hf(cfg: EncoderSource) -> LoadedEncoder:
    """``source: hf``: the folder's (or hub id's) image model, wrapped (:class:`HFEncoder`),
    and a CLIP model's text tower for zero-shot evaluation."""
    from sslpoison.models.hf import (
        load_clip_text,
        load_weights_into,
        processor_input,
        read_folder_config,
        require_transformers,
        resolve_folder,
        vision_config,
    )

    require_transformers()
    folder, local = resolve_folder(cfg.path)
    config, local = read_folder_config(folder, local)
    kind = config.get("model_type")
    projects = kind == "clip" or any(
        "WithProjection" in a for a in config.get("architectures") or []
    )
    output = cfg.output or ("proj" if projects else "pooled")
    if output not in OUTPUTS:  # pragma: no cover - the config's Literal
        raise ModelFileError(f"encoder.output: {output!r}")
    vision = vision_config(config)
    if kind == "clip":  # the card keeps the image side only
        vision = {**vision, "model_type": "clip_vision_model"}
        if "projection_dim" in config:
            vision["projection_dim"] = config["projection_dim"]
    found = processor_input(folder, local)
    channels = int(vision.get("num_channels") or 3)
    size = found.get("size") or vision.get("image_size") or 224
    try:
        model = build_backbone(
            "hf", config=vision, output=output, image_size=int(vision.get("image_size") or size),
            in_channels=channels, mean=found.get("mean"), std=found.get("std"),
        )  # fmt: skip
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"{folder}: {one_line(e, 300)}") from None
    spec = encoder_input(model)
    spec = _override_input(cfg.input, spec, True, folder)
    if cfg.input.mean is not None or cfg.input.std is not None:
        _set_normalisation(model, spec)
    load_weights_into(model, folder, local)
    model.card["source"] = {"source": "hf", "path": folder, "layout": "hf"}
    text = load_clip_text(folder, config, local) if output == "proj" else None
    record = {
        "source": "hf",
        "path": folder,
        "layout": "hf",
        "arch": f"hf:{kind}",
        "output": output,
    }
    log.info(
        "encoder: %s, a Hugging Face %s (%s output; %s)%s", folder, kind, output, spec.describe(),
        ", with its text tower for zero-shot" if text is not None else "",
    )  # fmt: skip
    return LoadedEncoder(model, spec, record, text)


__all__ = [
    "EncoderSource",
    "InputOverride",
    "LoadedEncoder",
    "encoder_input",
    "load_source",
    "parameter_count",
    "resolve_arch",
]
