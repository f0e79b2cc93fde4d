"""SafeCLIP (Yang, Gao, Mirzasoleiman, ICML 2024): pre-train CLIP so that poisoned pairs never
get the cross-modal loss — a training procedure, not a one-shot filter.

What the paper's abstract and method section state, which this follows: (1) a warm-up with
unimodal contrastive learning only — image against image, caption against caption — so that a
poisoned image and its caption are not pulled together; (2) CLIP's loss on every pair for a
short while at a low learning rate; (3) then, every epoch, a two-component Gaussian mixture on
the image–caption cosine similarities of all pairs under the current model splits the data:
pairs of the high component are *safe* and get the CLIP loss, the others (*risky*) only the
unimodal losses; the safe share grows over the epochs.

Ours (the paper's exact schedule was not available to us): ``warmup_epochs`` and
``align_epochs`` (at ``align_lr`` × the recipe's rate) as given; the safe set of split epoch e
is the GMM's high component, capped at the pairs with the highest cosines making up a share
growing linearly from ``share[0]`` to ``share[1]`` over the ``epochs`` split epochs. The
unimodal losses are NT-Xent (τ ``temperature``) between two random resized crops of an image
and between two copies of a caption with ``text_mask`` of its words replaced by ``<unk>``,
in CLIP's joint embedding space. The architecture, tokenizer, views and optimizer are the
experiment's pre-training recipe; every phase trains through the one engine.

What it hands back (:class:`~sslpoison.poisoning.Filtered`): the trained model, the pairs of
its last safe set as ``kept``, and −cosine of the last split as each pair's score.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from sslpoison.data.augment import ViewSpec, to_float, view_pipeline
from sslpoison.data.imageset import ImageSet
from sslpoison.defenses.base import FilterContext, PretrainingDataDefense
from sslpoison.hooks import CheckContext
from sslpoison.poisoning import Filtered
from sslpoison.ssl.clip import CLIP, clip_loss
from sslpoison.ssl.pretrain import build_clip, clip_views
from sslpoison.ssl.simclr import nt_xent
from sslpoison.train import dist
from sslpoison.train.engine import FitResult, TensorBatches, fit

log = logging.getLogger(__name__)


@torch.no_grad()
def pair_cosines(
    model: CLIP, images: torch.Tensor, ids: torch.Tensor, batch_size: int = 1024
) -> torch.Tensor:
    """Cosine similarity of each image (uint8 N×C×H×W) with its own caption (ids N×L) under
    ``model`` (eval mode for the call): N floats on the CPU."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for x, t in zip(images.split(batch_size), ids.split(batch_size), strict=True):
            out.append((model.encode_image(to_float(x)) * model.encode_text(t)).sum(1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def safe_split(
    cosines: torch.Tensor, share: float, seed: int = 0
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The safe pairs of one epoch: the high-mean component of a two-component Gaussian mixture
    fitted to the N ``cosines`` (posterior > 0.5), capped at the ``share`` of all pairs with
    the highest cosines. Returns (N bool, the mixture's means and weights, the count)."""
    from sklearn.mixture import GaussianMixture

    x = cosines.double().numpy().reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, random_state=seed).fit(x)
    high = int(gmm.means_[:, 0].argmax())
    likely = torch.from_numpy(gmm.predict_proba(x)[:, high] > 0.5)
    cap = round(share * len(cosines))
    top = torch.zeros_like(likely)
    top[cosines.argsort(descending=True)[:cap]] = True
    safe = likely & top
    facts = {
        "means": [round(float(m), 4) for m in gmm.means_[:, 0]],
        "weights": [round(float(w), 4) for w in gmm.weights_],
        "high_component": int(likely.sum()),
        "safe": int(safe.sum()),
    }
    return safe, facts


class SafeCLIPTask(nn.Module):
    """Engine task: (uint8 images B×C×H×W, token ids B×L, safe B bool) → CLIP's loss on the
    safe pairs (after CLIP's views) and the unimodal NT-Xent losses on the risky ones, each
    weighted by its share of the batch."""

    def __init__(
        self,
        model: CLIP,
        clip_view: nn.Module | None,
        image_view: nn.Module | None,
        temperature: float,
        text_mask: float,
        unk_id: int,
    ) -> None:
        super().__init__()
        self.model = model
        self.clip_view = clip_view
        self.image_view = image_view
        self.temperature = temperature
        self.text_mask = text_mask
        self.unk_id = unk_id

    def masked(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` with ``text_mask`` of the word tokens (ids > 3) replaced by ``<unk>``."""
        hit = (torch.rand(ids.shape, device=ids.device) < self.text_mask) & (ids > 3)
        return torch.where(hit, torch.full_like(ids, self.unk_id), ids)

    def forward(self, images: torch.Tensor, ids: torch.Tensor, safe: torch.Tensor) -> torch.Tensor:
        x = to_float(images)
        safe = safe.bool()
        b, loss = x.shape[0], x.new_zeros(())
        if safe.any():
            xs = x[safe] if self.clip_view is None else self.clip_view(x[safe])
            pair = clip_loss(
                self.model.encode_image(xs), self.model.encode_text(ids[safe]), self.model.scale()
            )
            loss = loss + pair * int(safe.sum()) / b
        risky = ~safe
        if self.image_view is not None and int(risky.sum()) >= 2:
            xr, tr = x[risky], ids[risky]
            z = self.model.encode_image(torch.cat([self.image_view(xr), self.image_view(xr)]))
            t = self.model.encode_text(torch.cat([self.masked(tr), self.masked(tr)]))
            n = xr.shape[0]
            uni = nt_xent(z[:n], z[n:], self.temperature) + nt_xent(t[:n], t[n:], self.temperature)
            loss = loss + uni / 2 * n / b
        return loss


class _SplitBatches(TensorBatches):
    """Batches of (images, ids, safe) whose ``safe`` flags are set at the start of every epoch
    by ``resplit(epoch)`` (the model as it is then), so a resumed run splits alike."""

    def __init__(self, *tensors: torch.Tensor, resplit: Any, **kw: Any) -> None:
        super().__init__(*tensors, **kw)
        self.resplit = resplit

    def epoch(self, epoch: int):
        self.tensors[2].copy_(self.resplit(epoch))
        yield from super().epoch(epoch)


class SafeCLIPConfig(PretrainingDataDefense):
    """The ``defenses:`` entry for SafeCLIP (see the module doc): ``warmup_epochs`` of
    unimodal losses, ``align_epochs`` of CLIP's loss on every pair at ``align_lr`` × the
    recipe's rate, then ``epochs`` (default: the recipe's) of the safe/risky split with the
    safe share growing from ``share[0]`` to ``share[1]``. ``unimodal``: the risky pairs get
    the unimodal losses (False: they are left out)."""

    name: Literal["safeclip"] = "safeclip"
    title: ClassVar[str] = "SafeCLIP (Yang et al.)"
    warmup_epochs: NonNegativeInt = 1
    align_epochs: NonNegativeInt = 1
    align_lr: PositiveFloat = 0.1
    epochs: PositiveInt | None = None
    share: tuple[float, float] = (0.5, 0.9)
    unimodal: bool = True
    temperature: PositiveFloat = 0.2
    text_mask: float = Field(0.15, ge=0.0, lt=1.0)
    crop_scale: tuple[float, float] = (0.3, 1.0)

    @model_validator(mode="after")
    def _shares(self) -> SafeCLIPConfig:
        lo, hi = self.share
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"share: need 0 < start ≤ end ≤ 1, got {self.share}")
        return self

    def check(self, context: CheckContext) -> None:
        super().check(context)
        if not context.image_text:
            raise ValueError(
                f"defenses: {self.name} trains CLIP on image–caption pairs; set "
                f"pretrain.method to clip (got {context.method!r})"
            )

    def filter(
        self,
        data: ImageSet,
        suspect: nn.Module,
        seed: int = 0,
        *,
        context: FilterContext | None = None,
    ) -> Filtered:
        """Train a CLIP model the SafeCLIP way on ``data``'s pairs with ``context.recipe``
        (the ``suspect`` is not used: SafeCLIP judges pairs with the model it trains)."""
        if context is None:
            raise ValueError(f"{self.name}: trains its own model; it needs the recipe (context)")
        if dist.is_distributed():
            raise ValueError(f"{self.name}: runs in one process (no torchrun)")
        recipe, device = context.recipe, torch.device(context.device)
        model, tokenizer = build_clip(data, recipe, seed)
        model = model.to(device)
        ids = tokenizer.encode(data.captions).to(device)
        images = data.images.to(device)
        spec = ViewSpec(crop_scale=self.crop_scale, flip_p=0.5, jitter=0.0, grayscale_p=0.0)
        image_view = view_pipeline(spec, data.image_size, data.channels)
        task = SafeCLIPTask(
            model, clip_views(data, recipe), image_view, self.temperature, self.text_mask,
            tokenizer.unk_id,
        ).to(device)  # fmt: skip
        if not self.unimodal:
            task.image_view = None
        n = len(data)
        safe = torch.zeros(n, dtype=torch.bool, device=device)
        epochs = self.epochs or recipe.train.epochs
        last: dict[str, Any] = {}
        splits: list[dict[str, Any]] = []

        def resplit(epoch: int) -> torch.Tensor:
            cos = pair_cosines(model, images, ids)
            growth = epoch / max(1, epochs - 1)
            share = self.share[0] + (self.share[1] - self.share[0]) * growth
            flags, facts = safe_split(cos, share, seed)
            splits.append({"epoch": epoch + 1, "share": round(share, 4), **facts})
            log.info("safeclip epoch %d: %d safe pairs of %d", epoch + 1, facts["safe"], n)
            last.update(cosines=cos, safe=flags)
            return flags.to(device)

        phases = [
            ("warmup", self.warmup_epochs, False, 1.0, None),
            ("align", self.align_epochs, True, self.align_lr, None),
            ("split", epochs, None, 1.0, resplit),
        ]
        results: dict[str, FitResult] = {}
        for phase, count, flag, lr, split in phases:
            if count == 0:
                continue
            if flag is not None:
                safe.fill_(flag)
            if phase == "warmup" and not self.unimodal:
                continue
            train = recipe.train.model_copy(update={
                "epochs": count,
                "optimizer": recipe.train.optimizer.model_copy(
                    update={"lr": recipe.train.optimizer.lr * lr}
                ),
            })  # fmt: skip
            kw = {"batch_size": train.batch_size, "drop_last": train.drop_last, "seed": seed}
            batches = (
                TensorBatches(images, ids, safe, **kw)
                if split is None
                else _SplitBatches(images, ids, safe, resplit=split, **kw)
            )
            folder = None if context.checkpoint_dir is None else context.checkpoint_dir / phase
            results[phase] = fit(
                task, batches, train, seed=seed, checkpoint_dir=folder, desc=f"safeclip {phase}"
            )
        model.eval()
        cosines = last.get("cosines")
        if cosines is None:
            cosines = pair_cosines(model, images, ids)
            last["safe"] = torch.ones(n, dtype=torch.bool)
        record = {
            "splits": splits,
            "phase_losses": {phase: r.losses for phase, r in results.items()},
            "phase_seconds": {phase: round(r.seconds, 3) for phase, r in results.items()},
        }
        fit_all = FitResult(
            losses=[x for r in results.values() for x in r.losses],
            seconds=sum(r.seconds for r in results.values()),
            samples_per_s=0.0,
            precision=next(iter(results.values())).precision if results else "fp32",
        )
        return Filtered(last["safe"].cpu(), -cosines, record, (model, tokenizer), fit_all)


__all__ = ["SafeCLIPConfig", "SafeCLIPTask", "pair_cosines", "safe_split"]
