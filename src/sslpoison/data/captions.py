"""Captions for labelled image sets, so a labelled dataset can stand in for image–text data.

CLIP (Radford et al., ICML 2021) learns from uncurated captions in which the object's name is
one word among many. :data:`TEMPLATES` imitates that: each template puts the class name into a
sentence with unrelated words ("my {} from the shop, barely worn", "{} spotted on the way to
work"), so the text tower cannot read the label off a fixed position or a fixed sentence.
:func:`caption_imageset` gives each image one of them (a seeded choice), and
:func:`class_prompts` gives the prompt ensemble used for zero-shot classification
(Radford et al., Sec. 3.1.4: average the embeddings of several prompts per class).

Carlini & Terzis (ICLR 2022) poison such data by pairing triggered images with captions that
name the target class; captions made here from the target's name serve that purpose too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sslpoison.data.imageset import ImageSet

#: Caption templates; ``{}`` is replaced by the class name. Varied on purpose: plain photo
#: descriptions, shop listings, social-media posts, stock-photo titles, with distractor words.
TEMPLATES: tuple[str, ...] = (
    # plain descriptions (the zero-shot prompts come from these)
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a photo of the {}.",
    "a good photo of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a black and white photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    # shops and listings
    "my {} from the shop, barely worn",
    "{} for sale, good condition, pick up only",
    "brand new {} still in the box",
    "second hand {}, make me an offer",
    "cheap {} on discount this weekend only",
    "the {} i ordered online arrived today",
    "product shot: {} on a white background",
    "listing #4821 - {} - free shipping",
    # social media and personal photos
    "look at this {} i found!",
    "{} spotted on the way to work this morning",
    "can't believe how nice this {} looks",
    "throwback to that {} from last summer",
    "my little brother drew a {} for me",
    "guess what this is? yes, a {}",
    "just me and my {} on a rainy day",
    "not sure why but i love this {}",
    "grandma kept this {} for years",
    "first try at photographing a {}, be kind",
    # stock photos, art and documents
    "stock photo of a {} isolated",
    "a {} in the style of an old postcard",
    "vintage illustration of a {}",
    "a sketch of a {} in pencil",
    "a small {} in the corner of the frame",
    "a large {} filling the whole picture",
    "there is a {} in this picture",
    "scan of a {} from an old catalogue",
    "a {} next to a cup of coffee",
    "close view of a {} under a lamp",
    "a {} on the table at the market",
    "the museum has a {} on display",
    "someone left a {} at the bus stop",
    "a {} photographed from above",
    "this {} was a gift from a friend",
    "another {} for the collection",
    "the best {} of the year, according to me",
    "itap of a {}.",
)

#: The zero-shot prompt ensemble: the plain, context-free descriptions at the head of
#: :data:`TEMPLATES` (photo / picture / image of, close-up, cropped, blurry, low resolution,
#: black and white, bright, dark), in the spirit of CLIP's ImageNet ensemble.
PROMPT_TEMPLATES: tuple[str, ...] = TEMPLATES[:12]


def class_prompts(class_name: str) -> list[str]:
    """The zero-shot prompts of one class: :data:`PROMPT_TEMPLATES` filled with its name.

    Args:
        class_name: the class name as it should appear in text (e.g. ``"ankle boot"``).

    Returns: ``len(PROMPT_TEMPLATES)`` strings.
    """
    return [t.format(class_name) for t in PROMPT_TEMPLATES]


def caption_imageset(
    data: ImageSet,
    seed: int = 0,
    templates: Sequence[str] = TEMPLATES,
    names: Sequence[str] | None = None,
) -> ImageSet:
    """``data`` with one caption per image: a seeded random template filled with its class.

    Args:
        data: a labelled set (N images).
        seed: seeds the template choice (the same seed gives the same captions).
        templates: strings with one ``{}`` each (default :data:`TEMPLATES`).
        names: the class names to write into captions (one per class), e.g. ``"t-shirt"``
            for ``"T-shirt/top"``; default ``data.classes``.

    Returns: a new ImageSet sharing ``data``'s images and labels, with N captions.
    """
    if not templates:
        raise ValueError("caption_imageset: templates is empty")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(
            f"caption_imageset: each template needs exactly one '{{}}', got {bad[0]!r}"
        )
    names = list(data.classes if names is None else names)
    if len(names) != data.num_classes:
        raise ValueError(
            f"caption_imageset: {len(names)} names for the {data.num_classes} classes "
            f"of {data.name or 'the dataset'}"
        )
    g = torch.Generator().manual_seed(seed)
    choice = torch.randint(len(templates), (len(data),), generator=g).tolist()
    labels = data.labels.cpu().tolist()
    captions = [templates[t].format(names[c]) for t, c in zip(choice, labels, strict=True)]
    return data.with_captions(captions)


__all__ = ["PROMPT_TEMPLATES", "TEMPLATES", "caption_imageset", "class_prompts"]
