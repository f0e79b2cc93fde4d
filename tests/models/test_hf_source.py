"""``encoder: {source: hf}``: a Hugging Face folder (written here with ``save_pretrained``)
wrapped as an encoder — its outputs against transformers' own, its input from the
processor config, its text tower for zero-shot, a reload from its card without the folder
(the stage cache), a fresh draw for the random-init baseline — and the export round trips:
loaded back with transformers (or as a plain state dict), the features match ours."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from sslpoison.defenses.base import reinitialise
from sslpoison.errors import ModelFileError
from sslpoison.models import build_backbone, load_encoder, save_encoder
from sslpoison.models.export import ExportError, export_encoder
from sslpoison.models.inputs import CLIP_MEAN, CLIP_STD
from sslpoison.models.sources import EncoderSource, load_source
from sslpoison.ssl.clip import zero_shot_classifier, zero_shot_predict

transformers = pytest.importorskip("transformers")

X = torch.rand(4, 3, 16, 16)


def hf(path, **fields):
    return load_source(EncoderSource(source="hf", path=str(path), **fields))


def normalised(x: torch.Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def test_a_clip_folder_gives_each_output_and_its_text_tower(tiny_clip_folder):
    folder = tiny_clip_folder()
    reference = transformers.CLIPModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        vision = reference.vision_model(pixel_values=normalised(X))
        embeds = reference.visual_projection(vision.pooler_output)
    loaded = hf(folder)  # CLIP: the projection by default
    assert loaded.record["output"] == "proj" and loaded.encoder.feature_dim == 24
    assert loaded.input.size == 16 and loaded.input.mean == pytest.approx(tuple(CLIP_MEAN))
    with torch.no_grad():
        torch.testing.assert_close(loaded.encoder(X), embeds, atol=1e-5, rtol=1e-4)
        pooled = hf(folder, output="pooled").encoder(X)
        cls = hf(folder, output="cls").encoder(X)
    torch.testing.assert_close(pooled, vision.pooler_output, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cls, vision.last_hidden_state[:, 0], atol=1e-5, rtol=1e-4)
    # the text tower: the zero-shot classifier of transformers' own text embeddings
    assert loaded.text is not None
    from sslpoison.models.hf import PairedCLIP

    model = PairedCLIP(loaded.encoder, loaded.text)
    weights = zero_shot_classifier(model, loaded.text.tokenizer, ["vertical", "grid plaid"])
    ids = loaded.text.tokenizer.encode(["a photo of a vertical."])
    with torch.no_grad():
        mine = model.encode_text(ids)
        pooled_text = reference.text_model(input_ids=ids).pooler_output
        theirs = F.normalize(reference.text_projection(pooled_text), dim=-1)
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)
    assert weights.shape == (24, 2)
    images = (X * 255).to(torch.uint8)
    assert zero_shot_predict(model, weights, images).shape == (4,)


def test_the_processor_config_sets_the_input_and_input_overrides_it(tiny_clip_folder):
    folder = tiny_clip_folder(channels=1, text=False)
    (folder / "preprocessor_config.json").write_text(
        '{"crop_size": {"height": 16, "width": 16}, "image_mean": [0.3], "image_std": [0.2]}'
    )
    loaded = hf(folder, output="pooled")
    assert loaded.input.channels == 1
    assert loaded.input.mean == pytest.approx((0.3,)) and loaded.input.std == pytest.approx((0.2,))
    assert loaded.text is None
    other = hf(folder, output="pooled", input={"mean": [0.5], "std": [0.5]})
    assert other.input.mean == (0.5,) and other.encoder.card["args"]["mean"] == [0.5]
    with pytest.raises(ModelFileError, match="takes 16×16 images"):
        hf(folder, input={"size": 32})
    with pytest.raises(ModelFileError, match="1-channel images, not 3"):
        hf(folder, input={"channels": 3})


def test_a_wrapped_model_reloads_from_its_card_without_the_folder(tiny_clip_folder, tmp_path):
    folder = tiny_clip_folder(text=False)
    loaded = hf(folder)
    save_encoder(loaded.encoder, tmp_path / "enc")
    shutil.rmtree(folder)  # the card holds the config: nothing is read from the folder
    again = load_encoder(tmp_path / "enc")
    assert again.card["source"] == {"source": "hf", "path": str(folder), "layout": "hf"}
    with torch.no_grad():
        torch.testing.assert_close(again(X), loaded.encoder(X))
    # the random-init baseline: the same architecture, every weight drawn again
    fresh = reinitialise(loaded.encoder, seed=5)
    assert fresh(X).shape == (4, 24)
    same = [
        torch.equal(a, b)
        for a, b in zip(fresh.parameters(), loaded.encoder.parameters(), strict=True)
        if a.numel() > 64 and a.std() > 0  # not the zero biases of either init
    ]
    assert not any(same)


def test_hf_export_loads_back_with_transformers(tiny_clip_folder, tmp_path):
    """An attacked copy of a given HF encoder, handed back as a folder: transformers reads
    it and its features match ours (cosine ≥ 0.9999 on clean images)."""
    loaded = hf(tiny_clip_folder())
    with torch.no_grad():  # stand-in for an attack: the weights moved
        for p in loaded.encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = export_encoder(loaded.encoder, "hf", tmp_path / "hf")
    back = transformers.CLIPVisionModelWithProjection.from_pretrained(str(out)).eval()
    with torch.no_grad():
        theirs = back(pixel_values=normalised(X)).image_embeds
        cos = F.cosine_similarity(theirs, loaded.encoder(X), dim=1)
    assert cos.min() >= 0.9999
    reread = hf(out)  # our own loader reads it too, normalisation included
    assert reread.input.mean == pytest.approx(tuple(CLIP_MEAN))
    with pytest.raises(ExportError, match="Hugging Face model"):
        export_encoder(loaded.encoder, "torchvision", tmp_path / "tv.pth")


def test_our_vit_exports_as_a_clip_vision_model(tmp_path):
    torch.manual_seed(0)
    vit = build_backbone(
        "vit", image_size=16, patch_size=4, width=32, depth=2, heads=2, in_channels=1,
        act="quick_gelu", eps=1e-5, ln_pre=True, patch_bias=False, mean=[0.3], std=[0.2],
    ).eval()  # fmt: skip
    x = torch.rand(4, 1, 16, 16)
    out = export_encoder(vit, "hf", tmp_path / "hf")
    back = transformers.CLIPVisionModel.from_pretrained(str(out)).eval()
    with torch.no_grad():
        theirs = back(pixel_values=(x - 0.3) / 0.2).pooler_output
        cos = F.cosine_similarity(theirs, vit(x), dim=1)
    assert cos.min() >= 0.9999
    reread = hf(out)
    assert reread.input.mean == pytest.approx((0.3,)) and reread.encoder.feature_dim == 32
    with torch.no_grad():
        torch.testing.assert_close(reread.encoder(x), vit(x), atol=1e-5, rtol=1e-4)
    timm_style = build_backbone("vit", image_size=16, patch_size=4, width=32, depth=1, heads=2)
    with pytest.raises(ExportError, match=r"not one \(it has no ln_pre"):
        export_encoder(timm_style, "hf", tmp_path / "no")


def test_plain_exports_load_back_as_state_dicts(tmp_path):
    torch.manual_seed(0)
    resnet = build_backbone("resnet18", width=0.125, stem="imagenet").eval()
    resnet.card["source"] = {"source": "file", "layout": "moco", "path": "x"}
    x = torch.rand(2, 3, 32, 32)
    pth = export_encoder(resnet, "torchvision", tmp_path / "r18")
    state = torch.load(pth, weights_only=True)
    assert "conv1.weight" in state and "layer2.0.downsample.0.weight" in state
    st = export_encoder(resnet, "safetensors", tmp_path / "moco")  # the layout it came in
    for path in (pth, st):
        again = load_source(EncoderSource(source="file", path=str(path)))
        expected = "torchvision" if path == pth else "moco"
        assert again.record["layout"] == expected
        _set_input(again.encoder, resnet)
        with torch.no_grad():
            cos = F.cosine_similarity(again.encoder(x), resnet(x), dim=1)
        assert cos.min() >= 0.9999
    pruned = build_backbone("resnet18", width=0.125, pruned=[0, 1])
    with pytest.raises(ExportError, match="pruned"):
        export_encoder(pruned, "torchvision", tmp_path / "p")


def _set_input(encoder, like) -> None:
    encoder.mean.copy_(like.mean)
    encoder.std.copy_(like.std)
