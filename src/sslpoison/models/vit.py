"""A Vision Transformer image encoder (Dosovitskiy et al., ICLR 2021) that loads the weights of
CLIP (Radford et al., ICML 2021; OpenAI, open_clip, Hugging Face), timm and DINO without
importing those libraries.

The variants differ in a few switches, all constructor arguments (and so in the encoder's
card): a LayerNorm before the blocks (CLIP's ``ln_pre``), a bias on the patch embedding
(timm's, not CLIP's), the MLP activation (CLIP's QuickGELU, GELU elsewhere), the LayerNorm
epsilon (1e-5 CLIP, 1e-6 timm), layer scale (DINOv2), pooling (the class token, or the mean
of the patch tokens) and an optional linear projection after the final LayerNorm (CLIP's
``proj``; a timm classifier ``head`` with a bias). The final LayerNorm is applied to the
pooled token: with class-token pooling this equals timm's norm of every token.

As :class:`~sslpoison.models.resnet.ResNet`, the input normalisation (``mean``/``std``) is
part of the model, so triggers, attacks and defenses feed plain [0, 1] pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslpoison.models.inputs import register_normalisation

#: The MLP activations by name.
ACTIVATIONS = ("gelu", "quick_gelu")


class QuickGELU(nn.Module):
    """x·σ(1.702·x), the GELU approximation CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with a packed q/k/v projection (``in_proj_weight`` 3D×D, as
    ``nn.MultiheadAttention`` and CLIP name it) and ``out_proj``. Shapes: B×N×D → B×N×D."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"vit width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class LayerScale(nn.Module):
    """Per-channel scale ``gamma`` (Touvron et al., CaiT; DINOv2's ``ls1``/``ls2``)."""

    def __init__(self, width: int, init: float = 1e-5) -> None:
        super().__init__()
        self.init = init
        self.gamma = nn.Parameter(torch.full((width,), init))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """A pre-LN transformer block: x + ls_1(attn(ln_1(x))), then x + ls_2(mlp(ln_2(x)))."""

    def __init__(
        self, width: int, heads: int, mlp_dim: int, act: str, eps: float, layer_scale: bool
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(width, mlp_dim))
        self.mlp.add_module("act", QuickGELU() if act == "quick_gelu" else nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(mlp_dim, width))
        self.ls_1 = LayerScale(width) if layer_scale else nn.Identity()
        self.ls_2 = LayerScale(width) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls_1(self.attn(self.ln_1(x)))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


def stage_depths(depth: int) -> list[int]:
    """The block indices whose outputs :meth:`VisionTransformer.stages` returns: the ends of
    the four quarters of the depth (e.g. 2, 5, 8, 11 for 12 blocks)."""
    return [max(1, round(depth * k / 4)) - 1 for k in range(1, 5)]


class VisionTransformer(nn.Module):
    """A ViT image encoder: B×C×H×W float in [0, 1] → B×``feature_dim``.

    Args:
        image_size: the input side (the position embeddings cover (image_size/patch_size)²
            patches and the class token).
        patch_size: p, the side of a patch (a p×p convolution of stride p embeds each).
        width: D, the token width. depth: the number of blocks. heads: attention heads.
        mlp_dim: the MLP's hidden width (default 4·D).
        in_channels: 1 for grayscale, 3 for RGB.
        act: ``"gelu"`` or ``"quick_gelu"`` (CLIP). eps: the LayerNorms' epsilon.
        ln_pre: a LayerNorm on the tokens before the blocks (CLIP).
        patch_bias: a bias on the patch embedding (timm, DINO, Hugging Face ViT).
        layer_scale: per-channel scales on both residual branches (DINOv2).
        pool: ``"cls"`` (the class token) or ``"mean"`` (the mean of the patch tokens).
        proj_dim: a linear projection D → proj_dim after the final LayerNorm (CLIP's
            ``proj``), or None. proj_bias: whether it has a bias (a timm ``head``).
        mean, std: per-channel normalisation applied to the [0, 1] input.
        pruned: output features held at zero (fine-pruning); stored in the card.

    Shapes: ``forward`` B×C×H×W → B×D (or B×proj_dim); ``stages`` → four B×D×g×g token
    maps (g = image_size / patch_size).
    """

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        width: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_dim: int | None = None,
        in_channels: int = 3,
        act: str = "gelu",
        eps: float = 1e-6,
        ln_pre: bool = False,
        patch_bias: bool = True,
        layer_scale: bool = False,
        pool: str = "cls",
        proj_dim: int | None = None,
        proj_bias: bool = False,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        pruned: list[int] | None = None,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"vit image_size {image_size} is not a multiple of {patch_size}")
        if act not in ACTIVATIONS:
            raise ValueError(f"vit act must be one of {ACTIVATIONS}, got {act!r}")
        if pool not in ("cls", "mean"):
            raise ValueError(f"vit pool must be 'cls' or 'mean', got {pool!r}")
        if min(width, depth, heads, patch_size) < 1:
            raise ValueError("vit width, depth, heads and patch_size must be positive")
        register_normalisation(self, in_channels, mean, std, [0.5], [0.5])
        self.grid = image_size // patch_size
        self.image_size, self.patch_size, self.pool = image_size, patch_size, pool
        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, patch_size, bias=patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(width))
        self.pos_embed = nn.Parameter(torch.zeros(self.grid**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=eps) if ln_pre else nn.Identity()
        mlp = mlp_dim or 4 * width
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp, act, eps, layer_scale) for _ in range(depth)
        )
        self.ln_post = nn.LayerNorm(width, eps=eps)
        self.proj = nn.Linear(width, proj_dim, bias=proj_bias) if proj_dim else None
        self.feature_dim = proj_dim or width
        self.in_channels = in_channels
        keep = torch.ones(self.feature_dim)
        if pruned:
            if not all(0 <= c < self.feature_dim for c in pruned):
                raise ValueError(f"vit pruned features must lie in [0, {self.feature_dim})")
            keep[list(pruned)] = 0.0
        self.register_buffer("keep", keep if pruned else None, persistent=False)
        self._init_weights()

    def reset_parameters(self) -> None:
        """Re-draw the class token and the position embeddings (the layers re-draw their
        own; see :func:`sslpoison.defenses.base.reinitialise`)."""
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    def _init_weights(self) -> None:
        # timm's: truncated normal (std 0.02) for every linear map, zero biases.
        self.reset_parameters()
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, Attention):
                nn.init.trunc_normal_(m.in_proj_weight, std=0.02)
        w = self.patch_embed.weight
        nn.init.trunc_normal_(w, std=math.sqrt(1.0 / (w[0].numel())))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The embedded tokens (class token first, positions added, ``ln_pre``): B×(1+g²)×D."""
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"vit: expects {self.image_size}×{self.image_size} images, got "
                f"{tuple(x.shape[-2:])}"
            )
        x = self.patch_embed((x - self.mean) / self.std).flatten(2).transpose(1, 2)
        cls = self.cls_token.to(x.dtype).expand(x.shape[0], 1, -1)
        return self.ln_pre(torch.cat([cls, x], dim=1) + self.pos_embed.to(x.dtype))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Pool the final tokens (B×(1+g²)×D), normalise, project: B×``feature_dim``."""
        pooled = x[:, 0] if self.pool == "cls" else x[:, 1:].mean(1)
        pooled = self.ln_post(pooled)
        if self.proj is not None:
            pooled = self.proj(pooled)
        if self.keep is not None:
            pooled = pooled * self.keep.to(pooled.dtype)
        return pooled

    def forward_stages(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(four B×D×g×g maps of the patch tokens after the blocks of :func:`stage_depths`,
        the B×``feature_dim`` features), in one pass."""
        x = self.tokens(x)
        wanted, maps = stage_depths(len(self.blocks)), []
        for i, block in enumerate(self.blocks):
            x = block(x)
            for _ in range(wanted.count(i)):
                maps.append(x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, self.grid, self.grid))
        return maps, self.head(x)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Four B×D×g×g token maps at the quarters of the depth (for MIMIC's attention)."""
        return self.forward_stages(x)[0]

    def pruning_activity(self, x: torch.Tensor) -> torch.Tensor:
        """B×``feature_dim``: the output features, what ``pruned`` masks."""
        return self(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokens(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


__all__ = ["ACTIVATIONS", "Attention", "Block", "QuickGELU", "VisionTransformer", "stage_depths"]
