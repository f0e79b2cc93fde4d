"""Our ViT and CLIP's ModifiedResNet: shapes, stage maps, the reference computations they
must match (transformers' CLIPVisionModel on the same weights; the attention pool as
``F.multi_head_attention_forward`` computes it in CLIP's code), and a fresh draw for the
random-init baseline and the distillation students."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sslpoison.defenses.base import reinitialise
from sslpoison.models import build_backbone, load_encoder, save_encoder
from sslpoison.models.backbone import BackboneConfig, build_encoder
from sslpoison.models.inputs import CLIP_MEAN, CLIP_STD
from sslpoison.models.layouts import LAYOUTS
from sslpoison.models.vit import stage_depths

TINY_VIT = {"image_size": 16, "patch_size": 4, "width": 32, "depth": 2, "heads": 2}


def tiny_vit(seed: int = 0, **changes):
    torch.manual_seed(seed)
    return build_backbone("vit", **{**TINY_VIT, **changes}).eval()


def test_vit_shapes_stages_and_features_agree():
    vit = tiny_vit(proj_dim=24, in_channels=1)
    x = torch.rand(3, 1, 16, 16)
    maps, z = vit.forward_stages(x)
    assert z.shape == (3, 24) and vit.feature_dim == 24
    assert [m.shape for m in maps] == [(3, 32, 4, 4)] * 4
    torch.testing.assert_close(z, vit(x))
    # the last map is the last block's patch tokens: the mean-pooled ViT pools exactly them
    mean = tiny_vit(pool="mean", in_channels=1)
    maps, z = mean.forward_stages(x)
    pooled = mean.ln_post(maps[-1].flatten(2).mean(2))
    torch.testing.assert_close(z, pooled)
    assert stage_depths(12) == [2, 5, 8, 11] and stage_depths(2) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="16×16"):
        vit(torch.rand(1, 1, 20, 20))


def test_the_backbone_config_builds_a_vit_at_the_data_size_and_keeps_old_keys():
    cfg = BackboneConfig(arch="vit", width=32, args={"patch_size": 4, "depth": 2, "heads": 2})
    vit = build_encoder(cfg, 1, 28)
    assert vit.card["args"]["image_size"] == 28 and vit.grid == 7 and vit.feature_dim == 32
    # no args: the dump is what it was before args existed (the presets' stage keys)
    assert "args" not in BackboneConfig(arch="resnet10").model_dump()
    with pytest.raises(ValueError, match="takes no stem"):
        BackboneConfig(arch="vit", stem="imagenet")
    with pytest.raises(ValueError, match=r"args\.depth: set by the name"):
        BackboneConfig(arch="resnet18", args={"depth": 50})
    with pytest.raises(ValueError, match=r"args\.bogus"):
        BackboneConfig(arch="vit", args={"bogus": 1})


def test_a_vit_saves_and_reloads_with_the_same_features(tmp_path):
    vit = tiny_vit(act="quick_gelu", ln_pre=True, patch_bias=False, proj_dim=8)
    save_encoder(vit, tmp_path / "v")
    again = load_encoder(tmp_path / "v")
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(again(x), vit(x))


def test_reinitialise_draws_every_vit_weight_afresh():
    vit = tiny_vit(layer_scale=True, proj_dim=8)
    fresh = reinitialise(vit, seed=3)
    for (name, a), (_, b) in zip(vit.named_parameters(), fresh.named_parameters(), strict=True):
        if a.numel() > 1 and a.std() > 0:  # LayerNorm ones/zeros stay as they are
            assert not torch.equal(a, b), name
    assert torch.equal(fresh.mean, vit.mean)


@pytest.mark.parametrize("projection", [False, True])
def test_our_vit_matches_transformers_clip_vision_model(projection):
    """One set of random weights, in transformers' CLIP layout and converted to ours: the
    features agree to 1e-4 (the reference computation of a CLIP vision tower)."""
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = tf.CLIPVisionConfig(
        hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        image_size=16, patch_size=4, projection_dim=24,
    )  # fmt: skip
    cls = tf.CLIPVisionModelWithProjection if projection else tf.CLIPVisionModel
    theirs = cls(config).eval()
    with torch.no_grad():  # LayerNorms away from identity, so the test sees them
        for name, p in theirs.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    ours_state = LAYOUTS["hf-clip"].to_ours(theirs.state_dict())
    vit = build_backbone(
        "vit", **TINY_VIT, act="quick_gelu", eps=1e-5, ln_pre=True, patch_bias=False,
        proj_dim=24 if projection else None, mean=CLIP_MEAN, std=CLIP_STD,
    ).eval()  # fmt: skip
    vit.load_state_dict(ours_state | {"mean": vit.mean, "std": vit.std})
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        out = theirs(pixel_values=(x - vit.mean) / vit.std)
        expected = out.image_embeds if projection else out.pooler_output
        got = vit(x)
    assert (got - expected).abs().max() <= 1e-4
    # the test can fail: a GELU instead of QuickGELU moves the features
    gelu = build_backbone(
        "vit", **TINY_VIT, eps=1e-5, ln_pre=True, patch_bias=False,
        proj_dim=24 if projection else None, mean=CLIP_MEAN, std=CLIP_STD,
    ).eval()  # fmt: skip
    gelu.load_state_dict(ours_state | {"mean": vit.mean, "std": vit.std})
    with torch.no_grad():
        assert (gelu(x) - expected).abs().max() > 1e-3


def test_the_attention_pool_is_clips_multi_head_attention():
    torch.manual_seed(0)
    model = build_backbone(
        "modified_resnet", layers=[1, 1, 1, 1], output_dim=24, heads=4, image_size=64,
        base_width=8,
    ).eval()  # fmt: skip
    pool = model.attnpool
    x = torch.randn(2, 256, 2, 2)  # the last stage's map: 4·8·8 channels, 64 / 32 = 2 cells
    # CLIP's own computation: sequence-first, the mean token prepended, q from it alone
    seq = x.flatten(2).permute(2, 0, 1)
    seq = torch.cat([seq.mean(0, keepdim=True), seq]) + pool.positional_embedding[:, None]
    expected, _ = F.multi_head_attention_forward(
        query=seq[:1], key=seq, value=seq, embed_dim_to_check=256, num_heads=4,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight, in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True, training=False, need_weights=False,
    )  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(pool(x), expected[0], atol=1e-5, rtol=1e-5)
    maps, z = model.forward_stages(torch.rand(2, 3, 64, 64))
    assert [m.shape[1] for m in maps] == [32, 64, 128, 256] and z.shape == (2, 24)
