"""ImageSet: construction checks and the sets made from one."""

from __future__ import annotations

import pytest
import torch

from sslpoison.data.imageset import ImageSet
from sslpoison.utils import tensor_hash


def make(n: int = 40, classes: int = 4, channels: int = 1, size: int = 8, name: str = "t"):
    """Image i is flat with value i % 256, except pixel (0, 1), which holds i // 256."""
    i = torch.arange(n)
    images = (i % 256).to(torch.uint8).view(n, 1, 1, 1).repeat(1, channels, size, size)
    images[:, :, 0, 1] = (i // 256).to(torch.uint8).view(n, 1)
    labels = i % classes
    return ImageSet(images, labels, [f"c{i}" for i in range(classes)], name=name)


def ids(s: ImageSet) -> list[int]:
    return (s.images[:, 0, 0, 0].long() + 256 * s.images[:, 0, 0, 1].long()).tolist()


def test_facts_and_repr() -> None:
    s = make()
    assert len(s) == 40 and s.num_classes == 4 and s.channels == 1 and s.image_size == 8
    assert s.labels.dtype == torch.int64
    assert "40×1×8×8" in repr(s) and "4 classes" in repr(s)


def test_subset_keeps_order_and_repeats() -> None:
    s = make()
    sub = s.subset([5, 1, 5])
    assert ids(sub) == [5, 1, 5] and sub.labels.tolist() == [1, 1, 1]
    assert sub.classes == s.classes and sub.name == s.name
    mask = s.labels == 2
    assert ids(s.where(mask)) == list(range(2, 40, 4))


def test_split_sizes_and_disjointness() -> None:
    s = make()
    a, b = s.split(0.25, seed=1)
    assert len(a) == 10 and len(b) == 30
    assert set(ids(a)).isdisjoint(ids(b)) and set(ids(a)) | set(ids(b)) == set(range(40))
    c, d = s.split(7, seed=1)
    assert len(c) == 7 and len(d) == 33
    assert ids(s.split(0.25, seed=1)[0]) == ids(a)  # seeded
    with pytest.raises(ValueError, match="cannot split"):
        s.split(41)


def test_take_is_class_balanced() -> None:
    s = make(n=400, classes=4)
    t = s.take(40, seed=0)
    assert len(t) == 40 and torch.bincount(t.labels).tolist() == [10] * 4
    assert len(set(ids(t))) == 40
    assert len(s.take(0.5)) == 200
    assert s.take(1000) is s
    with pytest.raises(ValueError):
        s.take(0)


def test_concat() -> None:
    a, b = make(n=4), make(n=6)
    c = ImageSet.concat([a, b], name="both")
    assert len(c) == 10 and c.name == "both" and ids(c) == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="does not match"):
        ImageSet.concat([a, make(n=4, size=6)])
    with pytest.raises(ValueError, match="does not match"):
        ImageSet.concat([a, make(n=4, classes=3)])
    with pytest.raises(ValueError, match="at least one"):
        ImageSet.concat([])


def test_resized_channels_and_size() -> None:
    s = make(n=3)
    rgb = s.resized(channels=3)
    assert rgb.images.shape == (3, 3, 8, 8) and torch.equal(rgb.images[:, 2], s.images[:, 0])
    big = s.resized(size=16)
    assert big.images.shape == (3, 1, 16, 16) and big.images.dtype == torch.uint8
    assert big.images[:, 0, 8, 8].tolist() == [0, 1, 2]
    gray = rgb.resized(channels=1)
    assert torch.equal(gray.images, s.images)
    with pytest.raises(ValueError, match="cannot convert"):
        rgb.resized(channels=2)


def test_validation_errors() -> None:
    imgs = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(imgs.float(), torch.zeros(2), ["a"])
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(imgs[0], torch.zeros(2), ["a"])
    with pytest.raises(ValueError, match="labels must have shape"):
        ImageSet(imgs, torch.zeros(3), ["a"])
    with pytest.raises(ValueError, match="labels must lie"):
        ImageSet(imgs, torch.tensor([0, 1]), ["a"])
    with pytest.raises(ValueError, match="captions"):
        ImageSet(imgs, torch.zeros(2), ["a"], captions=["x"])


def test_float_images() -> None:
    s = make(n=3)
    f = s.float_images(torch.tensor([2]))
    assert f.dtype == torch.float32 and f.shape == (1, 1, 8, 8)
    assert torch.equal(f * 255, s.images[2:3].float())


def test_with_captions_follow_subsets_and_concat() -> None:
    s = make(n=6)
    caps = [f"caption {i}" for i in range(6)]
    c = s.with_captions(caps)
    assert s.captions is None and c.captions == caps and c.images is s.images
    assert c.subset([4, 1]).captions == ["caption 4", "caption 1"]
    assert ImageSet.concat([c, c]).captions == caps + caps
    assert c.with_captions(None).captions is None
    with pytest.raises(ValueError, match="5 captions for 6 images"):
        s.with_captions(caps[:5])


def test_with_classes_keeps_the_requested_classes_with_remapped_labels() -> None:
    s = make(n=40, classes=4)
    kept = s.with_classes([3, "c1"])  # an index and a name, in that order
    assert kept.classes == ["c3", "c1"] and kept.num_classes == 2
    assert ids(kept) == [i for i in range(40) if i % 4 in (1, 3)]  # order of the set kept
    assert kept.labels.tolist() == [1 if i % 4 == 1 else 0 for i in ids(kept)]
    for bad, message in (([7], "outside"), (["c9"], "not a class"), ([1, "c1"], "twice")):
        with pytest.raises(ValueError, match=rf"data\.classes: .*{message}"):
            s.with_classes(bad, key="data.classes")


def test_images_hash_is_remembered_until_the_images_change():
    images = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8)
    data = ImageSet(images, torch.zeros(6, dtype=torch.long), ["a"])
    first = data.images_hash()
    assert first == tensor_hash(images) == data.images_hash()
    images[0, 0, 0, 0] ^= 1  # written in place: the remembered hash is stale
    assert data.images_hash() == tensor_hash(images) != first
    data.images = images[:3].clone()  # replaced
    assert data.images_hash() == tensor_hash(images[:3])


def test_tensor_hash_reads_the_bytes_of_views_and_dtypes():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert tensor_hash(t.t()) == tensor_hash(t.t().contiguous())
    assert tensor_hash(t) != tensor_hash(t.to(torch.float64))
    assert tensor_hash(t) != tensor_hash(t.reshape(4, 3))
    assert tensor_hash(torch.zeros(0)) == tensor_hash(torch.zeros(0))
