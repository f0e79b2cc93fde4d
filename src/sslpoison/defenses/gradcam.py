"""Grad-CAM (Selvaraju et al., ICCV 2017) of a cosine classifier over an encoder's features,
and the square window of highest activation: how PatchSearch finds the candidate trigger in
an image (Tejankar et al., CVPR 2023, Sec. 3).

With a ResNet (``stages()``), the map of one stage is weighted channel by channel by the mean
gradient of the chosen logit and summed, ReLU'd, and upsampled to the image; an encoder
without stages gets the gradient × input saliency on the pixels instead.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslpoison.utils import frozen


def cluster_cam(
    encoder: nn.Module,
    images: torch.Tensor,
    centroids: torch.Tensor,
    clusters: torch.Tensor,
    stage: int = 4,
) -> torch.Tensor:
    """Grad-CAM of logit ``clusters[i]`` of the cosine classifier ``centroids`` (K×D unit
    rows) on ``encoder``'s features of ``images[i]``.

    Args:
        encoder: the suspect encoder (left as it was given).
        images: B×C×H×W float in [0, 1].
        centroids: K×D.
        clusters: B cluster indices (whose logit is explained).
        stage: the ResNet stage (1–4) whose map is weighted (PatchSearch: the last).

    Returns: B×H×W maps in [0, 1] (each scaled by its maximum; zeros where it is zero).
    """
    with frozen(encoder), torch.enable_grad():
        x = images.detach().clone().requires_grad_(True)  # the graph, through frozen weights
        stages = getattr(encoder, "stages", None)
        if callable(stages):
            maps = stages(x)
            feature = torch.flatten(F.adaptive_avg_pool2d(maps[-1], 1), 1)
            where = maps[stage - 1]
        else:
            feature, where = encoder(x), x
        logits = F.normalize(feature.float(), dim=1) @ centroids.to(feature).float().t()
        chosen = logits.gather(1, clusters.to(logits.device)[:, None]).sum()
        (grad,) = torch.autograd.grad(chosen, where)
    with torch.no_grad():
        if where is x:
            cam = (grad * x).abs().sum(1)
        else:
            cam = F.relu((grad.mean((2, 3), keepdim=True) * where).sum(1))
            cam = F.interpolate(cam[:, None], size=images.shape[-2:], mode="bilinear")[:, 0]
        peak = cam.flatten(1).amax(1).clamp_min(1e-12)
        return (cam / peak[:, None, None]).detach()


def best_windows(cams: torch.Tensor, side: int) -> torch.Tensor:
    """Top-left corners (B×2) of the ``side``×``side`` window holding the largest sum of each
    map of ``cams`` (B×H×W); the first such window in row order on ties."""
    sums = F.avg_pool2d(cams[:, None].float(), side, stride=1)[:, 0]  # B×(H−s+1)×(W−s+1)
    flat = sums.flatten(1).argmax(1)
    width = sums.shape[-1]
    return torch.stack([flat // width, flat % width], dim=1)


def crop_windows(images: torch.Tensor, corners: torch.Tensor, side: int) -> torch.Tensor:
    """The ``side``×``side`` windows of ``images`` (B×C×H×W) at ``corners`` (B×2):
    B×C×side×side, same dtype."""
    offs = torch.arange(side, device=images.device)
    corners = corners.to(images.device)
    rows = (corners[:, 0, None] + offs)[:, None, :, None]  # B×1×s×1
    cols = (corners[:, 1, None] + offs)[:, None, None, :]  # B×1×1×s
    b, c = images.shape[:2]
    bi = torch.arange(b, device=images.device)[:, None, None, None]
    ci = torch.arange(c, device=images.device)[None, :, None, None]
    return images[bi, ci, rows, cols]


__all__ = ["best_windows", "cluster_cam", "crop_windows"]
