"""Patch triggers: exact placement, untouched pixels elsewhere, blending, clear refusals, the
unseen patterns of a null control."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from sslpoison.triggers import PatchTrigger, TriggerConfig, other_patterns


def _images(n: int = 6, c: int = 1, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 200, (n, c, size, size), dtype=torch.uint8, generator=g)


def test_fixed_white_square_lands_exactly_where_recorded():
    # BadEncoder's trigger scaled down: a 4×4 white square at rows/cols 10–13 of 16×16.
    trig = PatchTrigger(TriggerConfig(size=4, color=[1.0], position=(10, 10)), 1, 16)
    x = _images()
    y, corners = trig.apply(x)
    assert corners.tolist() == [[10, 10]] * 6
    assert (y[:, :, 10:14, 10:14] == 255).all()
    outside = ~trig.mask(corners)[:, None]
    assert torch.equal(y[outside.expand_as(y)], x[outside.expand_as(x)])
    assert x.max() < 255  # the input itself was not modified


def test_random_corners_stay_in_the_box_and_only_patch_pixels_change():
    cfg = TriggerConfig(kind="noise", size=0.25, box=(0.25, 0.75), seed=3)
    trig = PatchTrigger(cfg, 3, 32)
    x = _images(n=64, c=3, size=32)
    y, corners = trig.apply(x, torch.Generator().manual_seed(1))
    assert trig.side == 8
    assert corners.min() >= 8 and corners.max() <= 24 - 8
    assert len({tuple(c) for c in corners.tolist()}) > 10  # positions vary
    mask = trig.mask(corners)[:, None].expand_as(x)
    assert torch.equal(y[~mask], x[~mask])
    expected = (trig.pattern * 255).round().to(torch.uint8)
    for i, (r, c) in enumerate(corners.tolist()):
        assert torch.equal(y[i, :, r : r + 8, c : c + 8], expected)


def test_alpha_blending_on_float_images():
    trig = PatchTrigger(TriggerConfig(size=2, color=[1.0], alpha=0.25, position=(0, 0)), 1, 4)
    x = torch.full((1, 1, 4, 4), 0.2)
    y, _ = trig.apply(x)
    torch.testing.assert_close(y[0, 0, :2, :2], torch.full((2, 2), 0.75 * 0.2 + 0.25))
    assert torch.equal(y[0, 0, 2:], x[0, 0, 2:])


def test_image_file_trigger_and_example_grid(tmp_path):
    Image.new("RGB", (5, 5), (255, 0, 0)).save(tmp_path / "t.png")
    trig = PatchTrigger(
        TriggerConfig(kind="image", image=str(tmp_path / "t.png"), size=5, position=(0, 0)), 3, 16
    )
    y, _ = trig.apply(_images(c=3))
    assert (y[:, 0, :5, :5] == 255).all() and (y[:, 1:, :5, :5] == 0).all()
    png = trig.save_examples(_images(c=3), tmp_path / "grid.png", n=4)
    assert Image.open(png).size == (4 * 16, 2 * 16)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (dict(size=20), "larger than the 16×16 image"),
        (dict(size=4, position=(14, 0)), "outside the 16×16 image"),
        (dict(size=6, box=(0.5, 0.75)), "smaller than the 6-px patch"),
    ],
)
def test_impossible_triggers_are_refused_by_name(cfg, message):
    with pytest.raises(ValueError, match=message):
        PatchTrigger(TriggerConfig(**cfg), 1, 16)


def test_bad_trigger_config_values_name_the_key():
    with pytest.raises(ValueError, match="size"):
        TriggerConfig(size=1.5)
    with pytest.raises(ValueError, match="box"):
        TriggerConfig(box=(0.8, 0.2))


def test_other_patterns_keep_the_size_and_place_but_never_the_pattern():
    cfg = TriggerConfig(kind="noise", size=4, box=(0.25, 0.75), seed=5, alpha=0.8)
    others = other_patterns(cfg, 3)
    assert [o.seed for o in others] == [6, 7, 8]  # never the trigger's own seed
    assert all((o.kind, o.size, o.box, o.alpha) == ("noise", 4, cfg.box, 0.8) for o in others)
    trigger = PatchTrigger(cfg, 1, 16)
    images = torch.zeros(20, 1, 16, 16, dtype=torch.uint8)
    _, corners = trigger.apply(images, torch.Generator().manual_seed(3))
    for o in others:
        other = PatchTrigger(o, 1, 16)
        assert other.side == trigger.side and not torch.equal(other.pattern, trigger.pattern)
        _, placed = other.apply(images, torch.Generator().manual_seed(3))
        assert torch.equal(placed, corners)  # the same seed places them where the trigger was
    solid = TriggerConfig(kind="solid", size=5, position=(22, 22))
    assert [(o.kind, o.seed, o.position) for o in other_patterns(solid, 2)] == [
        ("noise", 0, (22, 22)),
        ("noise", 1, (22, 22)),
    ]
    assert other_patterns(cfg, 0) == []
