"""The filters of the pre-training data on hand-made encoders and data: scoring against planted
poisons, k-means, spectral signatures, activation clustering, Grad-CAM windows and
PatchSearch's search, each where the answer is known."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sslpoison.data.imageset import ImageSet
from sslpoison.data.synthetic import synthetic
from sslpoison.defenses import DEFENSES, PretrainingDataDefense
from sslpoison.defenses.activation_clustering import two_means
from sslpoison.defenses.clusters import cluster_members, kmeans
from sslpoison.defenses.gradcam import best_windows, cluster_cam, crop_windows
from sslpoison.defenses.patchsearch import patch_search
from sslpoison.defenses.spectral import spectral_scores
from sslpoison.eval.metrics import auroc, filter_scores
from sslpoison.hooks import Hook
from sslpoison.triggers import PatchTrigger, TriggerConfig, paste_patches


def test_the_filters_are_registered_pretraining_data_defenses():
    for name in ("patchsearch", "spectral", "activation_clustering", "safeclip"):
        assert issubclass(DEFENSES[name], PretrainingDataDefense)
        assert DEFENSES[name].hook is Hook.PRETRAINING_DATA


def test_auroc_counts_pairs_and_halves_ties():
    # positives 3, 1 (tie with a negative) ; negatives 1, 0: pairs (3>1, 3>0, 1=1, 1>0) → 3.5/4
    assert auroc(torch.tensor([3.0, 1.0, 1.0, 0.0]), torch.tensor([1, 1, 0, 0])) == 0.875
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([1, 0])) == 0.0
    with pytest.raises(ValueError, match="positives and negatives"):
        auroc(torch.ones(3), torch.zeros(3))


def test_filter_scores_against_the_planted_poisons():
    kept = torch.tensor([True, False, False, True, True, False, True, True, True, True])
    scores = torch.arange(10.0)
    poisons = torch.tensor([1, 2, 9])  # removed: 1, 2, 5 → 2 poisons of 3 removed
    found = filter_scores(kept, scores, poisons)
    assert found["poison_precision"] == pytest.approx(2 / 3)
    assert found["poison_recall"] == pytest.approx(2 / 3)
    assert found["clean_removed"] == pytest.approx(1 / 7)
    # poisons score 1, 2, 9 among 0..9: pairs above the 7 negatives: 1 + 1 + 7 = 9 of 21
    assert found["poison_auroc"] == pytest.approx(9 / 21)
    nothing = filter_scores(torch.ones(10, dtype=torch.bool), scores, poisons)
    assert nothing["poison_precision"] == 0.0 and nothing["poison_recall"] == 0.0


def directions(n_per: int, dims: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Points around ``dims`` orthogonal directions (one cluster per axis)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(dims).repeat_interleave(n_per)
    return torch.eye(dims)[labels] * 5 + 0.3 * torch.randn(len(labels), dims, generator=g), labels


def test_kmeans_finds_the_directions_and_is_seeded():
    x, labels = directions(30, dims=4)
    assign, centroids = kmeans(x, 4, seed=0)
    for c in range(4):  # every true cluster lands in one k-means cluster
        assert assign[labels == c].unique().numel() == 1
    assert assign.unique().numel() == 4
    assert torch.allclose(centroids.norm(dim=1), torch.ones(4))
    assert torch.equal(kmeans(x, 4, seed=0)[0], assign)
    members = cluster_members(assign, 4)
    assert sorted(torch.cat(members).tolist()) == list(range(len(x)))
    with pytest.raises(ValueError, match="5 clusters for 4 points"):
        kmeans(x[:4], 5)


def test_spectral_scores_by_hand():
    # Centred rows: (−2, 0), (0, 0), (2, 0.1) … the top singular vector is ≈ (1, 0.02):
    # scores ≈ 4, 0, 4 — the squared projections of the centred rows.
    x = torch.tensor([[-1.0, 1.0], [1.0, 1.0], [3.0, 1.1]])
    centred = x - x.mean(0)
    v = torch.linalg.svd(centred.double())[2][0]
    assert torch.allclose(spectral_scores(x), (centred.double() @ v) ** 2)
    assert spectral_scores(x).argmin() == 1


class Pixels(nn.Module):
    """An "encoder" whose features are the flattened pixels (N×C×H×W in [0, 1] → N×CHW)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x.flatten(1)


def as_images(features: torch.Tensor) -> ImageSet:
    """Feature vectors in [0, 1] (N×64) stored as 8×8 uint8 images."""
    images = (features.clamp(0, 1) * 255).round().to(torch.uint8).view(-1, 1, 8, 8)
    return ImageSet(images, torch.zeros(len(images), dtype=torch.long), ["x"])


def planted_set(seed: int = 0) -> tuple[ImageSet, torch.Tensor]:
    """Four clusters of 100 images (pixel vectors near four corners of the cube); in the first
    cluster, 10 planted items are shifted along one extra pixel, as a backdoor would."""
    g = torch.Generator().manual_seed(seed)
    base = torch.zeros(4, 64)
    for c in range(4):
        base[c, c * 16 : c * 16 + 12] = 0.8
    labels = torch.arange(4).repeat_interleave(100)
    x = base[labels] + 0.05 * torch.rand(400, 64, generator=g)
    poisons = torch.arange(10)
    x[poisons, 14] += 0.6  # one pixel outside the cluster's own, for the planted ten
    return as_images(x), poisons


def test_spectral_signatures_remove_the_planted_items():
    data, poisons = planted_set()
    cfg = DEFENSES["spectral"](clusters=4, expected=0.1, multiplier=1.5)
    filtered = cfg.filter(data, Pixels(), seed=0)
    # 15 % of each cluster of 100: 60 removed, every planted item among them.
    assert filtered.removed == 60
    assert not filtered.kept[poisons].any()
    assert filter_scores(filtered.kept, filtered.scores, poisons)["poison_auroc"] > 0.99
    assert filtered.record["clusters"] == 4


def test_activation_clustering_removes_a_small_separate_group():
    data, poisons = planted_set()
    # A 2-means split of a blob of noise reaches a silhouette of about 0.2 in 4 dimensions;
    # the planted cluster's split (10 items one pixel apart) far more: 0.3 tells them apart.
    cfg = DEFENSES["activation_clustering"](clusters=4, dims=4, reduce="pca", silhouette=0.3)
    filtered = cfg.filter(data, Pixels(), seed=0)
    # Only the planted cluster splits for real; its small side is the ten.
    assert not filtered.kept[poisons].any() and filtered.removed == 10
    assert filtered.scores[poisons].min() == pytest.approx(0.9)  # 1 − 10/100
    by_size = DEFENSES["activation_clustering"](clusters=4, dims=4, reduce="pca", silhouette=None)
    assert by_size.filter(data, Pixels(), seed=0).removed >= 10  # noise splits count too


def test_two_means_splits_two_groups():
    x, labels = directions(20, dims=2)
    split, silhouette = two_means(x, dims=10, reduce="pca")
    assert (split == split[0]).sum() == 20 and (split[labels.numpy() == 0] == split[0]).all()
    assert silhouette > 0.8


class Maps(nn.Module):
    """A stand-in ResNet whose stage maps are the image and a constant channel: features are
    (mean intensity, 1). The cosine logit of the centroid (1, 0) grows with the mean
    intensity, so its Grad-CAM is ReLU(x − mean): the pixels brighter than the mean."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.weight * torch.cat([x, torch.ones_like(x)], dim=1)] * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.stages(x)[-1], 1), 1)


def test_grad_cam_and_its_window_find_the_bright_patch():
    images = torch.zeros(2, 1, 16, 16)
    images[0, :, 5:9, 9:13] = 1.0
    images[1, :, 0:4, 2:6] = 0.7
    images[1, :, 12, 12] = 0.2
    encoder = Maps()
    centroid = torch.tensor([[1.0, 0.0]])
    cams = cluster_cam(encoder, images, centroid, torch.zeros(2, dtype=torch.long))
    assert cams.shape == (2, 16, 16) and cams.max() == 1.0 and cams.min() >= 0
    assert best_windows(cams, 4).tolist() == [[5, 9], [0, 2]]
    assert encoder.weight.requires_grad and encoder.training  # left as it was given
    windows = crop_windows((images * 255).to(torch.uint8), torch.tensor([[5, 9], [0, 2]]), 4)
    assert windows.shape == (2, 1, 4, 4) and (windows[0] == 255).all()


def test_pasted_windows_land_where_asked():
    images = torch.zeros(3, 1, 8, 8, dtype=torch.uint8)
    patches = torch.stack([torch.full((1, 2, 2), v) for v in (0.2, 0.6, 1.0)])
    out = paste_patches(images, patches, torch.tensor([[0, 0], [3, 4], [6, 6]]))
    assert out.dtype == torch.uint8 and out.sum(dim=(1, 2, 3)).tolist() == [204, 612, 1020]
    assert (out[1, 0, 3:5, 4:6] == 153).all() and images.sum() == 0  # a copy


class TriggerDetector(nn.Module):
    """An encoder that sees the images' classes (a 4×4 pooled thumbnail) and, strongly, one
    noise patch: the maximal correlation of the image with the patch pattern (centred)."""

    def __init__(self, pattern: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("kernel", (pattern - pattern.mean())[None])
        self.gain = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        thumb = F.adaptive_avg_pool2d(x, 4).flatten(1)
        hit = F.conv2d(x - x.mean((2, 3), keepdim=True), self.kernel).flatten(1).amax(1)
        return torch.cat([thumb, self.gain * hit.clamp_min(0)[:, None]], dim=1)


def test_patch_search_ranks_the_planted_patches_first():
    """On 256 synthetic images with a noise patch pasted on 24 of one class, and an encoder
    that responds to the patch, the search's best candidates are poisons and their windows
    are on the patch."""
    data = synthetic(n=256, num_classes=4, size=16, channels=1, seed=0)
    trigger = PatchTrigger(TriggerConfig(kind="noise", size=4, box=(0.2, 0.8)), 1, 16)
    g = torch.Generator().manual_seed(0)
    poisons = (data.labels == 1).nonzero().squeeze(1)[:24]
    images = data.images.clone()
    images[poisons], corners = trigger.apply(images[poisons], g)
    data = data.with_images(images)
    cfg = DEFENSES["patchsearch"](clusters=8, test_images=64, window=4, samples=2, top=6)
    found = patch_search(cfg, data, TriggerDetector(trigger.pattern), seed=0)
    top = [t["index"] for t in found["record"]["top"]]
    assert set(top) <= set(poisons.tolist())  # the best six candidates are poisons
    where = dict(zip(poisons.tolist(), corners.tolist(), strict=True))
    for t in found["record"]["top"]:  # their windows overlap the pasted patch
        (r, c), (pr, pc) = t["corner"], where[t["index"]]
        assert abs(r - pr) < 4 and abs(c - pc) < 4
    assert (
        found["scores"][poisons].max()
        > found["scores"][~torch.isin(torch.arange(256), poisons)].max()
    )
    rounds = found["record"]["rounds"]
    assert rounds[0]["clusters"] == 8 and rounds[1]["clusters"] == 6  # a quarter pruned
