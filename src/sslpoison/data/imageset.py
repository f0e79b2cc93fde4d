"""`ImageSet`: a whole image dataset held as one uint8 tensor (on any device)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from sslpoison.utils import tensor_hash


@dataclass
class ImageSet:
    """Images, labels, class names and (optionally) one caption per image.

    Images stay uint8 in one N×C×H×W tensor; float conversion and augmentation happen per
    batch on the device, so there is no per-sample Python on the hot path.

    Attributes:
        images: uint8 tensor, N×C×H×W.
        labels: int64 tensor, N (class indices into ``classes``).
        classes: class names, one per class index.
        captions: optional list of N strings (image–text data).
        name: a short name, used in metric keys and cache keys.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    captions: list[str] | None = None
    name: str = ""
    meta: dict = field(default_factory=dict)
    _hashed: tuple[tuple, str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"ImageSet {self.name!r}: images must be a uint8 N×C×H×W tensor, "
                f"got {self.images.dtype} of shape {tuple(self.images.shape)}"
            )
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"ImageSet {self.name!r}: labels must have shape ({self.images.shape[0]},), "
                f"got {tuple(self.labels.shape)}"
            )
        self.labels = self.labels.long()
        if self.captions is not None and len(self.captions) != len(self):
            raise ValueError(
                f"ImageSet {self.name!r}: {len(self.captions)} captions for {len(self)} images"
            )
        if len(self) and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)
        ):
            raise ValueError(
                f"ImageSet {self.name!r}: labels must lie in [0, {len(self.classes)}), "
                f"got range [{int(self.labels.min())}, {int(self.labels.max())}]"
            )

    def images_hash(self) -> str:
        """:func:`~sslpoison.utils.tensor_hash` of ``images``, remembered until they change
        (replaced, or written in place: torch counts each write in ``_version``)."""
        t = self.images
        stamp = (id(t), t.data_ptr(), tuple(t.shape), t._version)
        if self._hashed is None or self._hashed[0] != stamp:
            self._hashed = (stamp, tensor_hash(t))
        return self._hashed[1]

    # ---- shape facts -------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """Side length (images are square after loading; H is returned)."""
        return int(self.images.shape[2])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __repr__(self) -> str:
        shape = "×".join(str(s) for s in self.images.shape)
        caps = ", captions" if self.captions is not None else ""
        return f"ImageSet({self.name!r}, {shape}, {self.num_classes} classes{caps})"

    def class_index(self, cls: int | str) -> int:
        """``cls`` (an index or a class name) as a class index; ValueError if it is not one."""
        if isinstance(cls, str):
            if cls not in self.classes:
                raise ValueError(
                    f"{cls!r} is not a class of {self.name or 'the dataset'} "
                    f"({', '.join(self.classes)})"
                )
            return self.classes.index(cls)
        if not 0 <= cls < self.num_classes:
            raise ValueError(
                f"{cls} is outside {self.name or 'the dataset'}'s classes 0..{self.num_classes - 1}"
            )
        return cls

    # ---- new sets from this one ----------------------------------------------------------
    def _with(self, images: torch.Tensor, labels: torch.Tensor, captions, name=None) -> ImageSet:
        return ImageSet(
            images, labels, list(self.classes), captions, name or self.name, dict(self.meta)
        )

    def with_images(self, images: torch.Tensor, name: str | None = None) -> ImageSet:
        """The same labels and captions with other images of the same count (e.g. triggered)."""
        return self._with(images, self.labels, self.captions, name)

    def with_captions(self, captions: Sequence[str] | None, name: str | None = None) -> ImageSet:
        """The same images and labels with one caption per image (``None`` drops them)."""
        return self._with(
            self.images, self.labels, None if captions is None else list(captions), name
        )

    def subset(self, indices: torch.Tensor | Sequence[int]) -> ImageSet:
        """The images at ``indices`` (any order, repeats allowed)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        caps = [self.captions[i] for i in idx.tolist()] if self.captions is not None else None
        return self._with(self.images[idx.to(self.device)], self.labels[idx.to(self.device)], caps)

    def split(self, first: float | int, seed: int = 0) -> tuple[ImageSet, ImageSet]:
        """A seeded random split: ``first`` images (a count, or a share in (0, 1)) and the rest."""
        n = len(self)
        k = round(first * n) if isinstance(first, float) else int(first)
        if not 0 <= k <= n:
            raise ValueError(f"ImageSet {self.name!r}: cannot split {k} of {n} images")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        return self.subset(perm[:k].sort().values), self.subset(perm[k:].sort().values)

    def take(self, n: int | float, seed: int = 0, stratified: bool = True) -> ImageSet:
        """A seeded subset of ``n`` images (a count or a share), balanced over classes."""
        index = self.take_indices(n, seed, stratified)
        return self if index is None else self.subset(index)

    def take_indices(
        self, n: int | float, seed: int = 0, stratified: bool = True
    ) -> torch.Tensor | None:
        """The sorted indices :meth:`take` keeps (None: it keeps the whole set)."""
        total = len(self)
        k = round(n * total) if isinstance(n, float) else int(n)
        if k >= total:
            return None
        if k <= 0:
            raise ValueError(f"ImageSet {self.name!r}: asked for {n} images")
        g = torch.Generator().manual_seed(seed)
        if not stratified:
            return torch.randperm(total, generator=g)[:k].sort().values
        labels = self.labels.cpu()
        order = torch.randperm(total, generator=g)
        # Rank each image within its class (in the random order); keep the lowest ranks.
        shuffled = labels[order]
        rank = torch.empty(total, dtype=torch.long)
        for c in range(self.num_classes):
            pos = (shuffled == c).nonzero().squeeze(1)
            rank[pos] = torch.arange(pos.numel())
        keep = order[torch.argsort(rank * total + torch.arange(total), stable=True)[:k]]
        return keep.sort().values

    def with_classes(self, classes: Sequence[int | str], key: str = "classes") -> ImageSet:
        """The images of ``classes`` only (indices or names, in the order given), their labels
        remapped to 0..k−1 in that order and the class names kept; ``key`` names the setting
        in the error raised for a class that is not one of the set's or is given twice."""
        try:
            wanted = [self.class_index(c) for c in classes]
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None
        if not wanted:
            raise ValueError(f"{key}: name at least one class")
        if len(set(wanted)) != len(wanted):
            raise ValueError(f"{key}: a class is listed twice in {list(classes)}")
        remap = torch.full((self.num_classes,), -1, dtype=torch.long)
        remap[torch.tensor(wanted)] = torch.arange(len(wanted))
        new = remap[self.labels.cpu()]
        keep = (new >= 0).nonzero().squeeze(1)
        caps = [self.captions[i] for i in keep.tolist()] if self.captions is not None else None
        return ImageSet(
            self.images[keep.to(self.device)], new[keep].to(self.labels.device),
            [self.classes[i] for i in wanted], caps, self.name, dict(self.meta),
        )  # fmt: skip

    def where(self, mask: torch.Tensor) -> ImageSet:
        """The images where the boolean ``mask`` (N) is true."""
        return self.subset(mask.nonzero().squeeze(1).cpu())

    @staticmethod
    def concat(sets: Sequence[ImageSet], name: str | None = None) -> ImageSet:
        """Join sets that share classes, channels and size."""
        if not sets:
            raise ValueError("ImageSet.concat needs at least one set")
        first = sets[0]
        for s in sets[1:]:
            if s.classes != first.classes or s.images.shape[1:] != first.images.shape[1:]:
                raise ValueError(
                    f"ImageSet.concat: {s.name!r} ({tuple(s.images.shape[1:])}, "
                    f"{s.num_classes} classes) does not match {first.name!r} "
                    f"({tuple(first.images.shape[1:])}, {first.num_classes} classes)"
                )
        has_caps = all(s.captions is not None for s in sets)
        caps = [c for s in sets for c in s.captions] if has_caps else None  # type: ignore[union-attr]
        return ImageSet(
            torch.cat([s.images for s in sets]),
            torch.cat([s.labels for s in sets]),
            list(first.classes),
            caps,
            name or first.name,
            dict(first.meta),
        )

    def to(self, device: torch.device | str) -> ImageSet:
        return self._with(self.images.to(device), self.labels.to(device), self.captions)

    def resized(self, size: int | None = None, channels: int | None = None) -> ImageSet:
        """Resize (bilinear, antialiased) to ``size``×``size`` and/or convert channels.

        Grayscale → 3 channels repeats the plane; 3 → 1 takes the luma (ITU-R 601).
        """
        x = self.images
        if channels is not None and channels != x.shape[1]:
            if x.shape[1] == 1:
                x = x.expand(-1, channels, -1, -1).contiguous()
            elif channels == 1 and x.shape[1] == 3:
                w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
                x = (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
            else:
                raise ValueError(
                    f"ImageSet {self.name!r}: cannot convert {x.shape[1]} channels to {channels}"
                )
        if size is not None and (x.shape[2] != size or x.shape[3] != size):
            chunks = []
            for part in x.split(4096):
                y = F.interpolate(
                    part.float(),
                    size=(size, size),
                    mode="bilinear",
                    antialias=True,
                    align_corners=False,
                )
                chunks.append(y.round().clamp(0, 255).to(torch.uint8))
            x = torch.cat(chunks)
        return self._with(x, self.labels, self.captions)

    def float_images(self, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Images (all, or at ``indices``) as float in [0, 1], B×C×H×W."""
        x = self.images if indices is None else self.images[indices]
        return x.float().div_(255)
