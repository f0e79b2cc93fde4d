"""Bad ``encoder:`` sources and bad ``export`` / ``encoder inspect`` calls: each fails with
exit 2 and one line naming the file, folder, id or key; nothing is written (no output
folder, no stage trained); a pickle payload never runs."""

from __future__ import annotations

import copy
import os
import sys

import pytest
import torch
from damaged_files import Payload, garbage
from user_errors import assert_user_error, trained_stages

from sslpoison.models import build_backbone

ATTACK = {
    "name": "badencoder",
    "shadow": 32,
    "targets": [{"dataset": "synthetic", "target_class": "vertical", "trigger": {"size": 4}}],
    "train": {"epochs": 1, "batch_size": 16, "progress": False},
}


def run_with(tiny_run: dict, encoder: dict, attack: dict | None = ATTACK) -> dict:
    tiny_run["encoder"] = encoder
    if attack is not None:
        tiny_run["attack"] = copy.deepcopy(attack)
    return tiny_run


def plain_resnet18(path) -> str:
    torch.manual_seed(0)
    torch.save(build_backbone("resnet18", width=0.125, in_channels=1).state_dict(), path)
    return str(path)


def fails_cleanly(cli, write_yaml, cfg, out, cache_dir, *names) -> str:
    line = assert_user_error(*cli("run", write_yaml(cfg), "--out", out)[::2], *names)
    assert not out.exists(), "the output folder was written"
    assert trained_stages(cache_dir) == []
    return line


def test_a_missing_file(tmp_path, tiny_run, write_yaml, cli, cache_dir):
    path = tmp_path / "nowhere.pth"
    cfg = run_with(tiny_run, {"source": "file", "path": str(path)})
    fails_cleanly(cli, write_yaml, cfg, tmp_path / "out", cache_dir, "encoder:", path, "not found")


def test_an_architecture_that_does_not_fit_the_checkpoint(
    tmp_path, tiny_run, write_yaml, cli, cache_dir
):
    path = plain_resnet18(tmp_path / "r18.pth")
    cfg = run_with(tiny_run, {"source": "file", "path": path, "arch": "resnet50"})
    fails_cleanly(
        cli, write_yaml, cfg, tmp_path / "out", cache_dir,
        "encoder.arch: resnet50 does not fit", path, "resnet (depth 18",
    )  # fmt: skip


def test_a_hugging_face_folder_without_config_json(tmp_path, tiny_run, write_yaml, cli, cache_dir):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    cfg = run_with(tiny_run, {"source": "hf", "path": str(folder)})
    pytest.importorskip("transformers")
    fails_cleanly(cli, write_yaml, cfg, tmp_path / "out", cache_dir, folder, "no config.json")


def test_a_hub_id_while_offline(tmp_path, tiny_run, write_yaml, cli, cache_dir, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = run_with(tiny_run, {"source": "hf", "path": "openai/clip-vit-base-patch32"})
    line = fails_cleanly(
        cli, write_yaml, cfg, tmp_path / "out", cache_dir,
        "'openai/clip-vit-base-patch32'", "not a local folder", "--local-dir",
    )  # fmt: skip
    assert "Retry" not in line


def test_source_hf_without_the_hub_extra(
    tmp_path, tiny_run, write_yaml, cli, cache_dir, monkeypatch
):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` fails
    cfg = run_with(tiny_run, {"source": "hf", "path": str(tmp_path)})
    fails_cleanly(
        cli, write_yaml, cfg, tmp_path / "out", cache_dir, "transformers", "sslpoison[hub]"
    )


def test_a_pickle_payload_in_a_pth(tmp_path, tiny_run, write_yaml, cli, cache_dir, sentinel):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Payload(os.system, f"touch {sentinel}")}, path)
    cfg = run_with(tiny_run, {"source": "file", "path": str(path)})
    line = fails_cleanly(cli, write_yaml, cfg, tmp_path / "out", cache_dir, path)
    assert "not a plain tensor checkpoint" in line


def test_damaged_weights_in_a_hugging_face_folder(
    tmp_path, tiny_run, write_yaml, cli, cache_dir, tiny_clip_folder
):
    folder = tiny_clip_folder(channels=1, text=False)
    garbage(folder / "model.safetensors")
    cfg = run_with(tiny_run, {"source": "hf", "path": str(folder)})
    fails_cleanly(cli, write_yaml, cfg, tmp_path / "out", cache_dir, folder, "weights")


@pytest.mark.parametrize(
    ("encoder", "attack", "names"),
    [
        ({"source": "hf", "path": "x", "arch": "resnet18"}, ATTACK, ("encoder.arch", "file")),
        ({"source": "file", "path": "x", "output": "cls"}, ATTACK, ("encoder.output", "hf")),
        ({"source": "file", "path": "x", "layout": "keras"}, ATTACK, ("encoder.layout", "keras")),
        (
            {"source": "file", "path": "x"},
            {"name": "ssl_backdoor", "target_class": 0, "poison": 0.1},
            ("encoder: ssl_backdoor poisons the pre-training data",),
        ),
    ],
)
def test_config_errors_of_the_encoder_section(
    tmp_path, tiny_run, write_yaml, cli, cache_dir, encoder, attack, names
):
    cfg = run_with(tiny_run, encoder, attack)
    fails_cleanly(cli, write_yaml, cfg, tmp_path / "out", cache_dir, *names)


def test_a_data_size_the_encoder_does_not_take(tmp_path, tiny_run, write_yaml, cli, cache_dir):
    torch.manual_seed(0)
    vit = build_backbone(
        "vit", image_size=16, patch_size=4, width=32, depth=1, heads=2, in_channels=1
    )
    from sslpoison.models import save_encoder

    save_encoder(vit, tmp_path / "vit")
    cfg = run_with(tiny_run, {"source": "file", "path": str(tmp_path / "vit")})
    cfg["data"]["size"] = 24
    fails_cleanly(cli, write_yaml, cfg, tmp_path / "out", cache_dir, "data.size: 24", "takes 16")


def test_bad_export_and_inspect_calls(tmp_path, cli):
    out = tmp_path / "exported"
    code, _, err = cli("export", tmp_path, "--format", "safetensors", "--out", out)
    assert_user_error(code, err, tmp_path, "not a finished run folder")
    code, _, err = cli("encoder", "inspect", tmp_path / "none.pt")
    assert_user_error(code, err, tmp_path / "none.pt", "not found")
    assert not out.exists()
