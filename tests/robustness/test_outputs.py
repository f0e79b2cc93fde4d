"""Output folders and the stage cache a user names: a file, a read-only or full disk fail
before any training with exit 2 and one line naming the folder; a folder holding another
experiment is moved aside, never mixed or overwritten; files respect the umask."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from user_errors import assert_user_error, trained_stages

from sslpoison.data import registry
from sslpoison.experiment import preflight
from sslpoison.utils import atomic_write_json


def _can_write(folder: Path) -> bool:
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return False
    return True


@pytest.fixture
def read_only(tmp_path) -> Path:
    """A folder this process cannot write: mode 0555, or (as root, whom modes do not bind)
    ``/sys``; skipped where neither is read-only."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if not _can_write(folder):
            yield folder
        elif not _can_write(Path("/sys")):
            yield Path("/sys")
        else:
            pytest.skip("no read-only folder for this user")
    finally:
        folder.chmod(0o755)


def test_out_that_is_a_file_is_named_and_kept(tmp_path, tiny_run, write_yaml, cli, cache_dir):
    out = tmp_path / "notes.txt"
    out.write_text("my notes")
    assert_user_error(*cli("run", write_yaml(tiny_run), "--out", out)[::2], out, "not a folder")
    assert out.read_text() == "my notes" and trained_stages(cache_dir) == []


def test_out_under_a_file_is_named(tmp_path, tiny_run, write_yaml, cli, cache_dir):
    (tmp_path / "notes.txt").write_text("my notes")
    out = tmp_path / "notes.txt" / "run"
    assert_user_error(*cli("run", write_yaml(tiny_run), "--out", out)[::2], out, "Not a directory")
    assert trained_stages(cache_dir) == []


def test_out_with_a_name_too_long_is_named(tmp_path, tiny_run, write_yaml, cli, cache_dir):
    out = tmp_path / ("x" * 300)
    assert_user_error(*cli("run", write_yaml(tiny_run), "--out", out)[::2], "--out", "too long")
    assert trained_stages(cache_dir) == []


@pytest.mark.parametrize("where", ["folder", "inside"])
def test_a_read_only_out_fails_before_any_training(
    where, read_only, tmp_path, tiny_run, write_yaml, cli, cache_dir
):
    out = read_only if where == "folder" else read_only / "run"
    assert_user_error(*cli("run", write_yaml(tiny_run), "--out", out)[::2], "--out", out)
    assert trained_stages(cache_dir) == []


def test_a_read_only_cache_fails_before_any_training(
    read_only, tmp_path, tiny_run, write_yaml, cli
):
    tiny_run["cache_dir"] = str(read_only / "cache")
    out = tmp_path / "out"
    line = assert_user_error(*cli("run", write_yaml(tiny_run), "--out", out)[::2], "stage cache")
    assert str(read_only) in line and not (out / "results.json").exists()


def test_a_full_disk_fails_before_any_training(
    tmp_path, tiny_run, write_yaml, cli, cache_dir, monkeypatch
):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda _: usage._replace(free=1 << 20))
    out = tmp_path / "out"
    line = assert_user_error(*cli("run", write_yaml(tiny_run), "--out", out)[::2], "--out", out)
    assert "MiB free" in line and trained_stages(cache_dir) == []


def test_a_disk_that_fills_during_the_run_is_named_and_leaves_no_results(
    tmp_path, tiny_run, write_yaml, cli, monkeypatch
):
    import sslpoison.models.io as io

    out = tmp_path / "out"
    save_file = io.save_file

    def full(state, path):  # the disk fills once the run writes its own encoder
        if str(out) in path:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        save_file(state, path)

    monkeypatch.setattr(io, "save_file", full)
    line = assert_user_error(*cli("run", write_yaml(tiny_run), "--out", out)[::2])
    assert line.startswith(f"error: {out / 'encoder.safetensors'}: ")
    assert "No space left on device" in line
    assert not (out / "results.json").exists() and not list(out.glob("*.tmp"))


def _run(cli, cfg: Path, out: Path) -> dict:
    code, _, err = cli("run", cfg, "--out", out)
    assert code == 0, err
    return json.loads((out / "results.json").read_text())


def test_an_out_of_another_experiment_is_moved_aside_not_mixed(tmp_path, tiny_run, write_yaml, cli):
    out = tmp_path / "out"
    first = _run(cli, write_yaml(tiny_run, "a.yaml"), out)
    (out / "summary.md").write_text("the first run's summary")  # a file the second omits
    weights = (out / "encoder.safetensors").read_bytes()
    tiny_run["seed"] = 1
    second = _run(cli, write_yaml(tiny_run, "b.yaml"), out)
    (old,) = tmp_path.glob("out.old-*")
    assert json.loads((old / "results.json").read_text()) == first
    assert (old / "encoder.safetensors").read_bytes() == weights
    assert (old / "summary.md").read_text() == "the first run's summary"
    assert not (out / "summary.md").exists()
    assert second["config"]["seed"] == 1 and any(str(old) in w for w in second["warnings"])


def test_the_same_experiment_again_replaces_its_own_results(tmp_path, tiny_run, write_yaml, cli):
    out = tmp_path / "out"
    cfg = write_yaml(tiny_run)
    first = _run(cli, cfg, out)
    again = _run(cli, cfg, out)
    assert not list(tmp_path.glob("out.old-*"))
    assert again["metrics"] == first["metrics"] and again["stages"]["pretrain"]["cached"]
    umask = os.umask(0)
    os.umask(umask)
    for name in ("results.json", "encoder.safetensors", "encoder.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_respect_the_umask(tmp_path, umask):
    from sslpoison.models import save_encoder
    from sslpoison.models.backbone import BackboneConfig, build_encoder

    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        save_encoder(build_encoder(BackboneConfig(width=0.125), 1), tmp_path / "enc")
    finally:
        os.umask(old)
    for name in ("a.json", "enc.safetensors", "enc.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_the_datasets_listing_survives_an_unreadable_folder(tmp_path, cli, monkeypatch):
    data = tmp_path / "data"
    (data / "cifar10").mkdir(parents=True)
    monkeypatch.setenv("SSLPOISON_DATA", str(data))
    (data / "cifar10").chmod(0)
    try:
        if os.access(data / "cifar10", os.R_OK):  # root: modes do not bind; the OS's answer
            spec = registry.DATASETS["cifar10"]

            def refuse(path):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))

            monkeypatch.setitem(registry.DATASETS, "cifar10", replace(spec, find=refuse))
        code, out, err = cli("datasets")
    finally:
        (data / "cifar10").chmod(0o755)
    assert code == 0
    assert {line.split()[0] for line in out.splitlines()} == set(registry.DATASETS)
    assert "unreadable" in next(line for line in out.splitlines() if line.startswith("cifar10"))
    assert "cifar10" in err and "Permission denied" in err
