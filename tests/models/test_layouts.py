"""Every named checkpoint layout: a state dict as that code names it (with what is not the
image encoder beside it: classifiers, momentum encoders, queues, text towers) is detected
from its key names, its shapes are read from the tensors, and it loads into our module with
the same features as the encoder it was made from."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

from sslpoison.errors import ModelFileError
from sslpoison.models import build_backbone
from sslpoison.models.layouts import LAYOUTS, detect_layouts
from sslpoison.models.sources import EncoderSource, load_source

X3 = torch.rand(2, 3, 32, 32)


def resnet(depth: int = 18, **kw):
    torch.manual_seed(0)
    model = build_backbone(f"resnet{depth}", width=0.125, **kw).eval()
    with torch.no_grad():  # BatchNorm statistics away from 0/1, so a mix-up shows
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                b.normal_(0, 0.1)
    return model


def vit(**kw):
    torch.manual_seed(0)
    args = {"image_size": 32, "patch_size": 8, "width": 64, "depth": 2, "heads": 1} | kw
    return build_backbone("vit", **args).eval()


def save(state: dict, path) -> str:
    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return str(path)


def load(path: str, **fields):
    return load_source(EncoderSource(source="file", path=path, **fields))


def same_features(a, b, x=X3) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-4)


def test_torchvision_resnet50(tmp_path):
    source = resnet(50, stem="imagenet")
    state = LAYOUTS["torchvision"].from_ours(source.state_dict())
    # torchvision's own names
    assert {"conv1.weight", "bn1.running_var", "layer2.0.downsample.0.weight"} <= set(state)
    assert "layer1.0.conv3.weight" in state and "mean" not in state
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 256), torch.zeros(1000)
    assert detect_layouts(state) == ["torchvision"]
    loaded = load(save(state, tmp_path / "r50.pth"), input={"mean": [0.5] * 3, "std": [0.25] * 3})
    assert loaded.record["arch"] == "resnet50" and loaded.record["layout"] == "torchvision"
    assert loaded.encoder.card["args"]["stem"] == "imagenet"  # the 7×7 conv1
    assert loaded.encoder.feature_dim == 256  # the classifier dropped
    assert loaded.input.size == 224  # torchvision's preset
    same_features(loaded.encoder, source)
    # without the override: ImageNet's normalisation
    plain = load(str(tmp_path / "r50.pth"))
    assert plain.input.mean == pytest.approx((0.485, 0.456, 0.406))


def test_moco_keeps_the_query_encoder_and_its_head_on_request(tmp_path):
    source = resnet(18, stem="imagenet")
    tv = LAYOUTS["torchvision"].from_ours(source.state_dict())
    head = {"fc.0.weight": torch.randn(32, 64), "fc.0.bias": torch.randn(32)}
    head |= {"fc.2.weight": torch.randn(16, 32), "fc.2.bias": torch.randn(16)}
    state = {f"module.encoder_q.{k}": v for k, v in (tv | head).items()}
    state |= {f"module.encoder_k.{k}": torch.zeros_like(v) for k, v in tv.items()}
    state["module.queue"] = torch.randn(16, 4096)
    path = tmp_path / "moco.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": state}, path)
    assert detect_layouts(state) == ["moco"]
    loaded = load(str(path), input={"mean": [0.5] * 3, "std": [0.25] * 3})
    assert loaded.record["layout"] == "moco" and loaded.encoder.feature_dim == 64
    same_features(loaded.encoder, source)
    kept = load(str(path), head="keep", input={"mean": [0.5] * 3, "std": [0.25] * 3})
    assert kept.encoder.card["args"]["head"] == [
        ["linear", 64, 32, True], ["relu"], ["linear", 32, 16, True]
    ]  # fmt: skip
    with torch.no_grad():
        z = torch.relu(source(X3) @ head["fc.0.weight"].T + head["fc.0.bias"])
        torch.testing.assert_close(
            kept.encoder(X3), z @ head["fc.2.weight"].T + head["fc.2.bias"], atol=1e-5, rtol=1e-4
        )


def test_solo_learn_cifar_resnet_pads_its_stem_by_two(tmp_path):
    source = resnet(18, stem_padding=2)
    tv = LAYOUTS["torchvision"].from_ours(source.state_dict())
    state = {f"backbone.{k}": v for k, v in tv.items()}
    state |= {
        "projector.0.weight": torch.randn(32, 64),
        "projector.1.running_mean": torch.zeros(32),
    }
    state |= {"projector.1.weight": torch.ones(32), "projector.1.bias": torch.zeros(32)}
    state |= {"projector.1.running_var": torch.ones(32), "projector.3.weight": torch.randn(8, 32)}
    state |= {f"momentum_backbone.{k}": v for k, v in tv.items()}
    state["classifier.weight"] = torch.randn(10, 64)
    assert detect_layouts(state) == ["solo-learn"]
    loaded = load(save(state, tmp_path / "solo.ckpt"), input={"mean": [0.5] * 3, "std": [0.25] * 3})
    assert loaded.encoder.card["args"]["stem_padding"] == 2 and loaded.input.size == 32
    same_features(loaded.encoder, source)
    kept = load(str(tmp_path / "solo.ckpt"), head="keep")
    assert kept.encoder.card["args"]["head"][:3] == [
        ["linear", 64, 32, False],
        ["bn", 32],
        ["relu"],
    ]


def test_the_badencoder_repository_layout(tmp_path):
    source = resnet(18)
    tv = LAYOUTS["torchvision"].from_ours(source.state_dict())
    names = {"conv1": "f.f.0", "bn1": "f.f.1", "layer1": "f.f.3", "layer2": "f.f.4"}
    names |= {"layer3": "f.f.5", "layer4": "f.f.6"}
    state = {}
    for key, value in tv.items():
        first, rest = key.split(".", 1)
        state[f"{names[first]}.{rest}"] = value
    state |= {"g.0.weight": torch.randn(32, 64), "g.3.weight": torch.randn(8, 32)}
    assert detect_layouts(state) == ["badencoder"]
    loaded = load(save({"state_dict": state}, tmp_path / "model_200.pth"))
    assert loaded.record["arch"] == "resnet18" and loaded.input.size == 32
    assert loaded.input.mean == pytest.approx((0.4914, 0.4822, 0.4465))
    loaded.encoder.mean.copy_(source.mean.expand_as(loaded.encoder.mean))
    loaded.encoder.std.copy_(source.std.expand_as(loaded.encoder.std))
    same_features(loaded.encoder, source)
    back = LAYOUTS["badencoder"].from_ours(loaded.encoder.state_dict())
    assert set(back) == {k for k in state if not k.startswith("g.")}


def test_openai_clip_vit_and_the_ambiguity_with_open_clip(tmp_path):
    source = vit(act="quick_gelu", eps=1e-5, ln_pre=True, patch_bias=False, proj_dim=16)
    state = LAYOUTS["openai-clip"].from_ours(source.state_dict())
    assert state["visual.proj"].shape == (64, 16)  # used as x @ proj
    assert state["visual.class_embedding"].shape == (64,)
    assert "visual.transformer.resblocks.1.mlp.c_fc.weight" in state
    state |= {"token_embedding.weight": torch.randn(100, 64), "logit_scale": torch.tensor(4.6)}
    state["transformer.resblocks.0.attn.in_proj_weight"] = torch.randn(192, 64)  # the text tower
    path = save(state, tmp_path / "clip.pt")
    with pytest.raises(ModelFileError, match="openai-clip, open_clip alike"):
        load(path)
    loaded = load(
        path, layout="openai-clip", args={"heads": 1}, input={"mean": [0.5] * 3, "std": [0.5] * 3}
    )
    assert loaded.encoder.feature_dim == 16 and loaded.input.size == 32  # 4×4 patches of 8
    same_features(loaded.encoder, source)
    # open_clip's trainer saves under module.: no ambiguity; GELU is its activation
    gelu = vit(eps=1e-5, ln_pre=True, patch_bias=False, proj_dim=16)
    theirs = {
        f"module.{k}": v for k, v in LAYOUTS["open_clip"].from_ours(gelu.state_dict()).items()
    }
    assert detect_layouts(theirs) == ["open_clip"]
    mine = load(
        save(theirs, tmp_path / "oc.pt"),
        args={"heads": 1},
        input={"mean": [0.5] * 3, "std": [0.5] * 3},
    )
    same_features(mine.encoder, gelu)
    with pytest.raises(ModelFileError, match=r"encoder\.arch: vit_b_32 does not fit"):
        load(path, layout="openai-clip", arch="vit_b_32")


def test_openai_clip_modified_resnet(tmp_path):
    torch.manual_seed(0)
    source = build_backbone(
        "modified_resnet", layers=[1, 2, 1, 1], output_dim=24, heads=2, image_size=64, base_width=16
    ).eval()  # fmt: skip
    state = LAYOUTS["openai-clip"].from_ours(source.state_dict())
    assert {"visual.conv3.weight", "visual.layer2.0.downsample.0.weight"} <= set(state)
    assert "visual.attnpool.c_proj.weight" in state
    assert detect_layouts(state) == ["openai-clip"]
    loaded = load(save(state, tmp_path / "rn.pt"), args={"heads": 2})
    args = loaded.encoder.card["args"]
    assert (args["layers"], args["base_width"], args["output_dim"]) == ([1, 2, 1, 1], 16, 24)
    assert loaded.input.size == 64 and loaded.record["arch"] == "modified_resnet"
    same_features(loaded.encoder, source, torch.rand(2, 3, 64, 64))


def test_timm_and_dino_vits(tmp_path):
    source = vit(proj_dim=10, proj_bias=True, layer_scale=True)
    state = LAYOUTS["timm"].from_ours(source.state_dict())
    assert state["cls_token"].shape == (1, 1, 64) and state["pos_embed"].shape == (1, 17, 64)
    assert {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "norm.weight"} <= set(state)
    assert {"blocks.1.ls1.gamma", "head.weight", "head.bias"} <= set(state)
    state["mask_token"] = torch.zeros(1, 64)  # DINOv2's, not the encoder's
    assert detect_layouts(state) == ["timm"]
    path = save(state, tmp_path / "dino.pth")
    loaded = load(path, args={"heads": 1}, input={"mean": [0.5] * 3, "std": [0.5] * 3})
    assert loaded.encoder.feature_dim == 64  # the classifier head dropped
    bare = copy.deepcopy(source)
    bare.proj = None
    same_features(loaded.encoder, bare)
    kept = load(path, head="keep", args={"heads": 1}, input={"mean": [0.5] * 3, "std": [0.5] * 3})
    same_features(kept.encoder, source)


def test_our_own_weights_without_a_card_and_the_key_map(tmp_path):
    source = resnet(18)
    state = {f"model.{k}": v for k, v in source.state_dict().items()}
    path = save(state, tmp_path / "ours.safetensors")
    with pytest.raises(ModelFileError, match="fit no known layout"):
        load(path)
    loaded = load(path, key_map={r"^model\.": ""})
    assert loaded.record["layout"] == "sslpoison" and loaded.record["arch"] == "resnet18"
    same_features(loaded.encoder, source)
    with pytest.raises(ModelFileError, match=r"encoder\.arch: resnet50 does not fit .* resnet"):
        load(path, key_map={r"^model\.": ""}, arch="resnet50")
    # a missing tensor: the error lists it
    del state["model.layer4.1.bn2.weight"]
    with pytest.raises(ModelFileError, match=r"1 missing \(first: layer4.1.bn2.weight\)"):
        load(save(state, tmp_path / "broken.safetensors"), key_map={r"^model\.": ""})
