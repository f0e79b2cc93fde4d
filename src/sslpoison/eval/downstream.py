"""The downstream task: its settings (:class:`EvalConfig`) and its data (:class:`Downstream`),
loaded once per run and taken by the attacks, the probes, the zero-shot evaluation and the
trigger pictures alike.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Annotated, Literal

import torch
from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from sslpoison.configbase import Config, CountOrShare, checked_count
from sslpoison.data.imageset import ImageSet
from sslpoison.data.registry import load_fitted
from sslpoison.errors import ConfigError, DataError, warn
from sslpoison.eval.knn import knn_predict
from sslpoison.eval.probes import ProbeConfig, train_probe

ProbeKind = Literal["linear", "mlp", "knn"]


class KNNConfig(Config):
    """Weighted cosine k-NN (Wu et al., 2018): k neighbours, weights exp(sim / temperature)."""

    k: PositiveInt = 200
    temperature: float = Field(0.1, gt=0)


class EvalConfig(Config):
    """Downstream evaluation on frozen features.

    ``labelled`` images (a count, or a share) of each dataset's train split train the probes;
    each dataset's test split (or ``test_subset`` of it) measures them. ``baselines`` are
    measured in the same run: the same architecture untrained (``random_init``) and the
    probe on raw pixels (``pixels``). ``roots`` names the folder of a dataset that is not
    in the usual places (e.g. ``imagefolder``); the pre-training ``data.root`` is used for
    the pre-training dataset unless given here. ``classes`` keeps only some classes of a
    dataset (``{name: [indices or class names]}``), in both splits, their labels remapped to
    0..k−1 in the order given and their names kept — e.g. a downstream task of classes the
    encoder never saw (``data.classes``).

    What a small dataset cannot give is an error naming the key, unless allowed (then a
    warning the run records): ``allow_smaller`` — a ``labelled``, ``test_subset`` or
    ``knn.k`` larger than the images there are (a value left at its default is always
    allowed, with a warning); ``allow_empty_classes`` — a class folder without images;
    ``allow_split_mismatch`` — a test split whose images differ in size (or channels) from
    the train split's (both are resized to the encoder's input).

    ``other_triggers``: how many unseen noise patterns of each backdoor trigger's size and
    placement measure the backdoor's null control on every encoder (``asr_other_trigger``,
    ``fp_other_trigger``: their mean; 0: none; each costs one feature pass over the test set
    per encoder).
    """

    datasets: list[str] = Field(default_factory=lambda: ["fashion-mnist"], min_length=1)
    labelled: CountOrShare = 10000
    test_subset: PositiveInt | None = None
    probes: list[ProbeKind] = Field(default_factory=lambda: ["linear", "knn"], min_length=1)
    baselines: list[Literal["random_init", "pixels"]] = Field(
        default_factory=lambda: ["random_init", "pixels"]
    )
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    knn: KNNConfig = Field(default_factory=KNNConfig)
    other_triggers: NonNegativeInt = 3
    roots: dict[str, str] = Field(default_factory=dict)
    classes: dict[str, Annotated[list[int | str], Field(min_length=1)]] = Field(
        default_factory=dict
    )
    allow_smaller: bool = False
    allow_empty_classes: bool = False
    allow_split_mismatch: bool = False

    @model_validator(mode="after")
    def _classes_of_evaluated_datasets(self) -> EvalConfig:
        for name in self.classes:
            if name not in self.datasets:
                raise ValueError(f"eval.classes.{name}: {name!r} is not in eval.datasets")
        return self


class Downstream:
    """The downstream datasets of one run, each loaded once and fitted to an encoder's input
    (``size``×``size`` pixels, ``channels``).

    Per dataset ``name``: :meth:`split` is a whole split (``"train"``, ``"test"``);
    :meth:`train` the probes' labelled train set (``cfg.labelled`` images of the train split,
    seeded, class-balanced); :meth:`test` the test set (the test split, or
    ``cfg.test_subset`` of it, seeded). Splits load on first use (``cfg.roots`` locates a
    dataset outside the usual places) and are kept. :meth:`with_train` gives the same data
    with some labelled train sets replaced, e.g. by poisoned ones.
    """

    def __init__(self, cfg: EvalConfig, size: int, channels: int, seed: int = 0) -> None:
        self.cfg = cfg
        self.datasets = list(cfg.datasets)
        self.size, self.channels, self.seed = size, channels, seed
        self.labelled, self.test_subset, self.roots = cfg.labelled, cfg.test_subset, cfg.roots
        self._splits: dict[tuple[str, str], ImageSet] = {}
        self._train: dict[str, ImageSet] = {}
        self._train_index: dict[str, torch.Tensor | None] = {}
        self._test: dict[str, ImageSet] = {}

    def split(self, name: str, split: str) -> ImageSet:
        """The whole ``split`` of dataset ``name`` (of its ``cfg.classes``), fitted to the
        encoder's input."""
        if (name, split) not in self._splits:
            data = load_fitted(
                name,
                split,
                self.size,
                self.channels,
                self.roots.get(name),
                allow_empty_classes=self.cfg.allow_empty_classes,
            )
            self._check_split_shapes(name, split, data)
            if name in self.cfg.classes:
                try:
                    data = data.with_classes(self.cfg.classes[name], key=f"eval.classes.{name}")
                except ValueError as e:
                    raise ConfigError(str(e)) from None
            self._splits[name, split] = data
        return self._splits[name, split]

    def _check_split_shapes(self, name: str, split: str, data: ImageSet) -> None:
        """Images of one dataset's splits share their size and channels on disk."""
        shape = data.meta.get("native_shape")
        for (other_name, other_split), other in self._splits.items():
            theirs = other.meta.get("native_shape")
            if other_name != name or shape is None or theirs is None or theirs == shape:
                continue
            c, h, w = shape
            c2, h2, w2 = theirs
            message = (
                f"{data.meta.get('source', name)}: {name} {split} images are {c}×{h}×{w} but "
                f"its {other_split} images are {c2}×{h2}×{w2}"
            )
            if not self.cfg.allow_split_mismatch:
                raise DataError(f"{message} (set eval.allow_split_mismatch: true to resize both)")
            warn(f"{message}; both resized to {self.channels}×{self.size}×{self.size}")

    def train(self, name: str) -> ImageSet:
        """The labelled images the probes of dataset ``name`` train on."""
        if name not in self._train:
            split = self.split(name, "train")
            explicit = "labelled" in self.cfg.model_fields_set
            what = f"the {name} train split"
            labelled = checked_count(
                "eval.labelled", self.labelled, len(split), what,
                allowed=self.cfg.allow_smaller, explicit=explicit,
            )  # fmt: skip
            self._train_index[name] = split.take_indices(labelled, seed=self.seed)
            index = self._train_index[name]
            train = split if index is None else split.subset(index)
            if "knn" in self.cfg.probes:
                explicit = "k" in self.cfg.knn.model_fields_set
                what = f"the {name} labelled train set"
                checked_count(
                    "eval.knn.k", self.cfg.knn.k, len(train), what,
                    allowed=self.cfg.allow_smaller, explicit=explicit,
                )  # fmt: skip
            self._train[name] = train
        return self._train[name]

    def test(self, name: str) -> ImageSet:
        """The test images the probes of dataset ``name`` are measured on."""
        if name not in self._test:
            test = self.split(name, "test")
            if self.test_subset is not None:
                what = f"the {name} test split"
                count = checked_count(
                    "eval.test_subset", self.test_subset, len(test), what,
                    allowed=self.cfg.allow_smaller,
                )  # fmt: skip
                test = test.take(count, seed=self.seed)
            self._test[name] = test
        return self._test[name]

    def held_out(self, name: str, count: int | float) -> ImageSet | None:
        """Clean labelled images of dataset ``name``'s train split that are not among the
        probes' labelled set (:meth:`train`): ``count`` of them (a count or a share of them;
        seeded, class-balanced), all of them when there are fewer; None when there are none
        (the labelled set is the whole split). What a defender calibrates on."""
        split = self.split(name, "train")
        self.train(name)
        index = self._train_index.get(name)
        if index is None:
            return None
        rest = torch.ones(len(split), dtype=torch.bool)
        rest[index] = False
        return split.where(rest).take(count, seed=self.seed + 1)

    def with_train(self, train: dict[str, ImageSet]) -> Downstream:
        """A copy (sharing the loaded splits) whose labelled train sets are ``train`` where
        given (by dataset name)."""
        other = copy.copy(self)
        other._train = {**self._train, **train}
        other._train_index = {k: v for k, v in self._train_index.items() if k not in train}
        return other


def train_predictor(
    kind: ProbeKind,
    f_train: torch.Tensor,
    y_train: torch.Tensor,
    num_classes: int,
    cfg: EvalConfig,
    seed: int = 0,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A classifier of features (N×D → N class indices) trained on the train features."""
    if kind == "knn":
        return lambda f: knn_predict(
            f_train, y_train, f, num_classes, k=cfg.knn.k, temperature=cfg.knn.temperature
        )
    return train_probe(f_train, y_train, num_classes, kind, cfg.probe, seed=seed).predict


__all__ = ["Downstream", "EvalConfig", "KNNConfig", "ProbeKind", "train_predictor"]
