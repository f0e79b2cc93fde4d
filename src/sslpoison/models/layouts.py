"""Checkpoint layouts: how other code names an encoder's weights, and how to read and write
them as our modules' (:class:`~sslpoison.models.resnet.ResNet`,
:class:`~sslpoison.models.vit.VisionTransformer`,
:class:`~sslpoison.models.clip_resnet.ModifiedResNet`).

Each :class:`Layout` of :data:`LAYOUTS` recognises itself from the key names
(``detect``), renames a state dict to ours (``to_ours``; what is not the image encoder — a
text tower, a momentum encoder, a queue — is left out) and back (``from_ours``, for
export), and says what its checkpoints leave unsaid (``implied``: activation, LayerNorm
epsilon, the input normalisation its code used). The shapes a checkpoint fixes — a ResNet's
depth, width and stem, a ViT's patch size, width, depth and position grid, a
ModifiedResNet's blocks and attention pool, a projection head — are read from the tensors
(:func:`read_args`), never assumed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import torch

from sslpoison.models.inputs import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
)
from sslpoison.models.resnet import DEPTHS

State = dict[str, torch.Tensor]
#: The three module families a converted state dict can hold (our key names).
FAMILIES = ("resnet", "vit", "modified_resnet")
#: Where each family keeps its projection head, in our names (dropped with ``head: drop``).
HEAD_PREFIX = {"resnet": "head.", "vit": "proj.", "modified_resnet": ""}


class LayoutError(ValueError):
    """A state dict that is not what a layout (or any layout) expects; names the keys."""


# ---- reading shapes (our key names) -------------------------------------------------------


def family_of(state: Collection[str]) -> str | None:
    """Which of :data:`FAMILIES` a state dict in our names holds (None: none)."""
    if "attnpool.positional_embedding" in state:
        return "modified_resnet"
    if "patch_embed.weight" in state and "pos_embed" in state:
        return "vit"
    if "stem.0.weight" in state:
        return "resnet"
    return None


def _count(state: Collection[str], pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def read_head(state: State, prefix: str) -> list[list] | None:
    """The layers of an MLP head stored under ``prefix`` (``head.0.weight``, ...), in order:
    ``["linear", in, out, bias]``, ``["bn", dim]``, with ``["relu"]`` where an index holds no
    weights between two layers (as ``nn.Sequential`` numbers them)."""
    layers: dict[int, list] = {}
    for key, t in state.items():
        m = re.match(re.escape(prefix) + r"(\d+)\.weight$", key)
        if not m:
            continue
        i = int(m.group(1))
        if t.dim() == 2:
            layers[i] = ["linear", int(t.shape[1]), int(t.shape[0]), f"{prefix}{i}.bias" in state]
        elif f"{prefix}{i}.running_mean" in state:
            layers[i] = ["bn", int(t.shape[0])]
        else:
            raise LayoutError(
                f"{key}: a head layer of shape {tuple(t.shape)} is neither linear nor BN"
            )
    if not layers:
        return None
    return [layers.get(i, ["relu"]) for i in range(max(layers) + 1)]


def read_resnet(state: State) -> dict[str, Any]:
    """A ResNet's arguments from its weights: depth (blocks per stage, basic or bottleneck),
    width (the stem's channels / 64), stem (7×7: ImageNet, 3×3: CIFAR), input channels and
    the projection head, if any."""
    conv = state["stem.0.weight"]
    counts = tuple(_count(state, rf"layer{i}\.(\d+)\.conv1\.weight$") for i in range(1, 5))
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    depth = next((d for d, spec in DEPTHS.items() if spec == (kind, counts)), None)
    if depth is None:
        raise LayoutError(
            f"a ResNet with {counts} {kind} blocks per stage is none of ResNet-"
            f"{'/'.join(map(str, DEPTHS))}"
        )
    stem = {7: "imagenet", 3: "cifar"}.get(int(conv.shape[-1]))
    if stem is None:
        raise LayoutError(
            f"stem.0.weight: a {conv.shape[-1]}×{conv.shape[-1]} stem is neither 3×3 nor 7×7"
        )
    args: dict[str, Any] = {"depth": depth, "in_channels": int(conv.shape[1]), "stem": stem}
    if conv.shape[0] != 64:
        args["width"] = conv.shape[0] / 64
    head = read_head(state, "head.")
    if head is not None:
        args["head"] = head
    return args


def read_vit(state: State) -> dict[str, Any]:
    """A ViT's arguments from its weights: patch size, width and input channels (the patch
    embedding), the position grid (so the image size), depth, MLP width, which optional
    parts it has (``ln_pre``, a patch bias, layer scale) and its projection."""
    patch = state["patch_embed.weight"]
    width, channels, p = int(patch.shape[0]), int(patch.shape[1]), int(patch.shape[-1])
    tokens = int(state["pos_embed"].shape[0]) - 1
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise LayoutError(f"pos_embed: {tokens} patch positions are not a square grid")
    args: dict[str, Any] = {
        "image_size": grid * p,
        "patch_size": p,
        "width": width,
        "depth": _count(state, r"blocks\.(\d+)\.ln_1\.weight$"),
        "heads": max(1, width // 64),
        "in_channels": channels,
        "ln_pre": "ln_pre.weight" in state,
        "patch_bias": "patch_embed.bias" in state,
        "layer_scale": "blocks.0.ls_1.gamma" in state,
    }
    mlp = int(state["blocks.0.mlp.fc1.weight"].shape[0]) if args["depth"] else 4 * width
    if mlp != 4 * width:
        args["mlp_dim"] = mlp
    if "proj.weight" in state:
        args["proj_dim"] = int(state["proj.weight"].shape[0])
        args["proj_bias"] = "proj.bias" in state
    return args


def read_modified_resnet(state: State) -> dict[str, Any]:
    """A ModifiedResNet's arguments: blocks per stage, base width, input channels, the
    attention pool's grid (so the image size), output width and heads (width / 64)."""
    pos = state["attnpool.positional_embedding"]
    cells = int(pos.shape[0]) - 1
    grid = math.isqrt(cells)
    if grid * grid != cells:
        raise LayoutError(f"attnpool.positional_embedding: {cells} cells are not a square grid")
    return {
        "layers": [_count(state, rf"layer{i}\.(\d+)\.conv1\.weight$") for i in range(1, 5)],
        "base_width": int(state["layer1.0.conv1.weight"].shape[0]),
        "in_channels": int(state["conv1.weight"].shape[1]),
        "image_size": grid * 32,
        "output_dim": int(state["attnpool.c_proj.weight"].shape[0]),
        "heads": max(1, int(pos.shape[1]) // 64),
    }


READERS: dict[str, Callable[[State], dict[str, Any]]] = {
    "resnet": read_resnet,
    "vit": read_vit,
    "modified_resnet": read_modified_resnet,
}


def read_args(state: State) -> tuple[str, dict[str, Any]]:
    """(family, constructor arguments) of a state dict in our key names."""
    family = family_of(state)
    if family is None:
        raise LayoutError("the weights are none of a ResNet, a ViT or a ModifiedResNet")
    try:
        return family, READERS[family](state)
    except KeyError as e:
        raise LayoutError(f"the {family} weights lack {e.args[0]}") from None


def drop_head(state: State, family: str) -> State:
    """``state`` without its projection head (and the ModifiedResNet keeps its pool)."""
    prefix = HEAD_PREFIX[family]
    if not prefix:
        return dict(state)
    return {k: v for k, v in state.items() if not k.startswith(prefix)}


# ---- renaming -----------------------------------------------------------------------------


def rename(state: State, rules: list[tuple[str, Any]]) -> State:
    """Each key through the regex ``rules`` (all applied in order, ``re.sub``; a replacement
    is a string or a function of the match)."""
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def strip_prefix(state: State, prefix: str) -> State:
    """The entries under ``prefix``, without it (everything else left out)."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def common_prefix(keys: Collection[str], candidates: tuple[str, ...]) -> str | None:
    """The first of ``candidates`` that some key starts with."""
    return next((c for c in candidates if any(k.startswith(c) for k in keys)), None)


# torchvision's ResNet ↔ ours
_TV_TO_OURS = [
    (r"^conv1\.", "stem.0."),
    (r"^bn1\.", "stem.1."),
    (r"\.downsample\.", ".shortcut."),
    (r"^fc\.weight$", "head.0.weight"),
    (r"^fc\.bias$", "head.0.bias"),
    (r"^fc\.", "head."),
]
_TV_FROM_OURS = [
    (r"^stem\.0\.", "conv1."),
    (r"^stem\.1\.", "bn1."),
    (r"\.shortcut\.", ".downsample."),
    (r"^head\.", "fc."),
]
_TV_BUFFERS = ("mean", "std")


def torchvision_to_ours(state: State) -> State:
    return rename(state, _TV_TO_OURS)


def torchvision_from_ours(state: State) -> State:
    out = rename({k: v for k, v in state.items() if k not in _TV_BUFFERS}, _TV_FROM_OURS)
    # A head of one linear layer is torchvision's ``fc`` itself.
    if set(k for k in out if k.startswith("fc.")) <= {"fc.0.weight", "fc.0.bias"}:
        out = {re.sub(r"^fc\.0\.", "fc.", k): v for k, v in out.items()}
    return out


def is_torchvision(keys: Collection[str]) -> bool:
    return (
        "conv1.weight" in keys
        and "bn1.running_mean" in keys
        and "layer1.0.conv1.weight" in keys
        and "conv2.weight" not in keys  # CLIP's ModifiedResNet has a 3-conv stem
    )


# timm's ViT ↔ ours
_TIMM_TO_OURS = [
    (r"^patch_embed\.proj\.", "patch_embed."),
    (r"^blocks\.(\d+)\.norm1\.", r"blocks.\1.ln_1."),
    (r"^blocks\.(\d+)\.norm2\.", r"blocks.\1.ln_2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.weight$", r"blocks.\1.attn.in_proj_weight"),
    (r"^blocks\.(\d+)\.attn\.qkv\.bias$", r"blocks.\1.attn.in_proj_bias"),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"blocks.\1.attn.out_proj."),
    (r"^blocks\.(\d+)\.ls(\d)\.gamma$", r"blocks.\1.ls_\2.gamma"),
    (r"^norm\.", "ln_post."),
    (r"^fc_norm\.", "ln_post."),
    (r"^head\.", "proj."),
]
_TIMM_FROM_OURS = [
    (r"^patch_embed\.(weight|bias)$", r"patch_embed.proj.\1"),
    (r"^blocks\.(\d+)\.ln_1\.", r"blocks.\1.norm1."),
    (r"^blocks\.(\d+)\.ln_2\.", r"blocks.\1.norm2."),
    (r"^blocks\.(\d+)\.attn\.in_proj_weight$", r"blocks.\1.attn.qkv.weight"),
    (r"^blocks\.(\d+)\.attn\.in_proj_bias$", r"blocks.\1.attn.qkv.bias"),
    (r"^blocks\.(\d+)\.attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^blocks\.(\d+)\.ls_(\d)\.gamma$", r"blocks.\1.ls\2.gamma"),
    (r"^ln_post\.", "norm."),
    (r"^proj\.", "head."),
]
#: timm keys that are not the encoder's (masked-image training's token).
_TIMM_DROPPED = ("mask_token",)


def is_timm(keys: Collection[str]) -> bool:
    return "patch_embed.proj.weight" in keys and "cls_token" in keys and "pos_embed" in keys


def timm_to_ours(state: State) -> State:
    if "register_tokens" in state:
        raise LayoutError("register_tokens: ViTs with registers are not supported; use source hf")
    state = {k: v for k, v in state.items() if k not in _TIMM_DROPPED}
    out = rename(state, _TIMM_TO_OURS)
    out["cls_token"] = out["cls_token"].reshape(-1)
    out["pos_embed"] = out["pos_embed"].reshape(-1, out["pos_embed"].shape[-1])
    for i in range(_count(out, r"blocks\.(\d+)\.attn\.in_proj_weight$")):
        bias = f"blocks.{i}.attn.in_proj_bias"
        if bias not in out:  # a ViT trained without qkv bias: a zero bias is the same map
            out[bias] = torch.zeros(out[f"blocks.{i}.attn.in_proj_weight"].shape[0])
    return out


def timm_from_ours(state: State) -> State:
    out = rename({k: v for k, v in state.items() if k not in _TV_BUFFERS}, _TIMM_FROM_OURS)
    out["cls_token"] = out["cls_token"].reshape(1, 1, -1)
    out["pos_embed"] = out["pos_embed"].unsqueeze(0)
    return out


# CLIP (OpenAI, open_clip) ↔ ours: ``visual.*``
_CLIP_VIT_TO_OURS = [
    (r"^conv1\.weight$", "patch_embed.weight"),
    (r"^class_embedding$", "cls_token"),
    (r"^positional_embedding$", "pos_embed"),
    (r"^transformer\.resblocks\.", "blocks."),
    (r"\.mlp\.c_fc\.", ".mlp.fc1."),
    (r"\.mlp\.c_proj\.", ".mlp.fc2."),
]
_CLIP_VIT_FROM_OURS = [
    (r"^patch_embed\.weight$", "conv1.weight"),
    (r"^cls_token$", "class_embedding"),
    (r"^pos_embed$", "positional_embedding"),
    (r"^blocks\.", "transformer.resblocks."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
]


def clip_visual_to_ours(state: State, prefix: str = "visual.") -> State:
    """A CLIP checkpoint's image tower (``visual.*``) in our names: a ViT (its ``proj``, a
    D×P matrix used as x @ proj, becomes our ``proj.weight``, P×D) or a ModifiedResNet
    (same names)."""
    visual = strip_prefix(state, prefix)
    if "attnpool.positional_embedding" in visual:
        return visual
    out = rename(visual, _CLIP_VIT_TO_OURS)
    if "proj" in out:
        out["proj.weight"] = out.pop("proj").t().contiguous()
    return out


def clip_visual_from_ours(state: State, prefix: str = "visual.") -> State:
    body = {k: v for k, v in state.items() if k not in _TV_BUFFERS}
    if "attnpool.positional_embedding" not in body:
        body = rename(body, _CLIP_VIT_FROM_OURS)
        if "proj.weight" in body:
            body["proj"] = body.pop("proj.weight").t().contiguous()
    return {prefix + k: v for k, v in body.items()}


def is_clip(keys: Collection[str], prefix: str = "visual.") -> bool:
    return f"{prefix}conv1.weight" in keys and (
        f"{prefix}transformer.resblocks.0.attn.in_proj_weight" in keys
        or f"{prefix}attnpool.positional_embedding" in keys
    )


# Hugging Face CLIP (``vision_model.*``; transformers 5 saves a CLIPVisionModel unprefixed)
_HF_CLIP_TO_OURS = [
    (r"^embeddings\.class_embedding$", "cls_token"),
    (r"^embeddings\.patch_embedding\.", "patch_embed."),
    (r"^embeddings\.position_embedding\.weight$", "pos_embed"),
    (r"^pre_layrnorm\.", "ln_pre."),
    (r"^post_layernorm\.", "ln_post."),
    (r"^encoder\.layers\.(\d+)\.layer_norm1\.", r"blocks.\1.ln_1."),
    (r"^encoder\.layers\.(\d+)\.layer_norm2\.", r"blocks.\1.ln_2."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"blocks.\1.attn.out_proj."),
    (r"^encoder\.layers\.(\d+)\.mlp\.", r"blocks.\1.mlp."),
    (r"^visual_projection\.", "proj."),
]


def _hf_vision(state: State) -> State:
    projection = {k: v for k, v in state.items() if k.startswith("visual_projection.")}
    prefix = common_prefix(state, ("vision_model.",))
    tower = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")
    body = (
        strip_prefix(state, prefix)
        if prefix
        else {k: v for k, v in state.items() if k.startswith(tower)}
    )
    return body | projection


def is_hf_clip(keys: Collection[str]) -> bool:
    return any(
        k in keys
        for k in (
            "vision_model.embeddings.patch_embedding.weight",
            "embeddings.patch_embedding.weight",
        )
    ) and any(k.endswith("pre_layrnorm.weight") for k in keys)


def hf_clip_to_ours(state: State) -> State:
    out = rename(_hf_vision(state), _HF_CLIP_TO_OURS)
    for i in range(_count(out, r"^encoder\.layers\.(\d+)\.self_attn\.q_proj\.weight$")):
        parts = [f"encoder.layers.{i}.self_attn.{x}_proj" for x in "qkv"]
        out[f"blocks.{i}.attn.in_proj_weight"] = torch.cat([out.pop(p + ".weight") for p in parts])
        out[f"blocks.{i}.attn.in_proj_bias"] = torch.cat([out.pop(p + ".bias") for p in parts])
    return out


#: Our ViT's names → transformers' CLIP vision tower's (the packed q/k/v and the projection
#: are split / renamed by :func:`hf_clip_from_ours` itself).
_HF_CLIP_FROM_OURS = [
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^patch_embed\.", "embeddings.patch_embedding."),
    (r"^pos_embed$", "embeddings.position_embedding.weight"),
    (r"^ln_pre\.", "pre_layrnorm."),
    (r"^ln_post\.", "post_layernorm."),
    (r"^blocks\.(\d+)\.ln_1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.ln_2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.out_proj\.", r"encoder.layers.\1.self_attn.out_proj."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
]


def hf_clip_from_ours(state: State, prefix: str = "vision_model.") -> State:
    """Our ViT in the names of a Hugging Face ``CLIPVisionModel`` checkpoint (``prefix`` +
    the tower; ``visual_projection.weight`` beside it when the ViT has a projection)."""
    out: State = {}
    rest: State = {}
    for key, value in state.items():
        if m := re.match(r"^blocks\.(\d+)\.attn\.in_proj_(weight|bias)$", key):
            for name, part in zip("qkv", value.chunk(3), strict=True):
                layer = f"{prefix}encoder.layers.{m.group(1)}.self_attn.{name}_proj"
                out[f"{layer}.{m.group(2)}"] = part.contiguous()
        elif key.startswith("proj."):
            out["visual_projection." + key[len("proj.") :]] = value
        elif key not in _TV_BUFFERS:
            rest[key] = value
    return out | {prefix + k: v for k, v in rename(rest, _HF_CLIP_FROM_OURS).items()}


# BadEncoder's CIFAR/STL SimCLR models: ``f.f.<i>`` is torchvision's resnet children without
# the max-pool and the fc (conv1 0, bn1 1, relu 2, layer1–4 3–6), ``g.*`` the projection head.
_BADENCODER_TO_TV = [
    (r"^f\.0\.", "conv1."),
    (r"^f\.1\.", "bn1."),
    (r"^f\.3\.", "layer1."),
    (r"^f\.4\.", "layer2."),
    (r"^f\.5\.", "layer3."),
    (r"^f\.6\.", "layer4."),
    (r"^g\.", "fc."),
]
_BADENCODER_FROM_TV = [
    (r"^conv1\.", "f.f.0."),
    (r"^bn1\.", "f.f.1."),
    (r"^layer(\d)\.", lambda m: f"f.f.{int(m.group(1)) + 2}."),
    (r"^fc\.", "g."),
]


def is_badencoder(keys: Collection[str]) -> bool:
    return "f.f.0.weight" in keys or ("f.0.weight" in keys and "f.3.0.conv1.weight" in keys)


def badencoder_to_ours(state: State) -> State:
    if any(k.startswith("f.f.") for k in state):
        state = {k[2:] if k.startswith("f.") else k: v for k, v in state.items()}
    kept = {k: v for k, v in state.items() if k.startswith(("f.", "g."))}
    return torchvision_to_ours(rename(kept, _BADENCODER_TO_TV))


def badencoder_from_ours(state: State) -> State:
    tv = torchvision_from_ours(state)
    if "fc.weight" in tv:  # the head is a Sequential in their model
        tv = {re.sub(r"^fc\.", "fc.0.", k): v for k, v in tv.items()}
    return rename(tv, _BADENCODER_FROM_TV)


# ---- the registry -------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """One checkpoint layout.

    Attributes:
        name: what ``encoder.layout`` names it.
        about: one line: whose checkpoints these are.
        detect: whether a state dict's key names are this layout's.
        to_ours: the image encoder's tensors in our names (nothing else).
        from_ours: our encoder's tensors in this layout's names (for export).
        families: the module families the layout holds.
        implied: per family, constructor arguments its checkpoints leave unsaid
            (activation, epsilon, stem padding), added to what the shapes tell.
        inputs: per family, the input its code fed (``size`` None: any; ``mean``/``std``).
        keeps_head: whether ``head`` defaults to keeping a projection found in the
            checkpoint (CLIP's projection is part of its image encoder; an SSL projection
            head is not).
        prefix: for a layout that wraps another under a prefix (MoCo's ``module.encoder_q.``,
            solo-learn's ``backbone.``): the prefixes it strips, and ``inner`` the layouts
            the rest may be in.
    """

    name: str
    about: str
    detect: Callable[[Collection[str]], bool]
    to_ours: Callable[[State], State]
    from_ours: Callable[[State], State]
    families: tuple[str, ...]
    implied: dict[str, dict[str, Any]] = field(default_factory=dict)
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    keeps_head: bool = False


def _ours(state: State) -> State:
    return dict(state)


#: ResNets trained on ImageNet: its normalisation; 224 px for the ImageNet (7×7) stem, the
#: data's own size for a CIFAR (3×3) one.
_RESNET_IMAGENET = {
    "resnet": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    "resnet:imagenet": {"size": 224},
}
_CLIP_VIT = {"act": "quick_gelu", "eps": 1e-5}
_CLIP_INPUT = {"mean": CLIP_MEAN, "std": CLIP_STD}

#: MoCo's prefixes: v1/v2 (``encoder_q``), v3 (``base_encoder``), with or without DDP's
#: ``module.``; solo-learn's ``backbone.``.
MOCO_PREFIXES = (
    "module.encoder_q.", "encoder_q.", "module.base_encoder.", "base_encoder.",
)  # fmt: skip
SOLO_PREFIXES = ("backbone.",)


def _prefixed(
    prefixes: tuple[str, ...], *inner: Layout, head: str | None = None
) -> tuple[Callable, Callable, Callable]:
    """(detect, to_ours, from_ours) of a layout that holds one of ``inner`` under one of
    ``prefixes`` (everything outside it — a momentum encoder, a queue — left out), and a
    ResNet's projection head under ``head`` beside it (solo-learn's ``projector.``)."""

    def within(keys: Collection[str]) -> tuple[str, Layout] | None:
        prefix = common_prefix(keys, prefixes)
        if prefix is None:
            return None
        rest = [k[len(prefix) :] for k in keys if k.startswith(prefix)]
        found = next((layout for layout in inner if layout.detect(rest)), None)
        return None if found is None else (prefix, found)

    def to_ours(state: State) -> State:
        prefix, layout = within(state) or ("", inner[0])
        ours = layout.to_ours(strip_prefix(state, prefix))
        if head is not None and family_of(ours) == "resnet":
            ours |= {"head." + k: v for k, v in strip_prefix(state, head).items()}
        return ours

    def from_ours(state: State) -> State:
        family = family_of(state)
        layout = next(x for x in inner if family in x.families)
        ours = dict(state)
        heads = {}
        if head is not None and family == "resnet":
            heads = {head + k: v for k, v in strip_prefix(state, "head.").items()}
            ours = {k: v for k, v in state.items() if not k.startswith("head.")}
        return {prefixes[0] + k: v for k, v in layout.from_ours(ours).items()} | heads

    return (lambda keys: within(keys) is not None), to_ours, from_ours


_TORCHVISION = Layout(
    "torchvision",
    "torchvision's ResNet-18/34/50 (conv1, bn1, layer1–4, fc)",
    is_torchvision,
    torchvision_to_ours,
    torchvision_from_ours,
    ("resnet",),
    inputs=_RESNET_IMAGENET,
)
_TIMM = Layout(
    "timm",
    "timm's VisionTransformer (patch_embed.proj, cls_token, pos_embed, blocks, norm, head); "
    "also DINO's ViTs",
    is_timm,
    timm_to_ours,
    timm_from_ours,
    ("vit",),
    implied={"vit": {"act": "gelu", "eps": 1e-6}},
    inputs={"vit": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}},
)


LAYOUTS: dict[str, Layout] = {
    "sslpoison": Layout(
        "sslpoison",
        "ours: a saved encoder (NAME.safetensors + NAME.json card), or its weights alone",
        lambda keys: family_of(keys) is not None,
        _ours,
        _ours,
        FAMILIES,
    ),
    "torchvision": _TORCHVISION,
    "moco": Layout(
        "moco",
        "MoCo v1/v2/v3 checkpoints (module.encoder_q. or module.base_encoder., then a "
        "torchvision ResNet or a timm ViT)",
        *_prefixed(MOCO_PREFIXES, _TORCHVISION, _TIMM),
        ("resnet", "vit"),
        implied=_TIMM.implied,
        inputs={**_RESNET_IMAGENET, **_TIMM.inputs},
    ),
    "solo-learn": Layout(
        "solo-learn",
        "solo-learn checkpoints (backbone., then a torchvision ResNet — its CIFAR stem pads "
        "by 2 — or a timm ViT)",
        *_prefixed(SOLO_PREFIXES, _TORCHVISION, _TIMM, head="projector."),
        ("resnet", "vit"),
        implied={"resnet:cifar": {"stem_padding": 2}, **_TIMM.implied},
        inputs={
            **_TIMM.inputs,
            **_RESNET_IMAGENET,
            "resnet:cifar": {"size": 32, "mean": CIFAR10_MEAN, "std": CIFAR10_STD},
        },
    ),
    "badencoder": Layout(
        "badencoder",
        "the BadEncoder repository's CIFAR-10/STL-10 SimCLR ResNets (f.f.<i>, g.)",
        is_badencoder,
        badencoder_to_ours,
        badencoder_from_ours,
        ("resnet",),
        inputs={"resnet": {"size": 32, "mean": CIFAR10_MEAN, "std": CIFAR10_STD}},
    ),
    "openai-clip": Layout(
        "openai-clip",
        "OpenAI CLIP state dicts (visual.*): ViT (QuickGELU) and ModifiedResNet towers",
        is_clip,
        clip_visual_to_ours,
        clip_visual_from_ours,
        ("vit", "modified_resnet"),
        implied={"vit": {**_CLIP_VIT, "ln_pre": True}},
        inputs={"vit": _CLIP_INPUT, "modified_resnet": _CLIP_INPUT},
        keeps_head=True,
    ),
    "open_clip": Layout(
        "open_clip",
        "open_clip state dicts (visual.*, or module.visual.* from its trainer): ViT (GELU "
        "unless the model is a -quickgelu one) and ModifiedResNet towers",
        lambda keys: (
            is_clip(keys, "module.visual.")
            or (is_clip(keys) and "visual.transformer.resblocks.0.ln_1.weight" in keys)
        ),
        lambda state: clip_visual_to_ours(
            state, "module.visual." if "module.visual.conv1.weight" in state else "visual."
        ),
        clip_visual_from_ours,
        ("vit", "modified_resnet"),
        implied={"vit": {"act": "gelu", "eps": 1e-5, "ln_pre": True}},
        inputs={"vit": _CLIP_INPUT, "modified_resnet": _CLIP_INPUT},
        keeps_head=True,
    ),
    "timm": _TIMM,
    "hf-clip": Layout(
        "hf-clip",
        "a Hugging Face CLIPModel / CLIPVisionModel state dict (vision_model.*) as our ViT",
        is_hf_clip,
        hf_clip_to_ours,
        hf_clip_from_ours,
        ("vit",),
        implied={"vit": {**_CLIP_VIT, "ln_pre": True}},
        inputs={"vit": _CLIP_INPUT},
        keeps_head=True,
    ),
}


def known_layout(name: str | None) -> str | None:
    """``name`` when it is one of :data:`LAYOUTS` (or None); ValueError listing them."""
    if name is not None and name not in LAYOUTS:
        raise ValueError(f"unknown layout {name!r}; known: {', '.join(LAYOUTS)}")
    return name


def detect_layouts(keys: Collection[str]) -> list[str]:
    """Every layout whose ``detect`` accepts ``keys`` (a prefixed layout before the layout it
    wraps: their keys never both match)."""
    return [name for name, layout in LAYOUTS.items() if layout.detect(keys)]


def detect_layout(keys: Collection[str], where: str) -> str:
    """The one layout ``keys`` are in; LayoutError naming ``where`` when none or several fit
    (CLIP ViTs: OpenAI's and open_clip's share their keys and differ in activation)."""
    found = detect_layouts(keys)
    if len(found) == 1:
        return found[0]
    sample = ", ".join(sorted(keys)[:4])
    if not found:
        raise LayoutError(
            f"{where}: the key names fit no known layout (first keys: {sample}); set "
            f"encoder.layout (one of {', '.join(LAYOUTS)}) or rename them with encoder.key_map"
        )
    raise LayoutError(
        f"{where}: the key names fit the layouts {', '.join(found)} alike (OpenAI's CLIP ViTs "
        f"use QuickGELU, open_clip's GELU unless named -quickgelu); set encoder.layout"
    )


def layout_defaults(layout: Layout, family: str, args: dict[str, Any]) -> tuple[dict, dict]:
    """(the constructor arguments ``layout`` implies for ``family``, its input preset), the
    ResNet entries refined by stem (``resnet:cifar`` over ``resnet``)."""
    keys = [family] + ([f"{family}:{args['stem']}"] if "stem" in args else [])
    implied: dict[str, Any] = {}
    inputs: dict[str, Any] = {}
    for key in keys:
        implied |= layout.implied.get(key, {})
        inputs |= layout.inputs.get(key, {})
    return implied, inputs


__all__ = [
    "FAMILIES",
    "LAYOUTS",
    "Layout",
    "LayoutError",
    "detect_layout",
    "detect_layouts",
    "drop_head",
    "family_of",
    "known_layout",
    "layout_defaults",
    "read_args",
    "read_head",
]
