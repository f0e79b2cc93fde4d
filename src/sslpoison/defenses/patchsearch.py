"""PatchSearch (Tejankar, Sanjabi, Wang, Wang, Pirsiavash, Tian, Pirsiavash, CVPR 2023): find
the trigger patch in the pre-training set with the poisoned model itself, score every image by
it, remove the poisons, pre-train again.

Facts from the paper and its public code (``UCDvision/PatchSearch``; ours is written from
them, not copied):

1. **Clusters.** The suspect encoder's L2-normalised features of the whole set are clustered
   by k-means; the centroids act as a cosine classifier over the encoder (a logit per
   cluster).
2. **Candidates.** In each round a few images (``samples``, paper 2) are drawn from every
   surviving cluster; Grad-CAM of each image's own cluster logit (the last ResNet stage) gives
   a heat map, and the ``window`` (paper 60 px of 224) with the largest summed heat is the
   image's candidate trigger (:mod:`sslpoison.defenses.gradcam`).
3. **Poison score** of a candidate: the candidate is pasted at random places onto
   ``test_images`` held-out images (paper 1 000: those nearest each centroid), and the score
   is how many of them then fall into the candidate's cluster, minus how many were there
   already ("flips").
4. **Pruning.** A cluster's score is the best score among its candidates so far; each round
   the least poisonous ``prune`` share (paper 0.25) of the surviving clusters is dropped, until
   fewer than 1/``prune`` clusters would survive (so none can be pruned: the search stops).
5. **Poison classifier.** The windows of the ``top`` candidates (paper 20) are pasted — at a
   random size (paper 20–80 px of 224) and place — onto half of the images of the set except
   the most suspicious ``exclude_top`` share (paper 10 %), and an ensemble of small ResNets
   (paper 5 ResNets with one block per stage, 2 000 SGD steps of 32 images, lr 0.01, cosine)
   learns to tell pasted from plain images (after a random resized crop, scale 0.2–1, and a
   flip). Its mean poison probability scores every image of the set; an image is removed when
   it exceeds ``threshold`` (paper: the ensemble's arg-max).

The paper pre-trains again on the kept set with i-CutMix; here the pipeline pre-trains again
with the experiment's own recipe (no i-CutMix). The scaled CPU parameters are in
``configs/cpu-filtering-sslbackdoor-fmnist.yaml`` and ``docs/defenses.md`` beside the paper's.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, PositiveInt, model_validator

from sslpoison.configbase import Config, CountOrShare
from sslpoison.data.augment import ViewSpec, to_float, view_pipeline
from sslpoison.data.imageset import ImageSet
from sslpoison.data.pictures import save_rows
from sslpoison.defenses.base import FilterContext, PretrainingDataDefense
from sslpoison.defenses.clusters import cluster_members, kmeans, suspect_features
from sslpoison.defenses.gradcam import best_windows, cluster_cam, crop_windows
from sslpoison.eval.evaluate import Outcome
from sslpoison.eval.features import extract_features
from sslpoison.hooks import Measured
from sslpoison.models.backbone import BackboneConfig, build_encoder
from sslpoison.poisoning import Filtered
from sslpoison.train.engine import TensorBatches, TrainConfig, fit
from sslpoison.train.optim import OptimConfig
from sslpoison.triggers import paste_patches
from sslpoison.utils import module_device, seeded

log = logging.getLogger(__name__)


def _classifier_training() -> TrainConfig:
    # SGD lr 0.01, momentum 0.9, weight decay 1e-4, cosine, batch 32 (their poison classifier).
    return TrainConfig(
        epochs=1,
        batch_size=32,
        optimizer=OptimConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4),
    )


class PoisonClassifierConfig(Config):
    """PatchSearch's poison classifier (``defenses.N.classifier``).

    ``models``: the ensemble's size (paper 5). ``backbone``: each member's trunk (paper: a
    ResNet with one basic block per stage, our ``resnet10``). ``steps``: SGD steps per member
    (paper 2 000) of ``train.batch_size`` images (paper 32), drawn without replacement while
    the pool lasts; ``train.epochs`` repeats them. ``paste_size``: the pasted window's side,
    a range of shares of the image side (paper 20–80 px of 224); ``margin``: kept free at the
    border (paper 10 px of 224). ``crop_scale``: the random resized crop before pasting.
    ``threshold``: the mean poison probability above which an image is removed.
    """

    models: PositiveInt = 5
    backbone: BackboneConfig = Field(default_factory=lambda: BackboneConfig(arch="resnet10"))
    steps: PositiveInt = 2000
    paste_size: tuple[float, float] = (20 / 224, 80 / 224)
    margin: float = Field(10 / 224, ge=0.0, lt=0.5)
    crop_scale: tuple[float, float] = (0.2, 1.0)
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    train: TrainConfig = Field(default_factory=_classifier_training)

    @model_validator(mode="after")
    def _ranges(self) -> PoisonClassifierConfig:
        lo, hi = self.paste_size
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"paste_size: need 0 < low ≤ high ≤ 1, got {self.paste_size}")
        return self


class PatchSearchConfig(PretrainingDataDefense):
    """The ``defenses:`` entry for PatchSearch (see the module doc for each step).

    ``clusters`` (paper 1 000 on ImageNet-100's 126 689 images), ``test_images`` (paper
    1 000), ``window`` (px or share of the image side; paper 60 of 224), ``samples`` per
    cluster and round (paper 2), ``prune`` (paper 0.25), ``cam_stage`` (the ResNet stage
    Grad-CAM reads; paper the last), ``top`` candidates for the classifier (paper 20),
    ``exclude_top`` (paper 0.1), ``classifier`` (:class:`PoisonClassifierConfig`).
    """

    name: Literal["patchsearch"] = "patchsearch"
    title: ClassVar[str] = "PatchSearch (Tejankar et al.)"
    clusters: PositiveInt = 1000
    test_images: PositiveInt = 1000
    window: CountOrShare = 60 / 224
    samples: PositiveInt = 2
    prune: float = Field(0.25, gt=0.0, lt=1.0)
    cam_stage: int = Field(4, ge=1, le=4)
    top: PositiveInt = 20
    exclude_top: float = Field(0.1, ge=0.0, lt=1.0)
    batch_size: PositiveInt = 256
    classifier: PoisonClassifierConfig = Field(default_factory=PoisonClassifierConfig)

    def window_side(self, image_size: int) -> int:
        """``window`` in pixels for ``image_size``-px images."""
        side = self.window if isinstance(self.window, int) else round(self.window * image_size)
        return max(1, min(side, image_size))

    def filter(
        self,
        data: ImageSet,
        suspect: nn.Module,
        seed: int = 0,
        *,
        context: FilterContext | None = None,
    ) -> Filtered:
        search = patch_search(self, data, suspect, seed)
        scores, facts = poison_classifier(
            self.classifier, data, search, seed, self.exclude_top, module_device(suspect)
        )
        kept = scores <= self.classifier.threshold
        log.info("patchsearch: %d of %d images flagged", int((~kept).sum()), len(data))
        return Filtered(kept, scores, {**search["record"], **facts})

    def measure(self, outcome: Outcome) -> Measured:
        """The base's scores, and ``patchsearch-top.png``: the top candidates' images (top
        row) and the windows PatchSearch took from them as the trigger (below, enlarged)."""
        measured = super().measure(outcome)
        filtered = outcome.filtered.get(self.name)
        top = (filtered.record.get("top") or []) if filtered is not None else []
        if top:
            data = outcome.poisoned.data if outcome.poisoned is not None else outcome.data
            measured.writers[f"patchsearch_top:{self.name}"] = lambda folder: _top_picture(
                data, top, folder / f"{self.name}-top.png"
            )
        return measured


def _top_picture(data: ImageSet, top: list[dict[str, Any]], path: Path) -> Path:
    shown = top[:16]
    index = torch.tensor([t["index"] for t in shown])
    images = data.images[index.to(data.device)].cpu()
    side = shown[0]["side"]
    corners = torch.tensor([t["corner"] for t in shown])
    windows = crop_windows(images, corners, side).float()
    enlarged = F.interpolate(windows, size=images.shape[-2:], mode="nearest")
    return save_rows([images, enlarged.round().to(torch.uint8)], path)


def _test_images(
    members: list[torch.Tensor], similarity: torch.Tensor, count: int, g: torch.Generator
) -> torch.Tensor:
    """The held-out images candidates are pasted on: the ``count // K`` members nearest each
    of the K centroids, or (``count`` < K) the nearest member of ``count`` random clusters."""
    per = count // len(members)
    chosen = []
    if per > 0:
        for m in members:
            chosen.append(m[similarity[m].argsort(descending=True)[:per]])
    else:
        for c in torch.randperm(len(members), generator=g).tolist():
            m = members[c]
            if m.numel():
                chosen.append(m[similarity[m].argmax()][None])
            if len(chosen) == count:
                break
    return torch.cat(chosen)


@torch.no_grad()
def _flips(
    suspect: nn.Module,
    test: torch.Tensor,
    windows: torch.Tensor,
    clusters: torch.Tensor,
    centroids: torch.Tensor,
    before: torch.Tensor,
    g: torch.Generator,
    batch_size: int,
    images_per_pass: int = 2048,
) -> torch.Tensor:
    """For each of P candidate ``windows`` (P×C×s×s uint8) of ``clusters`` (P): how many of
    the T ``test`` images (T×C×H×W uint8) fall into that cluster once the window is pasted at
    a random place, minus how many of them were in it (``before``: their clusters, T)."""
    p, t = windows.shape[0], test.shape[0]
    side, size = windows.shape[-1], test.shape[-1]
    device = module_device(suspect)
    scores = torch.zeros(p)
    per = max(1, images_per_pass // max(1, t))
    for start in range(0, p, per):
        stop = min(p, start + per)
        k = stop - start
        corners = torch.randint(0, size - side + 1, (k * t, 2), generator=g)
        patches = to_float(windows[start:stop]).repeat_interleave(t, 0)
        pasted = paste_patches(test.repeat(k, 1, 1, 1), patches, corners)
        feats = extract_features(suspect, pasted, batch_size=batch_size, device=device)
        landed = (F.normalize(feats.cpu(), dim=1) @ centroids.t()).argmax(1).view(k, t)
        target = clusters[start:stop, None]
        scores[start:stop] = ((landed == target).sum(1) - (before[None] == target).sum(1)).float()
    return scores


def patch_search(
    cfg: PatchSearchConfig, data: ImageSet, suspect: nn.Module, seed: int = 0
) -> dict[str, Any]:
    """Steps 1–4 of the module doc: the poison score of every image (N; 0 for images never
    sampled), each sampled image's candidate window (``corners`` N×2, −1 where none), the
    window side, and a record of the search."""
    n, size = len(data), data.image_size
    side = cfg.window_side(size)
    g = torch.Generator().manual_seed(seed)
    features = F.normalize(suspect_features(suspect, data), dim=1)
    k = min(cfg.clusters, n)
    assign, centroids = kmeans(features, k, seed)
    assign, centroids = assign.cpu(), centroids.cpu()
    members = cluster_members(assign, k)
    similarity = (features * centroids[assign]).sum(1)
    test_index = _test_images(members, similarity, cfg.test_images, g)
    test = data.images[test_index.to(data.device)].cpu()
    test_before = assign[test_index]
    queues = [m[torch.randperm(m.numel(), generator=g)].tolist() for m in members]
    scores = torch.zeros(n)
    corners = torch.full((n, 2), -1, dtype=torch.long)
    surviving = [c for c in range(k) if queues[c]]
    rounds: list[dict[str, Any]] = []
    device = module_device(suspect)
    while surviving:
        picked = [queues[c].pop(0) for c in surviving for _ in range(cfg.samples) if queues[c]]
        if not picked:
            break
        index = torch.tensor(picked)
        for chunk in index.split(cfg.batch_size):
            images = data.images[chunk.to(data.device)]
            cams = cluster_cam(
                suspect, to_float(images.to(device)), centroids.to(device), assign[chunk],
                cfg.cam_stage,
            ).cpu()  # fmt: skip
            corners[chunk] = best_windows(cams, side)
            windows = crop_windows(images.cpu(), corners[chunk], side)
            scores[chunk] = _flips(
                suspect, test, windows, assign[chunk], centroids, test_before, g, cfg.batch_size
            )
        best = {c: float(scores[members[c]].max()) for c in surviving}
        rounds.append({"clusters": len(surviving), "candidates": len(picked),
                       "best": max(best.values())})  # fmt: skip
        log.info(
            "patchsearch round %d: %d clusters, %d candidates, best poison score %.0f",
            len(rounds), len(surviving), len(picked), max(best.values()),
        )  # fmt: skip
        drop = int(cfg.prune * len(surviving))
        if drop == 0:
            break
        surviving = sorted(surviving, key=lambda c: best[c], reverse=True)[:-drop]
    order = scores.argsort(descending=True, stable=True)
    top = [
        {"index": int(i), "score": float(scores[i]), "cluster": int(assign[i]),
         "corner": corners[i].tolist(), "side": side}
        for i in order[: cfg.top].tolist() if corners[i, 0] >= 0
    ]  # fmt: skip
    record = {
        "clusters": k,
        "test_images": int(test_index.numel()),
        "window": side,
        "rounds": rounds,
        "candidates": sum(r["candidates"] for r in rounds),
        "top": top,
    }
    return {"scores": scores, "corners": corners, "side": side, "record": record}


class _PoisonTask(nn.Module):
    """Engine task of one member of the poison classifier: a batch of uint8 images → crop and
    flip → the top windows pasted (random size, place) onto a random half → cross-entropy of
    pasted (1) against plain (0). Randomness from the global RNG (seeded by the engine)."""

    def __init__(self, model: nn.Module, windows: torch.Tensor, cfg: PoisonClassifierConfig,
                 size: int, channels: int) -> None:  # fmt: skip
        super().__init__()
        self.model = model
        self.register_buffer("windows", to_float(windows))
        spec = ViewSpec(crop_scale=cfg.crop_scale, flip_p=0.5, jitter=0.0, grayscale_p=0.0)
        self.views = view_pipeline(spec, size, channels)
        self.size = size
        self.sizes = (max(1, round(cfg.paste_size[0] * size)), round(cfg.paste_size[1] * size))
        self.margin = round(cfg.margin * size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.views(to_float(images))
        b = x.shape[0]
        label = torch.rand(b, device=x.device) < 0.5
        lo, hi = self.sizes
        hi = max(lo, min(hi, self.size - 2 * self.margin))
        sides = torch.randint(lo, hi + 1, (b,))
        which = torch.randint(self.windows.shape[0], (b,))
        for s in sides[label.cpu()].unique().tolist():
            rows = (label.cpu() & (sides == s)).nonzero().squeeze(1)
            patches = F.interpolate(self.windows[which[rows]], size=(s, s), mode="bilinear")
            top = max(self.margin, self.size - s - self.margin)
            place = torch.randint(self.margin, top + 1, (rows.numel(), 2))
            x[rows.to(x.device)] = paste_patches(x[rows.to(x.device)], patches.clamp(0, 1), place)
        return F.cross_entropy(self.model(x), label.long())


def poison_classifier(
    cfg: PoisonClassifierConfig,
    data: ImageSet,
    search: dict[str, Any],
    seed: int,
    exclude_top: float,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Step 5 of the module doc: the ensemble's mean poison probability of every image (N)
    and a record (the members' final losses, how they score the top candidates and the least
    suspicious images)."""
    top = search["record"]["top"]
    if not top:
        raise ValueError("patchsearch: no candidate window was found (no image was sampled)")
    n, side = len(data), search["side"]
    index = torch.tensor([t["index"] for t in top])
    windows = crop_windows(data.images[index.to(data.device)].cpu(), search["corners"][index], side)
    order = search["scores"].argsort(descending=True, stable=True)
    pool = order[int(exclude_top * n) :]
    pool = pool[: max(0, pool.numel() - len(top))]  # the least suspicious: validation
    bottom = order[-len(top) :]
    wanted = cfg.steps * cfg.train.batch_size
    g = torch.Generator().manual_seed(seed)
    probabilities = torch.zeros(n)
    facts: dict[str, Any] = {"classifier_pool": int(pool.numel()), "members": []}
    for member in range(cfg.models):
        draw = pool[torch.randperm(pool.numel(), generator=g)]
        draw = draw.repeat(math.ceil(wanted / max(1, draw.numel())))[:wanted]
        with seeded(seed + 7919 * (member + 1)):
            backbone = build_encoder(cfg.backbone, data.channels)
            model = nn.Sequential(backbone, nn.Linear(int(backbone.feature_dim), 2)).to(device)
            task = _PoisonTask(model, windows, cfg, data.image_size, data.channels).to(device)
        batches = TensorBatches(
            data.images[draw.to(data.device)].to(device),
            batch_size=cfg.train.batch_size, seed=seed + member,
        )  # fmt: skip
        result = fit(task, batches, cfg.train, seed=seed + member,
                     desc=f"patchsearch classifier {member + 1}/{cfg.models}")  # fmt: skip
        model.eval()
        p = _poison_probability(model, data.images, device)
        probabilities += p / cfg.models
        facts["members"].append({
            "loss": result.losses[-1], "top_flagged": float((p[index] > 0.5).float().mean()),
            "bottom_flagged": float((p[bottom] > 0.5).float().mean()),
        })  # fmt: skip
    return probabilities, facts


@torch.no_grad()
def _poison_probability(model: nn.Module, images: torch.Tensor, device: torch.device,
                        batch_size: int = 1024) -> torch.Tensor:  # fmt: skip
    out = [
        F.softmax(model(to_float(chunk.to(device))).float(), dim=1)[:, 1].cpu()
        for chunk in images.split(batch_size)
    ]
    return torch.cat(out)


__all__ = ["PatchSearchConfig", "PoisonClassifierConfig", "patch_search", "poison_classifier"]
