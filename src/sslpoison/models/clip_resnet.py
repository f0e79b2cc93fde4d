"""CLIP's ModifiedResNet image tower (Radford et al., ICML 2021, Sec. 2.4), which loads the
OpenAI and open_clip RN50/RN101/RN50x4... weights without importing either library.

Its differences from a ResNet: a stem of three 3×3 convolutions and an average pool instead
of one 7×7 convolution and a max pool; anti-aliased strides (an average pool before the
strided 1×1 convolutions, in the blocks and in their shortcuts); and an attention pool in
place of the global average pool: the mean token, with position embeddings, attends over
the final feature map, and its output is projected to ``output_dim``. Parameter names follow
OpenAI's ``visual.*`` (without the prefix).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslpoison.models.inputs import CLIP_MEAN, CLIP_STD, register_normalisation


class Bottleneck(nn.Module):
    """1×1 → 3×3 → [avg-pool stride] → 1×1 (×4 channels), with an anti-aliased shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * 4, 1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * 4)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    """The mean token of a B×C×H×W map, plus position embeddings, attends (``heads``) over
    the map's H·W tokens and itself; its output is projected by ``c_proj`` to
    ``output_dim``. Shapes: B×C×H×W → B×output_dim."""

    def __init__(self, grid: int, embed_dim: int, heads: int, output_dim: int) -> None:
        super().__init__()
        if embed_dim % heads:
            raise ValueError(f"attention pool: {embed_dim} channels, {heads} heads")
        self.positional_embedding = nn.Parameter(
            torch.randn(grid**2 + 1, embed_dim) / embed_dim**0.5
        )
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.heads = heads

    def reset_parameters(self) -> None:
        c = self.positional_embedding.shape[1]
        nn.init.normal_(self.positional_embedding, std=c**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)  # B×HW×C
        x = torch.cat([x.mean(1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        h, d = self.heads, c // self.heads
        q = self.q_proj(x[:, :1]).view(b, 1, h, d).transpose(1, 2)
        k = self.k_proj(x).view(b, -1, h, d).transpose(1, 2)
        v = self.v_proj(x).view(b, -1, h, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c)
        return self.c_proj(out)


class ModifiedResNet(nn.Module):
    """CLIP's ResNet image tower: B×C×H×W float in [0, 1] → B×``output_dim``.

    Args:
        layers: blocks per stage (RN50: 3, 4, 6, 3).
        output_dim: the attention pool's output (RN50: 1024).
        heads: the attention pool's heads (CLIP: the final width / 64).
        image_size: the input side (the pool's position embeddings cover (size/32)² cells).
        base_width: the first stage's planes (RN50: 64; the stem ends at that width).
        in_channels: 1 or 3. mean, std: the input normalisation (CLIP's by default).
        pruned: output features held at zero (fine-pruning); stored in the card.

    Shapes: ``forward`` → B×output_dim; ``stages`` → the four stage maps.
    """

    def __init__(
        self,
        layers: tuple[int, int, int, int] | list[int] = (3, 4, 6, 3),
        output_dim: int = 1024,
        heads: int = 32,
        image_size: int = 224,
        base_width: int = 64,
        in_channels: int = 3,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        pruned: list[int] | None = None,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"modified_resnet layers must be 4 positive counts, got {layers}")
        if image_size % 32:
            raise ValueError(f"modified_resnet image_size {image_size} is not a multiple of 32")
        register_normalisation(self, in_channels, mean, std, CLIP_MEAN, CLIP_STD)
        w = base_width
        self.conv1 = nn.Conv2d(in_channels, w // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w // 2)
        self.conv2 = nn.Conv2d(w // 2, w // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w // 2)
        self.conv3 = nn.Conv2d(w // 2, w, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(w)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = w
        stages = []
        for i, n in enumerate(layers):
            planes, stride = w * 2**i, 1 if i == 0 else 2
            blocks = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * 4
            blocks += [Bottleneck(inplanes, planes) for _ in range(1, n)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.attnpool = AttentionPool2d(image_size // 32, inplanes, heads, output_dim)
        self.image_size = image_size
        self.feature_dim = output_dim
        self.in_channels = in_channels
        keep = torch.ones(output_dim)
        if pruned:
            if not all(0 <= c < output_dim for c in pruned):
                raise ValueError(f"modified_resnet pruned features must lie in [0, {output_dim})")
            keep[list(pruned)] = 0.0
        self.register_buffer("keep", keep if pruned else None, persistent=False)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage outputs (B×C_l×H_l×W_l each) for input in [0, 1]."""
        x = (x - self.mean) / self.std
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return outs

    def pool(self, last: torch.Tensor) -> torch.Tensor:
        """The attention pool of the last stage's map: B×``output_dim``."""
        out = self.attnpool(last)
        return out * self.keep.to(out.dtype) if self.keep is not None else out

    def forward_stages(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(the four stage maps, the B×``output_dim`` features), in one pass."""
        maps = self.stages(x)
        return maps, self.pool(maps[-1])

    def pruning_activity(self, x: torch.Tensor) -> torch.Tensor:
        """B×``output_dim``: the output features, what ``pruned`` masks."""
        return self(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(x)[-1])


__all__ = ["AttentionPool2d", "ModifiedResNet"]
