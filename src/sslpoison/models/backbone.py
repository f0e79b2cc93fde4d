"""Which backbone an experiment uses (:class:`BackboneConfig`) and building it
(:func:`build_encoder`): shared by view pre-training, CLIP's image tower and the attacks."""

from __future__ import annotations

from typing import Any, Literal

import torch.nn as nn
from pydantic import (
    Field,
    PositiveFloat,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from sslpoison.configbase import Config, check_kwargs
from sslpoison.models import BACKBONES, backbone_family, backbone_parameters, build_backbone

#: The fields of :class:`BackboneConfig` other than ``arch`` and ``args``: each is passed to
#: the architecture when it was set (a ResNet takes all three; a ViT takes ``width``).
SHARED_FIELDS = ("width", "stem", "stem_stride")


class BackboneConfig(Config):
    """The encoder architecture: ``arch`` names one of :data:`sslpoison.models.BACKBONES`.

    ``width``: a ResNet's channel multiplier (1.0 = 64-128-256-512 base planes), a ViT's token
    width (an integer). ``stem`` / ``stem_stride``: a ResNet's stem (see
    :class:`sslpoison.models.resnet.ResNet`). ``args``: any other argument of the
    architecture, e.g. a ViT's ``patch_size``, ``depth``, ``heads``, ``act``, ``pool``
    (:class:`sslpoison.models.vit.VisionTransformer`). A field is passed only when set (the
    architecture's default otherwise); one the architecture does not take is an error. A
    ViT's ``image_size`` is the pre-training images' side unless ``args`` sets it.
    """

    arch: str = "resnet18"
    width: PositiveFloat = 1.0
    stem: Literal["cifar", "imagenet"] = "cifar"
    stem_stride: Literal[1, 2] = 1
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("arch")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in BACKBONES:
            raise ValueError(f"unknown backbone {v!r}; known: {', '.join(sorted(BACKBONES))}")
        return v

    @model_validator(mode="after")
    def _fits(self) -> BackboneConfig:
        self.arch_kwargs()
        return self

    @model_serializer(mode="wrap")
    def _without_empty_args(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """``args`` only when it holds something (so that the stage keys of the configs
        written before it existed stay as they were)."""
        data = handler(self)
        if not data.get("args"):
            data.pop("args", None)
        return data

    def arch_kwargs(self, **given: Any) -> dict[str, Any]:
        """The keyword arguments of ``arch``: the fields set, ``args`` and ``given`` (e.g.
        ``in_channels``), validated against the architecture's signature (ValueError naming
        the key)."""
        takes = backbone_parameters(self.arch)
        family, fixed = backbone_family(self.arch)
        kwargs: dict[str, Any] = {}
        for name in SHARED_FIELDS:
            if name in self.model_fields_set:
                if name not in takes:
                    raise ValueError(f"{name}: the {self.arch} backbone takes no {name}")
                kwargs[name] = getattr(self, name)
        for name in self.args:
            if name in fixed:
                raise ValueError(f"args.{name}: set by the name {self.arch!r}")
            if name in SHARED_FIELDS or name == "in_channels":
                raise ValueError(f"args.{name}: give it as backbone.{name}, not in args")
        kwargs |= self.args
        kwargs |= {k: v for k, v in given.items() if k in takes and k not in self.args}
        return check_kwargs(family, kwargs, "args", skip=tuple(fixed))


def build_encoder(
    cfg: BackboneConfig, channels: int, size: int | None = None, **given: Any
) -> nn.Module:
    """A fresh backbone (weights from the global RNG): ``channels``×H×W float in [0, 1] → D;
    ``size`` is the input side, for architectures whose weights depend on it (a ViT);
    ``given``: further arguments (e.g. ``mean``/``std``) where the architecture takes them
    and the config does not set them."""
    given["in_channels"] = channels
    if size is not None:
        given["image_size"] = size
    return build_backbone(cfg.arch, **cfg.arch_kwargs(**given))


__all__ = ["BackboneConfig", "build_encoder"]
