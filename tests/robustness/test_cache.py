"""A damaged stage-cache entry is a miss: a warning, then the stage runs again and replaces
the entry — never a traceback, never a wrong result."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from damaged_files import empty, garbage, truncate, write_weights
from safetensors.torch import load_file
from user_errors import assert_user_error

from sslpoison.models import load_encoder

_TEMPLATE: dict[str, Path] = {}


@pytest.fixture
def warm_cache(tmp_path_factory, tiny_run, write_yaml, cli) -> Callable[[Path], Path]:
    """``warm_cache(dest) -> dest``: a copy of a cache that holds the tiny run's finished
    stages (the run is made once per session)."""
    if "cache" not in _TEMPLATE:
        root = tmp_path_factory.mktemp("warm")
        tiny_run["cache_dir"] = str(root / "cache")
        code, _, err = cli("run", write_yaml(tiny_run, "warm.yaml"), "--out", root / "out")
        assert code == 0, err
        _TEMPLATE["cache"] = root / "cache"

    def copy(dest: Path) -> Path:
        shutil.copytree(_TEMPLATE["cache"], dest)
        return dest

    return copy


def _stage(cache: Path) -> Path:
    (folder,) = (cache / "pretrain").iterdir()
    return folder


def weights_truncated(stage: Path) -> None:
    truncate(stage / "encoder.safetensors")


def weights_garbage(stage: Path) -> None:
    garbage(stage / "encoder.safetensors")


def weights_nan(stage: Path) -> None:
    state = load_file(stage / "encoder.safetensors")
    write_weights(stage / "encoder.safetensors", {
        k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in state.items()
    })  # fmt: skip


def card_empty(stage: Path) -> None:
    empty(stage / "encoder.json")


def card_missing(stage: Path) -> None:
    (stage / "encoder.json").unlink()


def record_garbage(stage: Path) -> None:
    garbage(stage / "done.json", 50)


def record_not_an_object(stage: Path) -> None:
    (stage / "done.json").write_text("[1, 2]")


def checkpoint_pointer_garbage(stage: Path) -> None:
    """An unfinished stage whose last checkpoint pointer is damaged."""
    (stage / "done.json").unlink()
    (stage / "checkpoints").mkdir()
    garbage(stage / "checkpoints" / "last.json", 80)


def checkpoint_tensors_truncated(stage: Path) -> None:
    """An unfinished stage whose last checkpoint's tensors are cut short."""
    (stage / "done.json").unlink()
    (stage / "checkpoints").mkdir()
    shutil.copy(stage / "encoder.safetensors", stage / "checkpoints" / "ckpt-00001.safetensors")
    truncate(stage / "checkpoints" / "ckpt-00001.safetensors")
    pointer = {"epoch": 1, "tensors": "ckpt-00001.safetensors", "state": {}}
    (stage / "checkpoints" / "last.json").write_text(json.dumps(pointer))


def checkpoint_pointer_escapes(stage: Path) -> None:
    """A pointer naming a file outside the checkpoint folder is not followed."""
    (stage / "done.json").unlink()
    (stage / "checkpoints").mkdir()
    pointer = {"epoch": 1, "tensors": "../../../../etc/passwd", "state": {}}
    (stage / "checkpoints" / "last.json").write_text(json.dumps(pointer))


DAMAGE = [
    weights_truncated, weights_garbage, weights_nan, card_empty, card_missing,
    record_garbage, record_not_an_object, checkpoint_pointer_garbage,
    checkpoint_tensors_truncated, checkpoint_pointer_escapes,
]  # fmt: skip


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__.replace("_", "-"))
def test_a_damaged_stage_is_recomputed_and_replaced(
    damage, warm_cache, tmp_path, tiny_run, write_yaml, cli
):
    cache = warm_cache(tmp_path / "cache")
    stage = _stage(cache)
    good = load_encoder(stage / "encoder").state_dict()
    damage(stage)
    tiny_run["cache_dir"] = str(cache)
    code, _, err = cli("run", write_yaml(tiny_run), "--out", tmp_path / "out")
    assert code == 0, err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["stages"]["pretrain"]["cached"] is False
    assert any(str(stage) in w for w in results["warnings"]), results.get("warnings")
    replaced = load_encoder(stage / "encoder").state_dict()  # a valid entry again
    assert json.loads((stage / "done.json").read_text())["key"] == stage.name
    for k, v in good.items():  # the same training, so the same weights
        assert torch.equal(replaced[k], v), k


@pytest.mark.parametrize(
    "damage", [truncate, garbage, empty], ids=lambda f: f"features-{f.__name__}"
)
def test_damaged_cached_features_are_extracted_again(
    damage, warm_cache, tmp_path, tiny_run, write_yaml, cli
):
    cache = warm_cache(tmp_path / "cache")
    files = sorted((cache / "features").glob("*.safetensors"))
    assert files
    for f in files:
        damage(f)
    tiny_run["cache_dir"] = str(cache)
    code, _, err = cli("run", write_yaml(tiny_run), "--out", tmp_path / "out")
    assert code == 0, err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["stages"]["pretrain"]["cached"] is True
    assert any("feature cache" in w and str(files[0]) in w for w in results["warnings"])
    for f in files:
        assert load_file(f)["features"].dim() == 2  # replaced by a valid file


def test_a_cache_on_a_filesystem_without_locks_is_named(
    tiny_run, write_yaml, cli, monkeypatch, tmp_path
):
    """``flock`` refused (some NFS mounts): one line naming the lock file, not a traceback."""
    import errno
    import fcntl

    def refuse(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    code, _, err = cli("run", write_yaml(tiny_run), "--out", tmp_path / "out")
    line = assert_user_error(code, err, ".lock", "cannot be locked (No locks available)")
    assert "flock" in line
