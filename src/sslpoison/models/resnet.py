"""ResNet-10/18/34/50 backbones (He et al., CVPR 2016) for small and large images.

Stems: ``"cifar"`` (3×3 conv, no max-pool, as in SimCLR/BadEncoder CIFAR code) and
``"imagenet"`` (7×7/2 conv + 3×3/2 max-pool). ``stem_stride=2`` on the CIFAR stem halves the
feature maps (4× fewer FLOPs), which makes 28–32 px pre-training practical on a CPU.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslpoison.models.inputs import register_normalisation

DEPTHS = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        cout = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """A ResNet trunk that maps images in [0, 1] to a pooled feature vector.

    Input normalisation (``mean``/``std`` per channel) is part of the model, so every user
    (probe, trigger, attack) feeds plain [0, 1] pixels.

    Args:
        depth: 10, 18, 34 or 50 (10: one basic block per stage, half ResNet-18's FLOPs; the
            CPU presets' backbone).
        width: channel multiplier (1.0 = 64-128-256-512 base planes).
        in_channels: 1 for grayscale, 3 for RGB.
        stem: ``"cifar"`` or ``"imagenet"``.
        stem_stride: stride of the CIFAR stem's conv (1 or 2).
        stem_padding: padding of the stem's conv (default 1 for the CIFAR stem, 3 for the
            ImageNet one; solo-learn's CIFAR models pad their 3×3 stem by 2).
        mean, std: per-channel normalisation applied to the [0, 1] input.
        pruned: output channels of the last stage held at zero (fine-pruning, Liu et al.,
            RAID 2018); stored in the encoder's card, so a pruned encoder reloads pruned.
        head: a projection head kept from a checkpoint, applied to the pooled feature: its
            layers in order, each ``["linear", in, out, bias]``, ``["bn", dim]`` or
            ``["relu"]`` (see :func:`build_head`); None: no head.

    Shapes: ``forward``: B×C×H×W float in [0, 1] → B×``feature_dim``.
    """

    def __init__(
        self,
        depth: int = 18,
        width: float = 1.0,
        in_channels: int = 3,
        stem: str = "cifar",
        stem_stride: int = 1,
        stem_padding: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        pruned: list[int] | None = None,
        head: list[list] | None = None,
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"resnet depth must be one of {sorted(DEPTHS)}, got {depth}")
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"resnet stem must be 'cifar' or 'imagenet', got {stem!r}")
        if width <= 0:
            raise ValueError(f"resnet width must be positive, got {width}")
        kind, counts = DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        planes = [max(1, round(p * width)) for p in (64, 128, 256, 512)]
        register_normalisation(self, in_channels, mean, std, [0.5], [0.25])
        pad = (1 if stem == "cifar" else 3) if stem_padding is None else stem_padding
        if stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, planes[0], 3, stem_stride, pad, bias=False),
                nn.BatchNorm2d(planes[0]),
                nn.ReLU(inplace=True),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, planes[0], 7, 2, pad, bias=False),
                nn.BatchNorm2d(planes[0]),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        cin = planes[0]
        stages = []
        for i, (p, n) in enumerate(zip(planes, counts, strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, p, 2 if (j == 0 and i > 0) else 1))
                cin = p * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.head = build_head(head, cin) if head else None
        self.feature_dim = head_dim(head, cin)
        self.in_channels = in_channels
        keep = torch.ones(1, cin, 1, 1)
        if pruned:
            if not all(0 <= c < cin for c in pruned):
                raise ValueError(f"resnet pruned channels must lie in [0, {cin}), got {pruned}")
            keep[0, list(pruned), 0, 0] = 0.0
        # Not in the state dict: it follows from the card's ``pruned`` argument.
        self.register_buffer("keep", keep if pruned else None, persistent=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage outputs (B×C_l×H_l×W_l each) for input in [0, 1]."""
        x = self.stem((x - self.mean) / self.std)
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        if self.keep is not None:
            outs[-1] = outs[-1] * self.keep.to(outs[-1].dtype)
        return outs

    def pruning_activity(self, x: torch.Tensor) -> torch.Tensor:
        """B×C: the pooled activations of the last stage's channels, what ``pruned`` masks."""
        return torch.flatten(F.adaptive_avg_pool2d(self.stages(x)[-1], 1), 1)

    def pool(self, last: torch.Tensor) -> torch.Tensor:
        """The global average of the last stage's map (then the head, if any): B×D."""
        pooled = torch.flatten(F.adaptive_avg_pool2d(last, 1), 1)
        return pooled if self.head is None else self.head(pooled)

    def forward_stages(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(the four stage maps, the B×``feature_dim`` features), in one pass."""
        maps = self.stages(x)
        return maps, self.pool(maps[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(x)[-1])


def build_head(spec: list[list], in_dim: int) -> nn.Sequential:
    """The head a spec describes (an ``nn.Sequential``, so layer ``i`` is ``head.i`` as in
    the checkpoint it was read from): ``["linear", in, out, bias]``, ``["bn", dim]``,
    ``["relu"]``."""
    layers: list[nn.Module] = []
    dim = in_dim
    for entry in spec:
        kind = entry[0] if entry else None
        if kind == "linear" and len(entry) == 4:
            if int(entry[1]) != dim:
                raise ValueError(f"resnet head: a linear layer takes {entry[1]}, gets {dim}")
            layers.append(nn.Linear(int(entry[1]), int(entry[2]), bias=bool(entry[3])))
            dim = int(entry[2])
        elif kind == "bn" and len(entry) == 2:
            layers.append(nn.BatchNorm1d(int(entry[1])))
        elif kind == "relu" and len(entry) == 1:
            layers.append(nn.ReLU(inplace=True))
        else:
            raise ValueError(f"resnet head: unknown layer {entry!r}")
    return nn.Sequential(*layers)


def head_dim(spec: list[list] | None, in_dim: int) -> int:
    """The output width of a head spec on ``in_dim`` features (``in_dim`` without one)."""
    linears = [e for e in spec or [] if e and e[0] == "linear"]
    return int(linears[-1][2]) if linears else in_dim
