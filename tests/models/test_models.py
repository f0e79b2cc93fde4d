"""Backbones, heads and the no-pickle encoder format."""

from __future__ import annotations

import json

import pytest
import torch

from sslpoison.models import build_backbone, load_encoder, mlp_head, save_encoder
from sslpoison.models.resnet import ResNet


@pytest.mark.parametrize(
    ("depth", "stem", "size", "dim"),
    [
        (10, "cifar", 16, 64),
        (18, "cifar", 16, 64),
        (34, "cifar", 16, 64),
        (50, "cifar", 16, 256),
        (18, "imagenet", 64, 64),
    ],
)
def test_resnet_shapes(depth, stem, size, dim):
    net = ResNet(depth=depth, width=0.125, in_channels=3, stem=stem)
    assert net.feature_dim == dim
    out = net(torch.rand(2, 3, size, size))
    assert out.shape == (2, dim)
    stages = net.stages(torch.rand(2, 3, size, size))
    assert [s.shape[1] for s in stages][-1] == dim and len(stages) == 4


def test_resnet10_has_one_block_per_stage():
    net = ResNet(depth=10, width=0.125)
    blocks = [len(layer) for layer in (net.layer1, net.layer2, net.layer3, net.layer4)]
    assert blocks == [1, 1, 1, 1]


def test_stem_stride_halves_the_feature_maps_and_grayscale_works():
    a = ResNet(width=0.125, in_channels=1, stem_stride=1).stages(torch.rand(1, 1, 28, 28))
    b = ResNet(width=0.125, in_channels=1, stem_stride=2).stages(torch.rand(1, 1, 28, 28))
    assert a[0].shape[-1] == 28 and b[0].shape[-1] == 14


def test_bad_backbone_arguments_are_refused():
    with pytest.raises(ValueError, match="depth"):
        ResNet(depth=19)
    with pytest.raises(ValueError, match="stem"):
        ResNet(stem="vit")
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet101")


def test_heads():
    head = mlp_head(16, 32, 8, layers=3)
    assert head(torch.rand(4, 16)).shape == (4, 8)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head) == 2


def test_encoder_round_trip_is_exact_and_never_unpickles(tmp_path, monkeypatch):
    enc = build_backbone(
        "resnet18", width=0.125, in_channels=1, stem_stride=2, mean=[0.3], std=[0.2]
    )
    with torch.no_grad():  # non-default BN statistics must survive too
        enc.layer1[0].bn1.running_mean.add_(1.5)
    path = save_encoder(enc, tmp_path / "enc", note="test")
    card = json.loads((tmp_path / "enc.json").read_text())
    assert card["arch"] == "resnet18" and card["args"]["stem_stride"] == 2
    assert card["extra"] == {"note": "test"}

    def no_pickle(*_a, **_k):
        raise AssertionError("loading must not unpickle")

    monkeypatch.setattr("pickle.load", no_pickle)
    monkeypatch.setattr("pickle.loads", no_pickle)
    monkeypatch.setattr("torch.load", no_pickle)
    back = load_encoder(path)
    for (k, a), (k2, b) in zip(enc.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    x = torch.rand(3, 1, 28, 28)
    enc.eval()
    back.eval()
    assert torch.equal(enc(x), back(x))


def test_loading_a_missing_or_foreign_encoder_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="card"):
        load_encoder(tmp_path / "nothing")
    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not an sslpoison encoder"):
        load_encoder(tmp_path / "x")
