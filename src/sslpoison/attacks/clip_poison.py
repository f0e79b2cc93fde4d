"""Poisoning and backdooring contrastive image–text pre-training (Carlini & Terzis, ICLR 2022).

Both attacks edit the image–caption pairs a CLIP model pre-trains on; the model then
pre-trains on them as usual (:mod:`sslpoison.ssl.clip`).

* ``clip_backdoor``: ``poison`` pairs (a count, or a share of the set) whose images are not
  of the target class (any image, when the pre-training pairs are unlabelled) get the patch
  and a caption naming the target class (a seeded caption template). The set keeps its
  size; the poisoned positions and patch corners are recorded. Zero-shot classification
  of a patched test image should then return the target.
* ``clip_targeted``: for each of ``trials`` (test image x′, adversarial label y′), ``pairs``
  copies of x′ captioned with y′ are appended to the set. x′ comes from the test split of the
  evaluation dataset (never trained on), y′ is a class other than x′'s own (both seeded, or
  given). All trials poison one pre-training together — 10 trials of 3 pairs are 30 of
  60 000 pairs — so each trial is its own (image, label) draw, not its own training run.

What matters is the number of poisons more than the rate (Carlini & Terzis, Sec. 4).

Both are measured on a labelled ``dataset`` (default: the pre-training dataset; for pairs
without labels, such as Conceptual Captions, e.g. ``cifar10``): the target class and the
adversarial labels are its classes, and captions name them by its class names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from pydantic import Field, PositiveInt, model_validator

from sslpoison.attacks.base import Measured, Outcome, PretrainingDataAttack
from sslpoison.attacks.patching import patch_subset, target_index
from sslpoison.configbase import CountOrShare
from sslpoison.data.captions import TEMPLATES
from sslpoison.data.imageset import ImageSet
from sslpoison.data.shards import WEBDATASET, PairStream
from sslpoison.eval.downstream import Downstream
from sslpoison.eval.metrics import poison_rates
from sslpoison.eval.rows import Headline, Metric
from sslpoison.eval.zero_shot import TARGETED_SUCCESS, ZS_ACC, ZS_ASR, evaluate_targeted
from sslpoison.hooks import CheckContext
from sslpoison.poisoning import BackdoorTarget, PoisonedSet, TargetedTrial
from sslpoison.triggers import PatchTrigger, TriggerConfig


def _carlini_trigger() -> TriggerConfig:
    # 16 px of 224 in the paper, anywhere in the image.
    return TriggerConfig(kind="noise", size=0.07, box=(0.0, 1.0))


class CLIPPoisoning(PretrainingDataAttack):
    """What both CLIP attacks share: they need image–caption pre-training, and they are
    measured on ``dataset`` (a key of each subclass), by default the pre-training dataset."""

    def measured_on(self, pretraining: str) -> str:
        return self.dataset or pretraining

    def measured_split(self, data: ImageSet, downstream: Downstream) -> ImageSet:
        """The whole test split of the dataset the attack is measured on, fitted to ``data``
        (whose ``name`` is the pre-training dataset's)."""
        return downstream.split(self.measured_on(data.name), "test")

    def check(self, context: CheckContext) -> None:
        if context.pretraining == WEBDATASET and self.dataset is None:
            raise ValueError(
                f"attack.dataset: the pairs of data.dataset {WEBDATASET} have no classes; "
                f"name the labelled dataset {self.name} is measured on (e.g. cifar10)"
            )
        super().check(context)
        if not context.image_text:
            raise ValueError(
                f"pretrain.method: {self.name} poisons image–caption pre-training; "
                f"set pretrain.method to clip (got {context.method!r})"
            )


class CLIPBackdoorConfig(CLIPPoisoning):
    """The ``attack:`` section for the CLIP backdoor: ``poison`` pairs (count or share of
    the pre-training set) get ``trigger`` and a caption naming ``target_class``; the test
    images get the same patch, placed inside ``trigger.box`` (or at ``trigger.position``)."""

    name: Literal["clip_backdoor"] = "clip_backdoor"
    target_class: int | str
    poison: CountOrShare = 300
    trigger: TriggerConfig = Field(default_factory=_carlini_trigger)
    dataset: str | None = None  # measured on (its classes); default: the pre-training dataset

    title: ClassVar[str] = "CLIP backdoor"
    headline: ClassVar[Headline | None] = Headline(ZS_ACC, ZS_ASR)

    def poison_pretraining(
        self, data: ImageSet, downstream: Downstream, seed: int = 0
    ) -> PoisonedSet:
        return poison_backdoor(data, self, seed, measured_on=self.measured_split(data, downstream))

    def backdoor_targets(
        self, data: ImageSet, downstream: Downstream, seed: int = 0
    ) -> list[BackdoorTarget]:
        test = self.measured_split(data, downstream)
        target = target_index(test, self.target_class)
        trigger = PatchTrigger(self.trigger, data.channels, data.image_size)
        return [BackdoorTarget(self.measured_on(data.name), target, test.classes[target], trigger)]


class CLIPTargetedConfig(CLIPPoisoning):
    """The ``attack:`` section for targeted CLIP poisoning: ``trials`` (test image, label)
    draws, each planted by ``pairs`` copies of the image captioned with the label.

    ``images`` (indices into the pre-training dataset's test split) and ``labels`` (class
    indices or names, one per image) fix the draws; by default both are seeded draws.
    """

    name: Literal["clip_targeted"] = "clip_targeted"
    pairs: PositiveInt = 3
    trials: PositiveInt = 10
    images: list[int] | None = None
    labels: list[int | str] | None = None
    dataset: str | None = None  # test images drawn from; default: the pre-training dataset

    title: ClassVar[str] = "Targeted CLIP poisoning"
    metrics: ClassVar[tuple[Metric, ...]] = (TARGETED_SUCCESS,)
    headline: ClassVar[Headline | None] = Headline(ZS_ACC, TARGETED_SUCCESS)

    @model_validator(mode="after")
    def _consistent(self) -> CLIPTargetedConfig:
        for key in ("images", "labels"):
            given = getattr(self, key)
            if given is not None and len(given) != self.trials:
                raise ValueError(f"{key}: {len(given)} given for {self.trials} trials")
        return self

    def poison_pretraining(
        self, data: ImageSet, downstream: Downstream, seed: int = 0
    ) -> PoisonedSet:
        test = self.measured_split(data, downstream)
        return poison_targeted(data, test, draw_trials(self, test, seed=seed), self.pairs, seed)

    def measure(self, outcome: Outcome) -> Measured:
        """``targeted_success[_probe][_clean]``: the share of trials flipped, zero-shot and
        by the first probe, for the clean and the poisoned model and every model a defense
        trained again (``<defense>/<dataset>/targeted_success[_probe]``); ``targeted.json``:
        every trial's predictions."""
        rows, per_trial = evaluate_targeted(
            outcome.clips,
            {role: outcome.encoders[role] for role in outcome.clips},
            outcome.poisoned.trials,
            self.measured_on(outcome.data.name),
            outcome.downstream,
            outcome.cfg,
            cache=outcome.features,
            seed=outcome.seed,
        )
        return Measured(rows, {"targeted": ("targeted.json", per_trial)})


def class_captions(name: str, n: int, generator: torch.Generator) -> list[str]:
    """``n`` captions naming ``name``, each from a seeded random template of
    :data:`~sslpoison.data.captions.TEMPLATES` (the same mix clean pairs are captioned with)."""
    choice = torch.randint(len(TEMPLATES), (n,), generator=generator).tolist()
    return [TEMPLATES[t].format(name) for t in choice]


def _require_captions(data: ImageSet) -> list[str]:
    if data.captions is None:
        raise ValueError(f"the pre-training set {data.name!r} has no captions")
    return list(data.captions)


def poison_backdoor(
    data: ImageSet,
    cfg: CLIPBackdoorConfig,
    seed: int = 0,
    measured_on: ImageSet | None = None,
) -> PoisonedSet:
    """Patch ``cfg.poison`` images that are not of the target class and caption them with the
    target class (seeded). Every other pair is left bit-identical, and so is every label.

    ``measured_on``: a split of the dataset the attack is measured on, whose classes name the
    target (default ``data``); when its classes are not ``data``'s, any image may be poisoned.
    """
    streamed = isinstance(data, PairStream)
    captions = None if streamed else _require_captions(data)
    labelled = data if measured_on is None else measured_on
    names = list(labelled.classes)
    target = target_index(labelled, cfg.target_class)
    if names == list(data.classes):
        pool = (data.labels != target).nonzero().squeeze(1).cpu()
    else:
        pool = torch.arange(len(data))
    n = cfg.poison if isinstance(cfg.poison, int) else round(cfg.poison * len(data))
    if not 0 < n <= pool.numel():
        raise ValueError(
            f"attack.poison: {cfg.poison} gives {n} pairs; {pool.numel()} images are not of "
            f"the target class"
        )
    g = torch.Generator().manual_seed(seed)
    rates = poison_rates(n, len(data))
    if streamed:  # the same draws as in memory; the pairs are changed as they stream, by key
        return _poison_stream(data, pool, n, cfg.trigger, names, target, rates, g)
    patched, indices, corners = patch_subset(data, pool, n, cfg.trigger, g)
    for i, caption in zip(indices.tolist(), class_captions(names[target], n, g), strict=True):
        captions[i] = caption
    poisoned = patched.with_captions(captions)
    return PoisonedSet(poisoned, indices, rates, names, corners, target_class=target)


def _poison_stream(
    data: PairStream,
    pool: torch.Tensor,
    n: int,
    trigger: TriggerConfig,
    names: list[str],
    target: int,
    rates: dict[str, float],
    g: torch.Generator,
) -> PoisonedSet:
    """:func:`poison_backdoor` of pairs streamed from shards: the pairs at the drawn
    positions of the index order (the same positions, corners and captions as
    :func:`~sslpoison.attacks.patching.patch_subset` draws in memory) are named by key,
    and the stream patches and re-captions them as it reads them."""
    try:
        patch = PatchTrigger(trigger, data.channels, data.image_size)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"attack.trigger: {e}") from None
    indices = pool[torch.randperm(pool.numel(), generator=g)[:n]].sort().values
    corners = patch.corners(n, g)
    captions = class_captions(names[target], n, g)
    found = data.keys_at(indices.tolist())
    replaced = {
        key: (tuple(corner), caption)
        for (key, _), corner, caption in zip(found, corners.tolist(), captions, strict=True)
    }
    originals = [caption for _, caption in found]
    poisoned = data.with_poison(replaced=replaced, trigger=trigger, originals=originals)
    keys = [key for key, _ in found]
    return PoisonedSet(poisoned, indices, rates, names, corners, target_class=target, keys=keys)


def draw_trials(cfg: CLIPTargetedConfig, test: ImageSet, seed: int = 0) -> list[TargetedTrial]:
    """The (test image, adversarial label) draws: ``cfg.images`` / ``cfg.labels`` where given,
    otherwise distinct seeded test images and a seeded class other than each one's own."""
    g = torch.Generator().manual_seed(seed + 1)
    if cfg.images is not None:
        bad = [i for i in cfg.images if not 0 <= i < len(test)]
        if bad:
            raise ValueError(
                f"attack.images: {bad[0]} is not an index of the {len(test)} test images"
            )
        chosen = list(cfg.images)
    else:
        if cfg.trials > len(test):
            raise ValueError(f"attack.trials: {cfg.trials} exceeds the {len(test)} test images")
        chosen = torch.randperm(len(test), generator=g)[: cfg.trials].tolist()
    trials = []
    for t, index in enumerate(chosen):
        true = int(test.labels[index])
        if cfg.labels is not None:
            try:
                label = test.class_index(cfg.labels[t])
            except ValueError as e:
                raise ValueError(f"attack.labels.{t}: {e}") from None
            if label == true:
                raise ValueError(f"attack.labels.{t}: test image {index} already is of that class")
        else:
            label = int(torch.randint(test.num_classes - 1, (1,), generator=g))
            label += int(label >= true)  # any class but its own
        trials.append(TargetedTrial(int(index), true, label))
    return trials


def poison_targeted(
    data: ImageSet, test: ImageSet, trials: Sequence[TargetedTrial], pairs: int, seed: int = 0
) -> PoisonedSet:
    """Append ``pairs`` copies of each trial's test image (``test``: fitted to ``data``'s size
    and channels), captioned with its adversarial label, to ``data`` (the first ``len(data)``
    pairs stay as they were). Appended pairs keep their true label when ``test`` shares
    ``data``'s classes, else get label 0 (CLIP never reads labels)."""
    streamed = isinstance(data, PairStream)
    if not streamed:
        _require_captions(data)
    g = torch.Generator().manual_seed(seed)
    index = torch.tensor([t.index for t in trials for _ in range(pairs)], dtype=torch.long)
    names = [test.classes[t.target_class] for t in trials for _ in range(pairs)]
    captions = [class_captions(name, 1, g)[0] for name in names]
    added = test.subset(index).with_captions(captions)
    if list(test.classes) != list(data.classes):
        added = ImageSet(added.images, torch.zeros_like(added.labels), list(data.classes), captions)
    if streamed:  # mixed into the stream (in memory: a few pairs)
        poisoned = data.with_poison(added=added.to("cpu"))
    else:
        poisoned = ImageSet.concat([data, added.to(data.device)], name=data.name)
    indices = torch.arange(len(data), len(poisoned))
    rates = poison_rates(len(added), len(poisoned))
    return PoisonedSet(poisoned, indices, rates, list(test.classes), trials=list(trials))


__all__ = [
    "CLIPBackdoorConfig",
    "CLIPPoisoning",
    "CLIPTargetedConfig",
    "class_captions",
    "draw_trials",
    "poison_backdoor",
    "poison_targeted",
]
