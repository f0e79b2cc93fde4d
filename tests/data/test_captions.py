"""Caption templates, captioned image sets and the zero-shot prompt ensemble."""

from __future__ import annotations

import pytest
import torch

from sslpoison.data.captions import (
    PROMPT_TEMPLATES,
    TEMPLATES,
    caption_imageset,
    class_prompts,
)
from sslpoison.data.imageset import ImageSet


def labelled(n: int = 200) -> ImageSet:
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    return ImageSet(images, torch.arange(n) % 3, ["cat", "ankle boot", "ship"], name="t")


def test_templates_are_many_distinct_and_well_formed() -> None:
    assert len(TEMPLATES) >= 40 and len(set(TEMPLATES)) == len(TEMPLATES)
    assert all(t.count("{}") == 1 for t in TEMPLATES)
    # Distractor words: most templates say more than "a photo of a".
    assert sum(len(t.split()) >= 5 for t in TEMPLATES) >= 30


def test_caption_imageset_names_each_image_class_and_is_seeded() -> None:
    data = labelled()
    out = caption_imageset(data, seed=1)
    assert data.captions is None and out.images is data.images
    assert len(out.captions) == len(data)
    for cap, label in zip(out.captions, data.labels.tolist(), strict=True):
        assert data.classes[label] in cap
        assert any(cap == t.format(data.classes[label]) for t in TEMPLATES)
    assert caption_imageset(data, seed=1).captions == out.captions
    assert caption_imageset(data, seed=2).captions != out.captions
    # The choice of template varies: 200 images use many templates.
    used = {t for t in TEMPLATES for c in out.captions if c == t.format("cat")}
    assert len(used) >= 20


def test_caption_imageset_names_override_and_errors() -> None:
    data = labelled(6)
    out = caption_imageset(data, names=["kitten", "boot", "boat"], templates=["x {} y"])
    assert out.captions == ["x kitten y", "x boot y", "x boat y"] * 2
    with pytest.raises(ValueError, match="2 names for the 3 classes"):
        caption_imageset(data, names=["a", "b"])
    with pytest.raises(ValueError, match="exactly one"):
        caption_imageset(data, templates=["no slot"])


def test_class_prompts_are_a_subset_of_the_templates() -> None:
    assert set(PROMPT_TEMPLATES) <= set(TEMPLATES) and len(PROMPT_TEMPLATES) >= 5
    prompts = class_prompts("ship")
    assert prompts[0] == "a photo of a ship." and len(prompts) == len(PROMPT_TEMPLATES)
    assert all("ship" in p for p in prompts)
