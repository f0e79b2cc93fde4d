"""Broken, hostile or mismatched model files given as ``encoder: {source: file}``: each
fails before any training with exit 2 and one line naming the file; a pickle payload never
runs; a ``.pt`` is read as the ``.pt`` even with a saved encoder of the same name beside
it."""

from __future__ import annotations

import copy
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from damaged_files import (
    Payload,
    edit_card,
    empty,
    garbage,
    truncate,
    write_encoder,
    write_weights,
)
from safetensors.torch import load_file
from user_errors import assert_user_error, trained_stages

from sslpoison.models.sources import EncoderSource, load_source

ATTACK = {
    "name": "badencoder",
    "shadow": 32,
    "targets": [{"dataset": "synthetic", "target_class": "vertical", "trigger": {"size": 4}}],
    "train": {"epochs": 1, "batch_size": 16, "progress": False},
}

#: A case: (the ``encoder.path`` value, what the error must name); made in a folder.
Case = tuple[str, tuple[str, ...]]


def _saved(tmp: Path) -> Path:
    return write_encoder(tmp / "enc")


def weights_truncated(tmp: Path) -> Case:
    stem = _saved(tmp)
    return str(stem), (str(truncate(stem.with_suffix(".safetensors"))),)


def weights_zero_bytes(tmp: Path) -> Case:
    stem = _saved(tmp)
    return str(stem), (str(empty(stem.with_suffix(".safetensors"))), "too short")


def weights_huge_header(tmp: Path) -> Case:
    stem = _saved(tmp)
    weights = stem.with_suffix(".safetensors")
    weights.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    return str(weights), (str(weights), "header")


def weights_garbage(tmp: Path) -> Case:
    stem = _saved(tmp)
    return str(stem) + ".json", (str(garbage(stem.with_suffix(".safetensors"))),)


def weights_missing(tmp: Path) -> Case:
    stem = _saved(tmp)
    stem.with_suffix(".safetensors").unlink()
    return str(stem), (str(stem.with_suffix(".safetensors")), "not found")


def card_not_json(tmp: Path) -> Case:
    stem = _saved(tmp)
    return str(stem), (str(garbage(stem.with_suffix(".json"), 40)), "JSON")


def card_empty(tmp: Path) -> Case:
    stem = _saved(tmp)
    return str(stem), (str(empty(stem.with_suffix(".json"))),)


def card_unexpected_argument(tmp: Path) -> Case:
    stem = _saved(tmp)
    edit_card(stem, args={"bogus": 1})
    return str(stem), (str(stem.with_suffix(".json")), "bogus")


def card_unknown_arch(tmp: Path) -> Case:
    stem = _saved(tmp)
    edit_card(stem, arch="vit_giant")
    return str(stem), (str(stem.with_suffix(".json")), "vit_giant")


def card_without_args(tmp: Path) -> Case:
    stem = _saved(tmp)
    card = json.loads(stem.with_suffix(".json").read_text())
    del card["args"]
    stem.with_suffix(".json").write_text(json.dumps(card))
    return str(stem), (str(stem.with_suffix(".json")), "'args'")


def card_foreign_format(tmp: Path) -> Case:
    stem = _saved(tmp)
    edit_card(stem, format="something-else")
    return str(stem), (str(stem.with_suffix(".json")), "not an sslpoison encoder card")


def card_wrong_width(tmp: Path) -> Case:
    stem = _saved(tmp)
    edit_card(stem, args={"width": 0.25})
    return str(stem), (str(stem.with_suffix(".safetensors")), "another shape")


def weights_nan(tmp: Path) -> Case:
    stem = _saved(tmp)
    weights = stem.with_suffix(".safetensors")
    write_weights(
        weights,
        {
            k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
            for k, v in load_file(weights).items()
        },
    )
    return str(stem), (str(weights), "NaN")


def plain_weights_inf(tmp: Path) -> Case:
    stem = _saved(tmp)
    state = load_file(stem.with_suffix(".safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].fill_(float("inf"))
    plain = write_weights(tmp / "plain.safetensors", state)
    return str(plain), (str(plain), name)


def plain_weights_wrong_keys(tmp: Path) -> Case:
    plain = write_weights(tmp / "other.safetensors", {"fc.weight": torch.zeros(3, 3)})
    return str(plain), (str(plain), "fit no known layout", "fc.weight")


def pt_garbage(tmp: Path) -> Case:
    return str(garbage(tmp / "model.pt")), (str(tmp / "model.pt"), "not a plain tensor")


def pt_truncated(tmp: Path) -> Case:
    torch.save({"conv1.weight": torch.zeros(4, 1, 3, 3)}, tmp / "model.pt")
    return str(truncate(tmp / "model.pt")), (str(tmp / "model.pt"),)


def pt_not_tensors(tmp: Path) -> Case:
    torch.save({"epoch": 3, "lr": 0.1}, tmp / "model.pt")
    return str(tmp / "model.pt"), (str(tmp / "model.pt"), "tensors")


def pt_beside_a_saved_encoder(tmp: Path) -> Case:
    """``X.pt`` with ``X.safetensors`` + ``X.json`` beside it: ``X.pt`` is what is read."""
    stem = _saved(tmp)
    return str(garbage(stem.with_suffix(".pt"))), (str(stem.with_suffix(".pt")),)


def encoder_is_a_folder(tmp: Path) -> Case:
    (tmp / "enc.pt").mkdir()
    return str(tmp / "enc.pt"), (str(tmp / "enc.pt"), "folder")


def encoder_is_a_device(tmp: Path) -> Case:
    return "/dev/zero", ("/dev/zero", "not a regular file")


def weights_are_a_fifo(tmp: Path) -> Case:
    stem = _saved(tmp)
    stem.with_suffix(".safetensors").unlink()
    os.mkfifo(stem.with_suffix(".safetensors"))
    return str(stem), (str(stem.with_suffix(".safetensors")), "not a regular file")


def encoder_missing(tmp: Path) -> Case:
    return str(tmp / "nowhere.pt"), (str(tmp / "nowhere.pt"), "not found")


CASES: list[Callable[[Path], Case]] = [
    weights_truncated, weights_zero_bytes, weights_huge_header, weights_garbage,
    weights_missing, card_not_json, card_empty, card_unexpected_argument, card_unknown_arch,
    card_without_args, card_foreign_format, card_wrong_width, weights_nan, plain_weights_inf,
    plain_weights_wrong_keys, pt_garbage, pt_truncated, pt_not_tensors,
    pt_beside_a_saved_encoder, encoder_is_a_folder, encoder_is_a_device, weights_are_a_fifo,
    encoder_missing,
]  # fmt: skip


def attack_config(tiny_run: dict, encoder: str) -> dict:
    tiny_run["attack"] = copy.deepcopy(ATTACK)
    tiny_run["encoder"] = {"source": "file", "path": encoder}
    return tiny_run


@pytest.mark.parametrize("case", CASES, ids=lambda f: f.__name__.replace("_", "-"))
def test_a_broken_model_file_is_named_before_any_training(
    case, tmp_path, tiny_run, write_yaml, cli, cache_dir
):
    encoder, names = case(tmp_path)
    out = tmp_path / "out"
    cfg = write_yaml(attack_config(tiny_run, encoder))
    line = assert_user_error(*cli("run", cfg, "--out", out)[::2], "encoder:", *names)
    assert len(line) < 700  # no dump of every state-dict key
    assert not (out / "results.json").exists()
    assert trained_stages(cache_dir) == [] and not (cache_dir / "attack").exists()


def test_a_pickle_payload_in_a_pt_checkpoint_never_runs(
    tmp_path, tiny_run, write_yaml, cli, sentinel
):
    torch.save({"conv1.weight": Payload(os.system, f"touch {sentinel}")}, tmp_path / "evil.pt")
    cfg = write_yaml(attack_config(tiny_run, str(tmp_path / "evil.pt")))
    line = assert_user_error(*cli("run", cfg, "--out", tmp_path / "out")[::2], "evil.pt")
    assert "not a plain tensor checkpoint" in line


def test_a_pt_is_read_as_itself_beside_a_saved_encoder_of_its_name(tmp_path):
    stem = write_encoder(tmp_path / "enc")
    torch.manual_seed(1)
    given = EncoderSource(source="file", path=str(stem) + ".pt")
    other = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in load_file(
        stem.with_suffix(".safetensors")).items()}  # fmt: skip
    torch.save(other, stem.with_suffix(".pt"))
    loaded = load_source(given)
    assert loaded.record["path"].endswith("enc.pt") and loaded.record["layout"] == "sslpoison"
    model = loaded.encoder
    for k, v in model.state_dict().items():
        assert torch.equal(v, other[k]), k
