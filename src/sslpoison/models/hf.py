"""Hugging Face ``transformers`` vision models as encoders (``encoder: {source: hf}``).

:class:`HFEncoder` wraps a model built from its config alone (``from_config``: nothing from
the hub, no remote code): a CLIP vision tower, a ViT, DINOv2, or any ``AutoModel`` whose
output has a pooled vector or a class token. The input normalisation lives in the wrapper
(``mean``/``std``), so it takes [0, 1] pixels like every encoder here. Its card holds the
model's config (JSON) and the wrapper's arguments, so the stage cache saves and reloads it
as safetensors + JSON, like our own backbones.

:func:`load_hf` reads a local folder (``config.json`` + ``model.safetensors`` or a
``pytorch_model.bin``, read with ``weights_only``), or a hub id when the hub can be reached.
A CLIP folder also gives its text tower and tokenizer, for zero-shot evaluation
(:class:`HFCLIPText`). ``transformers`` is imported only here, and only when used: it is the
``[hub]`` extra.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslpoison.errors import ModelFileError, ModelFileMissing, UserError, one_line
from sslpoison.models.inputs import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    register_normalisation,
)

log = logging.getLogger(__name__)

#: What ``output`` may name: the pooled vector (CLIP: the class token after its final
#: LayerNorm), the raw class token, or CLIP's projection into the joint image–text space.
OUTPUTS = ("pooled", "cls", "proj")
#: The normalisation a model type's image processors use, when its folder has none.
DEFAULT_NORMALISATION = {
    "clip": (CLIP_MEAN, CLIP_STD),
    "clip_vision_model": (CLIP_MEAN, CLIP_STD),
    "vit": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
}


class MissingExtra(UserError, ImportError):
    """An optional dependency is not installed; names the extra that installs it."""


def require_transformers() -> Any:
    """The ``transformers`` module, or :class:`MissingExtra` naming the ``[hub]`` extra."""
    try:
        import transformers
    except ImportError:
        raise MissingExtra(
            "encoder source hf needs the transformers package: pip install 'sslpoison[hub]'"
        ) from None
    return transformers


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' load reports and progress bars off for the block (then as they were)."""
    tf = require_transformers()
    verbosity, bars = tf.logging.get_verbosity(), tf.logging.is_progress_bar_enabled()
    hub = logging.getLogger("huggingface_hub")
    hub_level = hub.level
    tf.logging.set_verbosity_error()
    tf.logging.disable_progress_bar()
    hub.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tf.logging.set_verbosity(verbosity)
        hub.setLevel(hub_level)
        if bars:
            tf.logging.enable_progress_bar()


def vision_config(config: dict[str, Any]) -> dict[str, Any]:
    """The vision part of a model config (a CLIP config's ``vision_config``)."""
    if config.get("model_type") == "clip":
        return dict(config.get("vision_config") or {})
    return config


def model_class_and_config(config: dict[str, Any], output: str) -> tuple[Any, Any]:
    """(the ``transformers`` class, its config object) of the image model ``config`` (a
    config's ``to_dict()``) describes, for ``output``: a CLIP (or CLIP vision) config gives
    its vision tower, with the projection when ``output`` is ``proj``; any other model type
    ``AutoModel`` (without a pooler when it is not wanted)."""
    tf = require_transformers()
    kind = config.get("model_type")
    if kind in ("clip", "clip_vision_model"):
        vision = {k: v for k, v in vision_config(config).items() if k != "model_type"}
        if kind == "clip" and "projection_dim" in config:
            vision["projection_dim"] = config["projection_dim"]
        cfg = tf.CLIPVisionConfig(**vision)
        cls = tf.CLIPVisionModelWithProjection if output == "proj" else tf.CLIPVisionModel
        return cls, cfg
    if output == "proj":
        raise ValueError(f"encoder.output: proj needs a CLIP model; this one is a {kind!r}")
    try:
        cfg = tf.AutoConfig.for_model(
            kind, **{k: v for k, v in config.items() if k != "model_type"}
        )
    except (ValueError, KeyError) as e:
        raise ValueError(f"model type {kind!r}: {one_line(e, 200)}") from None
    return tf.AutoModel, cfg


class HFEncoder(nn.Module):
    """A ``transformers`` image model as an encoder: B×C×H×W float in [0, 1] → B×D.

    Args:
        config: the model's config (``PretrainedConfig.to_dict()``; a CLIP config gives its
            vision tower).
        output: ``pooled``, ``cls`` or ``proj`` (see :data:`OUTPUTS`).
        image_size, in_channels: the input (default: the config's).
        mean, std: the normalisation applied to the [0, 1] input (default: the model type's
            processor's, else ImageNet's).
        pruned: output features held at zero (fine-pruning); stored in the card.
    """

    #: :func:`~sslpoison.defenses.base.reinitialise`: ``reset_parameters`` re-draws every
    #: parameter of the wrapped model (its own initialisation), not only the wrapper's.
    resets_all_parameters = True

    def __init__(
        self,
        config: dict[str, Any],
        output: str = "pooled",
        image_size: int | None = None,
        in_channels: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        pruned: list[int] | None = None,
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        self.config_dict, self.output = dict(config), output
        cls, cfg = model_class_and_config(config, output)
        self._build = (cls, cfg)
        with quiet_transformers():
            self.model = self._fresh()
        vision = vision_config(config)
        self.image_size = int(image_size or vision.get("image_size") or 224)
        self.in_channels = int(in_channels or vision.get("num_channels") or 3)
        default_mean, default_std = DEFAULT_NORMALISATION.get(
            str(config.get("model_type")), (IMAGENET_MEAN, IMAGENET_STD)
        )
        register_normalisation(self, self.in_channels, mean, std, default_mean, default_std)
        self.feature_dim = self._feature_dim(vision)
        keep = torch.ones(self.feature_dim)
        if pruned:
            if not all(0 <= c < self.feature_dim for c in pruned):
                raise ValueError(f"hf pruned features must lie in [0, {self.feature_dim})")
            keep[list(pruned)] = 0.0
        self.register_buffer("keep", keep if pruned else None, persistent=False)

    def _fresh(self) -> nn.Module:
        cls, cfg = self._build
        if cls.__name__ == "AutoModel":
            kwargs = {"add_pooling_layer": False} if self.output != "pooled" else {}
            try:
                return cls.from_config(cfg, **kwargs)
            except TypeError:  # a model without that option
                return cls.from_config(cfg)
        return cls(cfg)

    def _feature_dim(self, vision: dict[str, Any]) -> int:
        if self.output == "proj":
            return int(self.config_dict.get("projection_dim") or vision.get("projection_dim"))
        if vision.get("hidden_size"):
            return int(vision["hidden_size"])
        with torch.no_grad():  # e.g. a convolutional model: its pooled width, measured
            probe = torch.zeros(1, self.in_channels, self.image_size, self.image_size)
            return int(self._features(probe).shape[1])

    def reset_parameters(self) -> None:
        """Every weight of the wrapped model drawn afresh by its own initialisation (from
        the global RNG); the normalisation is kept."""
        with quiet_transformers():
            fresh = self._fresh().to(self.mean.device)
        self.model.load_state_dict(fresh.state_dict())

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=(x - self.mean) / self.std)
        if self.output == "proj":
            return out.image_embeds
        if self.output == "cls":
            return out.last_hidden_state[:, 0]
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            raise ValueError("encoder.output: this model has no pooled output; use cls")
        return pooled.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self._features(x)
        return z * self.keep.to(z.dtype) if self.keep is not None else z

    def pruning_activity(self, x: torch.Tensor) -> torch.Tensor:
        """B×``feature_dim``: the output features, what ``pruned`` masks."""
        return self(x)

    def forward_stages(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(four B×D×g×g patch-token maps at the quarters of the depth, the features) of a
        transformer (MIMIC's attention transfer)."""
        out = self.model(pixel_values=(x - self.mean) / self.std, output_hidden_states=True)
        hidden = out.hidden_states
        if hidden is None or hidden[-1].dim() != 3:
            raise ValueError("this hf model gives no token maps (hidden states)")
        from sslpoison.models.vit import stage_depths

        maps = []
        for i in stage_depths(len(hidden) - 1):
            tokens = hidden[i + 1][:, 1:]
            side = round(tokens.shape[1] ** 0.5)
            tokens = tokens[:, -side * side :]  # registers, if any, come first
            maps.append(tokens.transpose(1, 2).reshape(x.shape[0], -1, side, side))
        if self.output == "proj":
            z = out.image_embeds
        elif self.output == "cls":
            z = out.last_hidden_state[:, 0]
        else:
            z = out.pooler_output.flatten(1)
        return maps, z * self.keep.to(z.dtype) if self.keep is not None else z

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_stages(x)[0]


class HFTokenizer:
    """A Hugging Face tokenizer behind :class:`sslpoison.models.text.Tokenizer`'s
    ``encode(texts) -> ids`` (B×L int64, padded to the longest, at most the model's context)."""

    def __init__(self, tokenizer: Any, context_length: int) -> None:
        self.tokenizer, self.context_length = tokenizer, context_length

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.context_length,
            return_tensors="pt",
        )["input_ids"]  # fmt: skip
        return ids.long()


class HFCLIPText(nn.Module):
    """CLIP's text tower and projection from a Hugging Face CLIP folder, and its tokenizer.
    ``embed(ids)``: B×L → B×D (unnormalised, in the joint space)."""

    def __init__(self, model: nn.Module, tokenizer: HFTokenizer) -> None:
        super().__init__()
        self.model, self.tokenizer = model, tokenizer

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).text_embeds


class PairedCLIP(nn.Module):
    """An image encoder whose output is in CLIP's joint space (``output: proj``) and a CLIP
    text tower, as the zero-shot evaluation's model: ``encode_image`` (B×C×H×W in [0, 1] →
    B×D unit rows) and ``encode_text`` (B×L → B×D unit rows). The text tower is shared by
    the clean and the attacked image encoder, and never trained."""

    def __init__(self, image: nn.Module, text: HFCLIPText) -> None:
        super().__init__()
        self.image, self.text = image, text

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(images), dim=-1)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text.embed(ids), dim=-1)


# ---- loading a folder or a hub id ---------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_folder(path: str) -> tuple[str, bool]:
    """(``path``, whether it is a local folder); a missing path that cannot be a hub id, a
    file, or a folder without ``config.json`` are ModelFileErrors naming it."""
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelFileError(f"{p}: no config.json, so not a Hugging Face model folder")
        return str(p), True
    if p.exists():
        raise ModelFileError(f"{p}: a file; source hf takes a model folder (or a hub id)")
    if not _HUB_ID.match(path) or path.startswith((".", "~", "/")):
        raise ModelFileMissing(f"model folder not found: {p}")
    return path, False


def hub_reachable(timeout: float = 3.0) -> str | None:
    """None when the Hugging Face hub's host answers a TCP connection within ``timeout``
    seconds, else why not (offline mode, no name resolution, refused). Checked before a
    download, so an offline machine fails at once instead of after the hub client's retries."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except (ImportError, AttributeError):  # pragma: no cover - an older hub client
        endpoint = "https://huggingface.co"
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError as e:
        return f"{url.hostname}: {e.strerror or e}"
    return None


def read_folder_config(folder: str, local: bool) -> tuple[dict[str, Any], bool]:
    """The folder's (or hub id's) model config as a dict, and whether the files are read
    from the machine alone (a local folder, or a hub id in the local Hugging Face cache)."""
    tf = require_transformers()
    try:
        with quiet_transformers():
            return tf.AutoConfig.from_pretrained(folder, local_files_only=True).to_dict(), True
    except (OSError, ValueError, KeyError) as e:
        if local:
            raise ModelFileError(f"{folder}/config.json: {one_line(e, 200)}") from None
    why = hub_reachable()
    if why is not None:
        raise unreachable(folder, why)
    try:
        with quiet_transformers():
            return tf.AutoConfig.from_pretrained(folder).to_dict(), False
    except (OSError, ValueError, KeyError) as e:
        raise unreachable(folder, e) from None


def unreachable(hub_id: str, why: object) -> ModelFileError:
    """The one-line error for a hub id that cannot be fetched (offline, or no such model)."""
    return ModelFileMissing(
        f"{hub_id!r} is not a local folder and could not be fetched from the Hugging Face hub "
        f"({one_line(why, 120)}); download it where the hub is reachable "
        f"(hf download {hub_id} --local-dir DIR) and give that folder"
    )


def processor_input(folder: str, local: bool) -> dict[str, Any]:
    """Size and normalisation from the folder's ``preprocessor_config.json`` (plain JSON),
    when it has one: ``{"size", "mean", "std"}`` (any missing)."""
    if not local:
        return {}
    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        return {}
    from sslpoison.models.io import read_json_file

    raw = read_json_file(path, "image processor config")
    found: dict[str, Any] = {}
    crop = raw.get("crop_size")
    size = crop if crop is not None else raw.get("size")
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge")
    if isinstance(size, int):
        found["size"] = size
    for ours, theirs in (("mean", "image_mean"), ("std", "image_std")):
        if isinstance(raw.get(theirs), list):
            found[ours] = [float(v) for v in raw[theirs]]
    return found


def load_weights_into(encoder: HFEncoder, folder: str, local: bool) -> None:
    """The folder's (or hub id's) weights into ``encoder.model`` (``from_pretrained`` with
    its config: safetensors, or a ``.bin`` read with ``weights_only``); every weight the
    model needs must be there (ModelFileError listing the first missing or mismatched)."""
    cls, cfg = encoder._build
    kwargs: dict[str, Any] = {"config": cfg, "local_files_only": local, "output_loading_info": True}
    if cls.__name__ == "AutoModel" and encoder.output != "pooled":
        kwargs["add_pooling_layer"] = False
    try:
        with quiet_transformers():
            try:
                model, info = cls.from_pretrained(folder, **kwargs)
            except TypeError:
                kwargs.pop("add_pooling_layer", None)
                model, info = cls.from_pretrained(folder, **kwargs)
    except Exception as e:  # whatever reading the folder's files raised (safetensors, torch)
        if local:
            raise ModelFileError(
                f"{folder}: the weights cannot be loaded ({type(e).__name__}: {one_line(e, 300)})"
            ) from None
        raise unreachable(folder, e) from None
    problems = [
        f"{len(info.get(k) or [])} {what} (first: {', '.join(map(str, list(info[k])[:3]))})"
        for k, what in (("missing_keys", "missing"), ("mismatched_keys", "of another shape"))
        if info.get(k)
    ]
    if problems:
        raise ModelFileError(
            f"{folder}: the weights do not fit the {cls.__name__} of its config: "
            f"{'; '.join(problems)}"
            + ("; choose output: cls" if encoder.output == "pooled" else "")
        )
    encoder.model.load_state_dict(model.state_dict())


def load_clip_text(folder: str, config: dict[str, Any], local: bool) -> HFCLIPText | None:
    """A CLIP folder's text tower (with its projection) and tokenizer, or None (with a log
    line) when the folder is not a whole CLIP model or has no tokenizer files."""
    if config.get("model_type") != "clip":
        return None
    tf = require_transformers()
    text = {k: v for k, v in (config.get("text_config") or {}).items() if k != "model_type"}
    if "projection_dim" in config:
        text["projection_dim"] = config["projection_dim"]
    try:
        with quiet_transformers():
            tokenizer = tf.AutoTokenizer.from_pretrained(folder, local_files_only=local)
            model = tf.CLIPTextModelWithProjection.from_pretrained(
                folder, config=tf.CLIPTextConfig(**text), local_files_only=local
            )
    except (OSError, ValueError, TypeError) as e:
        log.info("encoder: %s has no usable tokenizer or text tower (%s): no zero-shot",
                 folder, one_line(e, 120))  # fmt: skip
        return None
    context = int(text.get("max_position_embeddings") or 77)
    return HFCLIPText(model.eval().requires_grad_(False), HFTokenizer(tokenizer, context))


__all__ = [
    "OUTPUTS",
    "HFCLIPText",
    "HFEncoder",
    "HFTokenizer",
    "MissingExtra",
    "PairedCLIP",
    "load_clip_text",
    "load_weights_into",
    "model_class_and_config",
    "processor_input",
    "quiet_transformers",
    "read_folder_config",
    "require_transformers",
    "resolve_folder",
]
