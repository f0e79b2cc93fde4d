"""SafeCLIP's pieces against plain computations: the safe/risky split of the cosines, the
per-batch loss (CLIP's on safe pairs, unimodal NT-Xent on risky ones), and a tiny run."""

from __future__ import annotations

import json

import pytest
import torch

from sslpoison.cli import main
from sslpoison.data.augment import to_float
from sslpoison.defenses import DEFENSES
from sslpoison.defenses.safeclip import SafeCLIPTask, pair_cosines, safe_split
from sslpoison.models.backbone import BackboneConfig, build_encoder
from sslpoison.models.text import TextConfig
from sslpoison.ssl.clip import CLIP, clip_loss
from sslpoison.ssl.simclr import nt_xent


def test_the_split_takes_the_high_component_up_to_the_share():
    g = torch.Generator().manual_seed(0)
    low = 0.1 + 0.03 * torch.randn(40, generator=g)  # 40 poisoned-like pairs
    high = 0.7 + 0.05 * torch.randn(360, generator=g)
    cosines = torch.cat([low, high])
    safe, facts = safe_split(cosines, share=1.0)
    assert not safe[:40].any() and safe[40:].all()
    assert facts["safe"] == 360 and max(facts["means"]) == pytest.approx(0.7, abs=0.02)
    capped, _ = safe_split(cosines, share=0.5)  # the 200 highest cosines, all of them high
    assert capped.sum() == 200 and not capped[:40].any()
    assert torch.equal(capped, cosines >= cosines.sort(descending=True).values[199])


@pytest.fixture
def model():
    torch.manual_seed(0)
    backbone = build_encoder(BackboneConfig(arch="resnet10", width=0.125), 1)
    tok_cfg = TextConfig(width=16, layers=1, heads=2, context_length=8)
    tokenizer = tok_cfg.build_tokenizer(["a photo of a cat", "a photo of a dog"])
    return CLIP(backbone, tok_cfg.build(tokenizer, 16)), tokenizer


def test_the_loss_is_clips_on_safe_pairs_and_unimodal_on_risky_ones(model):
    clip, tokenizer = model
    images = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8)
    ids = tokenizer.encode(["a photo of a cat", "a photo of a dog"] * 3)
    identity = torch.nn.Identity()
    task = SafeCLIPTask(clip, None, identity, temperature=0.5, text_mask=0.0, unk_id=1).eval()
    safe = torch.tensor([True, True, True, True, False, False])
    got = task(images, ids, safe)
    x = to_float(images)
    pair = clip_loss(clip.encode_image(x[:4]), clip.encode_text(ids[:4]), clip.scale())
    z = clip.encode_image(torch.cat([x[4:], x[4:]]))
    t = clip.encode_text(torch.cat([ids[4:], ids[4:]]))
    uni = nt_xent(z[:2], z[2:], 0.5) + nt_xent(t[:2], t[2:], 0.5)
    assert torch.allclose(got, pair * 4 / 6 + uni / 2 * 2 / 6, atol=1e-5)
    everything = task(images, ids, torch.ones(6, dtype=torch.bool))
    full = clip_loss(clip.encode_image(x), clip.encode_text(ids), clip.scale())
    assert torch.allclose(everything, full, atol=1e-5)
    assert (pair_cosines(clip, images, ids) <= 1 + 1e-5).all()


def test_text_masking_hides_words_only(model):
    clip, tokenizer = model
    task = SafeCLIPTask(clip, None, None, temperature=0.5, text_mask=0.99, unk_id=1)
    ids = tokenizer.encode(["a photo of a cat"] * 4)
    masked = task.masked(ids)
    words = ids > 3
    assert (masked[words] == 1).float().mean() > 0.9 and torch.equal(masked[~words], ids[~words])


def test_safeclip_needs_clip_pre_training(tmp_path, write_config, tiny_experiment):
    from sslpoison.experiment.config import ConfigError, load_config

    tiny_experiment["defenses"] = [{"name": "safeclip"}]
    with pytest.raises(ConfigError, match="safeclip trains CLIP on image–caption pairs"):
        load_config(write_config(tiny_experiment))
    with pytest.raises(ValueError, match="share: need 0 < start ≤ end ≤ 1"):
        DEFENSES["safeclip"](share=(0.9, 0.5))


CLIP_RUN = {
    "name": "tiny-safeclip",
    "seed": 0,
    "data": {"dataset": "synthetic"},
    "pretrain": {
        "method": "clip",
        "method_args": {"embed_dim": 32},
        "backbone": {"width": 0.125},
        "text": {"width": 32, "layers": 1, "heads": 2, "context_length": 16},
        "augment": {"crop_scale": [1.0, 1.0]},
        "train": {
            "epochs": 3,
            "batch_size": 64,
            "progress": False,
            "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
        },
    },
    "attack": {
        "name": "clip_backdoor",
        "target_class": "vertical",
        "poison": 40,
        "trigger": {"kind": "noise", "size": 5, "position": [10, 10]},
    },
    "defenses": [
        {"name": "safeclip", "warmup_epochs": 1, "align_epochs": 1, "epochs": 2},
        {"name": "spectral", "clusters": 4},
    ],
    "eval": {
        "datasets": ["synthetic"],
        "labelled": 256,
        "probes": ["linear"],
        "baselines": [],
        "probe": {"epochs": 20},
    },
}


@pytest.mark.slow
def test_safeclip_and_a_filter_run_on_clip_pre_training(tmp_path, write_config):
    out = tmp_path / "a"
    assert main(["run", write_config(CLIP_RUN), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    m, stages = results["metrics"], results["stages"]
    # SafeCLIP trained its own model (no pre-training again); spectral pre-trained CLIP again.
    assert "pretrain:safeclip" not in stages and "pretrain:spectral" in stages
    splits = stages["defense:safeclip"]["splits"]
    assert [s["epoch"] for s in splits] == [1, 2] and splits[0]["share"] == 0.5
    assert splits[1]["share"] == 0.9 and splits[1]["safe"] <= 0.9 * 512
    assert set(stages["defense:safeclip"]["phase_losses"]) == {"warmup", "align", "split"}
    for name in ("safeclip", "spectral"):  # zero-shot after training again, beside the others
        for metric in ("zs_acc", "zs_asr"):
            assert f"{name}/synthetic/{metric}" in m
        for metric in ("poison_precision", "poison_recall", "poison_auroc", "clean_removed"):
            assert 0 <= m[f"{name}/{metric}"] <= 1
    assert "synthetic/zs_asr" in m and "synthetic/zs_asr_clean" in m
    assert m["safeclip/removed"] == 512 - splits[-1]["safe"]
    assert (out / "encoder-safeclip.safetensors").exists()
    assert "safeclip" in (out / "summary.md").read_text()
