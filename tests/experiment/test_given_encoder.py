"""Whole runs on an encoder that came in through ``encoder:``: BadEncoder on a Hugging Face
CLIP (with zero-shot evaluation through its own text tower, and the attacked encoder
exported back as a folder transformers reads), the defenses and DECREE on a ViT from an
OpenAI-CLIP state dict (a ResNet student distilling from it, fine-pruning its features),
indiscriminate poisoning on its frozen features, and the ``export`` / ``encoder inspect``
commands on the result."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_BADENCODER
from sslpoison.cli import main
from sslpoison.models import build_backbone
from sslpoison.models.layouts import LAYOUTS

pytest.importorskip("transformers")

#: A CLIP-style ViT (so that it exports as a transformers CLIPVisionModel).
VIT_ARGS = {"patch_size": 4, "depth": 2, "heads": 2, "ln_pre": True, "patch_bias": False}
#: conftest's tiny BadEncoder, with the larger steps a ViT needs.
ATTACK = TINY_BADENCODER | {
    "train": {
        **TINY_BADENCODER["train"],
        "optimizer": {"name": "adam", "lr": 6e-3, "weight_decay": 0.0},
    }
}


def given_run(tiny_experiment: dict, encoder: dict, **sections) -> dict:
    cfg = dict(tiny_experiment, encoder=encoder, threads=1, **sections)
    cfg["eval"] = {**cfg["eval"], "probes": ["linear"], "baselines": ["random_init"]}
    return cfg


def test_zero_shot_through_a_given_clips_text_tower_is_transformers_own(
    tmp_path, tiny_experiment, write_config, tiny_clip_folder
):
    """No training: the run's zero-shot accuracy of a given CLIP folder equals the one
    computed here with transformers' CLIPModel on the same (fitted) test images."""
    import transformers

    from sslpoison.data.captions import class_prompts
    from sslpoison.data.registry import load_fitted

    folder = tiny_clip_folder()
    cfg = given_run(tiny_experiment, {"source": "hf", "path": str(folder)})
    cfg["eval"] |= {"probes": ["knn"], "baselines": [], "test_subset": 64}
    out = tmp_path / "run"
    assert main(["run", write_config(cfg), "--out", str(out)]) == 0
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    # the reference: transformers' CLIP, the prompt ensemble, on the grey images as RGB
    test = load_fitted("synthetic", "test", 16, 3).take(64, seed=0)
    model = transformers.CLIPModel.from_pretrained(str(folder)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        pixels = (test.images.float() / 255 - mean) / std
        image = F.normalize(
            model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output), dim=-1
        )
        weights = []
        for name in test.classes:
            ids = tokenizer(class_prompts(name), padding=True, return_tensors="pt")["input_ids"]
            text = model.text_projection(model.text_model(input_ids=ids).pooler_output)
            weights.append(F.normalize(F.normalize(text, dim=-1).mean(0), dim=0))
        predicted = (image @ torch.stack(weights).T).argmax(1)
    expected = (predicted == test.labels).float().mean().item()
    assert metrics["synthetic/zs_acc_clean"] == pytest.approx(expected)


def test_badencoder_on_a_vit_that_came_in_through_encoder_hf(
    tmp_path, tiny_experiment, write_config, caplog, capsys
):
    """The CPU presets' chain on tiny data: a ViT pre-trained (SimCLR) and exported as a
    Hugging Face folder, given back through ``encoder: {source: hf}`` and backdoored; the
    attacked encoder, exported again, loads with transformers and matches ours."""
    caplog.set_level(logging.INFO)
    vit = {"arch": "vit", "width": 32, "args": VIT_ARGS}
    first = dict(tiny_experiment, threads=1, export=[{"format": "hf"}])
    first["pretrain"] = {**first["pretrain"], "backbone": vit}
    first["pretrain"]["train"] = {**first["pretrain"]["train"], "epochs": 8}
    first["pretrain"]["train"]["optimizer"] = {"name": "adamw", "lr": 3e-3, "weight_decay": 1e-4}
    pretrained = tmp_path / "vit"
    assert main(["run", write_config(first), "--out", str(pretrained)]) == 0
    exported = pretrained / "export" / "hf"
    cfg = given_run(
        dict(tiny_experiment, threads=1), {"source": "hf", "path": str(exported)},
        attack=ATTACK, export=[{"format": "hf"}],
    )  # fmt: skip
    out = tmp_path / "run"
    assert main(["run", write_config(cfg), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    given = results["stages"]["pretrain"]["given"]
    assert (given["source"], given["layout"], given["output"]) == ("hf", "hf", "pooled")
    assert given["input"]["size"] == 16 and given["input"]["channels"] == 1
    assert "encoder: given, so it takes precedence" in caplog.text  # pretrain: was set
    metrics = results["metrics"]
    assert metrics["synthetic/asr"] >= 0.7 and metrics["synthetic/asr_b"] <= 0.1
    assert metrics["synthetic/ca"] - metrics["synthetic/ba"] <= 0.1
    import transformers

    back = transformers.CLIPVisionModel.from_pretrained(str(out / "export" / "hf")).eval()
    from sslpoison.models import load_encoder

    mine = load_encoder(out / "encoder")
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        theirs = back(pixel_values=(x - mine.mean) / mine.std).pooler_output
        cos = F.cosine_similarity(theirs, mine(x), dim=1)
    assert cos.min() >= 0.9999
    # the export command: the attacked encoder by default, as safetensors
    capsys.readouterr()
    assert main(["export", str(out), "--format", "safetensors", "--out", str(tmp_path / "a")]) == 0
    assert "the attacked encoder (default: the attacked encoder)" in capsys.readouterr().out
    assert (tmp_path / "a.safetensors").exists()


def test_defenses_decree_and_inspect_on_a_given_vit(
    tmp_path, tiny_experiment, write_config, capsys
):
    torch.manual_seed(0)
    vit = build_backbone(
        "vit", image_size=16, patch_size=4, width=32, depth=2, heads=2, in_channels=1,
        act="quick_gelu", eps=1e-5, ln_pre=True, patch_bias=False,
    )  # fmt: skip
    path = tmp_path / "clip-vit.pt"
    torch.save(LAYOUTS["openai-clip"].from_ours(vit.state_dict()), path)
    student = {"epochs": 1, "batch_size": 32, "progress": False}
    resnet = {"arch": "resnet10", "width": 0.125}
    cfg = given_run(
        tiny_experiment,
        {"source": "file", "path": str(path), "layout": "openai-clip", "args": {"heads": 2}},
        attack={**ATTACK, "train": {**ATTACK["train"], "epochs": 1}},
        defenses=[
            {"name": "mimic", "clean": 64, "student_arch": resnet, "mi": {"epochs": 1},
             "train": student},
            {"name": "feature_distill", "clean": 64, "student_arch": resnet, "train": student},
            {"name": "fineprune", "clean": 64, "prune": 0.25, "train": student},
            {"name": "distill", "clean": 64, "bank": 64, "student_arch": resnet, "train": student},
            {"name": "finetune", "clean": 64, "train": student},
        ],
        detectors=[{"name": "decree", "clean": 64, "train": {**student, "epochs": 2}}],
    )  # fmt: skip
    out = tmp_path / "run"
    assert main(["run", write_config(cfg), "--out", str(out)]) == 0
    stages = json.loads((out / "results.json").read_text())["stages"]
    assert stages["pretrain"]["given"]["arch"] == "vit"
    assert stages["defense:mimic"]["student_arch"] == "resnet10"
    assert stages["defense:feature_distill"]["student_arch"] == "resnet10"
    assert stages["defense:fineprune"]["pruned_channels"] == 8  # a quarter of 32 features
    assert stages["defense:distill"]["student_dim"] == 64  # the ResNet's, against the ViT's 32
    assert stages["defense:distill"]["teacher_dim"] == 32 and "defense:finetune" in stages
    assert "flagged" in stages["detect:decree:attacked"]
    # the defended encoder exported in the layout the ViT came in: OpenAI CLIP's names
    capsys.readouterr()
    args = ["export", str(out), "--encoder", "fineprune", "--format", "safetensors"]
    assert main([*args, "--out", str(tmp_path / "fp")]) == 2  # pruned: only as ours
    assert "pruned" in capsys.readouterr().err
    assert main(["export", str(out), "--encoder", "attacked", "--format", "safetensors",
                 "--out", str(tmp_path / "att")]) == 0  # fmt: skip
    from safetensors.torch import load_file

    assert "visual.transformer.resblocks.1.attn.in_proj_weight" in load_file(
        tmp_path / "att.safetensors"
    )
    capsys.readouterr()
    assert (
        main(["encoder", "inspect", str(tmp_path / "att.safetensors"), "--layout", "openai-clip"])
        == 0
    )
    shown = capsys.readouterr().out
    assert "layout    openai-clip" in shown and "16×16 px, 1 channel(s)" in shown


def test_indiscriminate_poisoning_on_a_given_encoders_frozen_features(
    tmp_path, tiny_experiment, write_config
):
    torch.manual_seed(0)
    encoder = build_backbone("resnet10", width=0.125, in_channels=1)
    torch.save(LAYOUTS["torchvision"].from_ours(encoder.state_dict()), tmp_path / "r10.pth")
    cfg = given_run(
        tiny_experiment, {"source": "file", "path": str(tmp_path / "r10.pth")},
        attack={"name": "label_flip", "epsilon": 0.1},
    )  # fmt: skip
    assert main(["run", write_config(cfg), "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "results.json").read_text())["metrics"]
    assert any(k.endswith("acc_drop") for k in metrics), sorted(metrics)
