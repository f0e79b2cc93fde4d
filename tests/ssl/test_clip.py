"""CLIP: the symmetric InfoNCE against a loop reference, zero-shot use, and training."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from sslpoison.data.captions import PROMPT_TEMPLATES, caption_imageset
from sslpoison.data.synthetic import synthetic
from sslpoison.models.text import TextConfig, Tokenizer
from sslpoison.ssl.clip import (
    CLIP,
    CLIPConfig,
    CLIPTask,
    clip_augment,
    clip_loss,
    load_clip,
    save_clip,
    zero_shot_classifier,
    zero_shot_predict,
)
from sslpoison.ssl.pretrain import BackboneConfig, PretrainConfig, pretrain_clip
from sslpoison.train.engine import TensorBatches, TrainConfig, fit


@pytest.fixture(autouse=True)
def _one_thread():
    """Models this small run faster on one thread (and far faster on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = CLIPConfig(
    backbone=BackboneConfig(width=0.125),
    text=TextConfig(width=32, layers=1, heads=2, context_length=12),
    embed_dim=16,
)


def reference_clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: float) -> float:
    """Per anchor: −log softmax of its partner among the batch, both directions, averaged."""
    b = img.shape[0]
    sim = [[scale * float(img[i] @ txt[j]) for j in range(b)] for i in range(b)]
    image_to_text = sum(
        -(sim[i][i] - math.log(sum(math.exp(sim[i][j]) for j in range(b)))) for i in range(b)
    )
    text_to_image = sum(
        -(sim[j][j] - math.log(sum(math.exp(sim[i][j]) for i in range(b)))) for j in range(b)
    )
    return (image_to_text / b + text_to_image / b) / 2


def test_clip_loss_matches_loop_reference() -> None:
    g = torch.Generator().manual_seed(0)
    for b, d, scale in [(4, 3, 1.0), (6, 8, 14.3), (1, 5, 100.0), (5, 2, 0.5)]:
        img = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
        txt = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
        expected = torch.tensor(reference_clip_loss(img, txt, scale), dtype=torch.float64)
        torch.testing.assert_close(clip_loss(img, txt, scale), expected)
        torch.testing.assert_close(
            clip_loss(img, txt, torch.tensor(scale, dtype=torch.float64)), expected
        )
    with pytest.raises(ValueError, match="differ in shape"):
        clip_loss(torch.zeros(2, 3), torch.zeros(3, 3), 1.0)


def test_clip_loss_is_lower_for_matched_than_shuffled_pairs() -> None:
    g = torch.Generator().manual_seed(1)
    txt = F.normalize(torch.randn(8, 16, generator=g), dim=1)
    img = F.normalize(txt + 0.3 * torch.randn(8, 16, generator=g), dim=1)
    shuffled = img[torch.roll(torch.arange(8), 1)]
    assert clip_loss(img, txt, 10.0) < clip_loss(shuffled, txt, 10.0) - 1.0


def tiny_model(texts: list[str]) -> tuple[CLIP, Tokenizer]:
    torch.manual_seed(0)
    tok = TINY.text.build_tokenizer(texts)
    return TINY.build(tok, channels=1), tok


def test_temperature_init_and_clamp() -> None:
    model, _ = tiny_model(["a cat"])
    torch.testing.assert_close(model.scale(), torch.tensor(1 / 0.07))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(200.0))
    torch.testing.assert_close(model.scale(), torch.tensor(100.0))
    model.scale().backward()
    assert model.logit_scale.grad == 0  # no push past the clamp
    with pytest.raises(ValueError, match="exceeds max_logit_scale"):
        CLIP(model.backbone, model.text, init_temperature=0.005)


def test_zero_shot_classifier_is_the_renormalised_prompt_mean() -> None:
    names = ["horizontal", "vertical", "grid plaid"]
    model, tok = tiny_model([t.format(n) for n in names for t in PROMPT_TEMPLATES])
    model.train()
    weights = zero_shot_classifier(model, tok, names)
    assert weights.shape == (16, 3) and model.training
    torch.testing.assert_close(weights.norm(dim=0), torch.ones(3))
    model.eval()
    with torch.no_grad():
        emb = model.encode_text(tok.encode([t.format("vertical") for t in PROMPT_TEMPLATES]))
    torch.testing.assert_close(weights[:, 1], F.normalize(emb.mean(0), dim=0))
    images = torch.randint(0, 256, (5, 1, 16, 16), dtype=torch.uint8)
    pred = zero_shot_predict(model, weights, images, batch_size=2)
    assert pred.shape == (5,) and pred.dtype == torch.int64 and pred.max() < 3
    with torch.no_grad():
        expected = (model.encode_image(images.float() / 255) @ weights).argmax(1)
    assert torch.equal(pred, expected)


def test_fit_two_steps_on_synthetic_pairs() -> None:
    data = caption_imageset(synthetic(n=32, num_classes=4, size=16, channels=1, seed=0), seed=0)
    model, tok = tiny_model(data.captions)
    ids = tok.encode(data.captions)
    assert ids.shape == (32, 12)
    task = CLIPTask(model, clip_augment(16, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=16, progress=False)
    result = fit(task, TensorBatches(data.images, ids, batch_size=16), cfg)
    assert result.steps == 2 and len(result.losses) == 1 and math.isfinite(result.losses[0])
    after = model.state_dict()
    for key in ("image_proj.weight", "text.token.weight", "text.proj.weight"):
        assert not torch.equal(before[key], after[key]), key


def test_save_and_load_clip_round_trip(tmp_path) -> None:
    data = caption_imageset(synthetic(n=16, num_classes=3, size=16, channels=1, seed=0))
    tokenizer = TINY.text.build_tokenizer(data.captions)
    torch.manual_seed(0)
    model = TINY.build(tokenizer, channels=1)
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
    save_clip(model, tokenizer, TINY.text, tmp_path / "clip", note="x")
    loaded, tok = load_clip(tmp_path / "clip")
    assert tok.to_dict() == tokenizer.to_dict()
    model.eval(), loaded.eval()
    ids = tokenizer.encode(data.captions)
    x = data.images.float() / 255
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(x), model.encode_image(x))
        torch.testing.assert_close(loaded.encode_text(ids), model.encode_text(ids))
    assert loaded.logit_scale.item() == 2.5
    card = json.loads((tmp_path / "clip.json").read_text())
    assert card["format"] == "sslpoison-clip" and card["extra"] == {"note": "x"}
    (tmp_path / "other.json").write_text(json.dumps({"format": "something"}))
    (tmp_path / "other.safetensors").write_bytes((tmp_path / "clip.safetensors").read_bytes())
    with pytest.raises(ValueError, match="not an sslpoison CLIP card"):
        load_clip(tmp_path / "other")
    with pytest.raises(FileNotFoundError, match=r"missing.safetensors"):
        load_clip(tmp_path / "missing")


def test_pretrain_clip_needs_captions_and_learns() -> None:
    cfg = PretrainConfig(
        method="clip",
        method_args={"embed_dim": 16},
        backbone=TINY.backbone,
        text=TINY.text,
        train=TrainConfig(epochs=3, batch_size=32, progress=False, checkpoint_every=0),
    )
    data = synthetic(n=64, num_classes=4, size=16, channels=1, seed=0)
    with pytest.raises(ValueError, match="no captions"):
        pretrain_clip(data, cfg)
    model, tokenizer, result = pretrain_clip(caption_imageset(data), cfg, seed=0)
    assert isinstance(model, CLIP) and tokenizer.vocab_size > 4 + 4
    assert len(result.losses) == 3 and result.losses[-1] < result.losses[0]
