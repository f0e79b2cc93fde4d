"""Patch triggers applied to image batches on the device (shared by every attack).

A :class:`PatchTrigger` pastes a square patch — a solid colour, a seeded noise pattern, or an
image file — opaquely or alpha-blended, at a fixed place or at a random place inside a box
given as fractions of the image side (Saha et al., CVPR 2022: training box 25–75 %, test box
10–90 %; BadEncoder: a 10×10 white square at rows/cols 21–30 of 32×32). ``apply`` returns the
triggered batch and the top-left corner where each patch went, so tests and reports can check
and draw it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field, model_validator

from sslpoison.configbase import Config, CountOrShare
from sslpoison.data.pictures import save_rows


class TriggerConfig(Config):
    """Where and what the patch is.

    ``size``: pixels (an int) or a share of the image side (a float in (0, 1]).
    ``position``: a fixed top-left (row, col) in pixels; otherwise ``box`` = (lo, hi) bounds the
    patch, as fractions of the side, and the corner is drawn uniformly inside it.
    """

    kind: Literal["solid", "noise", "image"] = "solid"
    size: CountOrShare = 5
    color: list[float] = Field(default_factory=lambda: [1.0])  # per channel, in [0, 1]
    image: str | None = None  # a file, for kind "image"
    seed: int = 0  # the noise pattern's seed
    alpha: float = Field(1.0, gt=0.0, le=1.0)  # 1: opaque
    position: tuple[int, int] | None = None
    box: tuple[float, float] = (0.0, 1.0)

    @model_validator(mode="after")
    def _check(self) -> TriggerConfig:
        lo, hi = self.box
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"box: need 0 <= lo < hi <= 1, got {self.box}")
        if self.kind == "image" and not self.image:
            raise ValueError("image: a file is required for kind 'image'")
        if any(not 0.0 <= c <= 1.0 for c in self.color):
            raise ValueError(f"color: values must lie in [0, 1], got {self.color}")
        return self


def other_patterns(cfg: TriggerConfig, count: int) -> list[TriggerConfig]:
    """``count`` triggers like ``cfg`` — same size, opacity, position or box — whose pattern
    it never had: seeded noise patches, seeds ``cfg.seed + 1`` … ``cfg.seed + count`` for a
    noise trigger (its own is ``cfg.seed``), ``cfg.seed`` … ``cfg.seed + count − 1`` for a
    solid or image one. The null control of a backdoor: the attacked encoder should not
    answer them."""
    first = cfg.seed + 1 if cfg.kind == "noise" else cfg.seed
    return [
        cfg.model_copy(update={"kind": "noise", "image": None, "seed": first + i})
        for i in range(count)
    ]


def paste_patches(
    images: torch.Tensor, patches: torch.Tensor, corners: torch.Tensor, alpha: float = 1.0
) -> torch.Tensor:
    """A copy of ``images`` (B×C×H×W, uint8 or float in [0, 1]) with a square patch blended
    in at each image's top-left ``corners`` (B×2): ``(1 − alpha)·image + alpha·patch``.

    ``patches``: one C×s×s patch for every image, or B×C×s×s, one each (float in [0, 1]).
    The copy has the images' dtype (uint8: rounded)."""
    b = images.shape[0]
    side = patches.shape[-1]
    is_uint8 = images.dtype == torch.uint8
    x = images.float() / 255.0 if is_uint8 else images.clone()
    corners = corners.to(x.device)
    offs = torch.arange(side, device=x.device)
    bi = torch.arange(b, device=x.device)[:, None, None]
    ri = (corners[:, 0, None] + offs)[:, :, None]  # B×s×1
    ci = (corners[:, 1, None] + offs)[:, None, :]  # B×1×s
    nhwc = x.permute(0, 2, 3, 1)  # a view: writing it writes x
    patch = patches.to(x).movedim(-3, -1)  # s×s×C or B×s×s×C
    nhwc[bi, ri, ci] = (1.0 - alpha) * nhwc[bi, ri, ci] + alpha * patch
    if is_uint8:
        x = x.mul(255.0).round().clamp(0, 255).to(torch.uint8)
    return x


class PatchTrigger:
    """A patch trigger for C×H×W images of one size.

    Shapes: ``apply``: B×C×H×W (uint8 or float in [0, 1]) → same shape and dtype, and B×2
    int64 top-left corners (row, col).
    """

    def __init__(self, cfg: TriggerConfig, channels: int, image_size: int) -> None:
        side = cfg.size if isinstance(cfg.size, int) else max(1, round(cfg.size * image_size))
        if side > image_size:
            raise ValueError(
                f"trigger size {side} px is larger than the {image_size}×{image_size} image"
            )
        if cfg.position is not None:
            r, c = cfg.position
            if not (0 <= r <= image_size - side and 0 <= c <= image_size - side):
                raise ValueError(
                    f"trigger position {cfg.position} puts a {side}-px patch outside the "
                    f"{image_size}×{image_size} image"
                )
        lo, hi = round(cfg.box[0] * image_size), round(cfg.box[1] * image_size)
        if hi - lo < side:
            raise ValueError(
                f"trigger box {cfg.box} ({hi - lo} px) is smaller than the {side}-px patch"
            )
        self.cfg = cfg
        self.side = side
        self.channels = channels
        self.image_size = image_size
        self.corner_range = (lo, hi - side)  # inclusive bounds of the top-left corner
        self.pattern = self._pattern()  # C×side×side float in [0, 1]

    def _pattern(self) -> torch.Tensor:
        cfg, c, s = self.cfg, self.channels, self.side
        if cfg.kind == "solid":
            color = cfg.color if len(cfg.color) == c else cfg.color[:1] * c
            if len(color) != c:
                raise ValueError(f"color: {len(cfg.color)} values for {c} channels")
            return torch.tensor(color).view(c, 1, 1).expand(c, s, s).clone()
        if cfg.kind == "noise":
            g = torch.Generator().manual_seed(cfg.seed)
            return torch.rand(c, s, s, generator=g)
        from sslpoison.data.pictures import read_image

        path = Path(cfg.image)  # type: ignore[arg-type]
        if not path.exists():
            raise FileNotFoundError(f"trigger image not found: {path}")
        img = read_image(path, "L" if c == 1 else "RGB").resize((s, s), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        return torch.from_numpy(arr.reshape(s, s, c)).permute(2, 0, 1).contiguous()

    def corners(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Top-left corners (n×2, int64) for ``n`` images: fixed, or drawn inside the box."""
        if self.cfg.position is not None:
            return torch.tensor(self.cfg.position).expand(n, 2).clone()
        lo, hi = self.corner_range
        return torch.randint(lo, hi + 1, (n, 2), generator=generator)

    def mask(self, corners: torch.Tensor) -> torch.Tensor:
        """Boolean B×H×W masks of the patch pixels for the given corners."""
        idx = torch.arange(self.image_size, device=corners.device)
        rows = (idx >= corners[:, :1]) & (idx < corners[:, :1] + self.side)  # B×H
        cols = (idx >= corners[:, 1:]) & (idx < corners[:, 1:] + self.side)  # B×W
        return rows[:, :, None] & cols[:, None, :]

    def apply(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        corners: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Paste the patch into a copy of ``images``; returns (triggered, corners)."""
        b, c, h, w = images.shape
        if c != self.channels or h != self.image_size or w != self.image_size:
            raise ValueError(
                f"trigger made for {self.channels}×{self.image_size}×{self.image_size} images, "
                f"got {c}×{h}×{w}"
            )
        if corners is None:
            corners = self.corners(b, generator)
        return paste_patches(images, self.pattern, corners, self.cfg.alpha), corners

    def save_examples(
        self, images: torch.Tensor, path: str | Path, n: int = 8, seed: int = 0
    ) -> Path:
        """A PNG grid: clean images on the top row, triggered below (uint8 B×C×H×W input)."""
        clean = images[:n].cpu()
        triggered, _ = self.apply(clean, torch.Generator().manual_seed(seed))
        return save_rows([clean, triggered], path)
