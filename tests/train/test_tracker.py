"""The optional tracker: the engine's per-epoch losses and the final metrics in TensorBoard's
local event files, only while a tracker is configured and installed."""

from __future__ import annotations

import logging
import sys

import pytest
import torch
import torch.nn as nn

from sslpoison.train.engine import TensorBatches, TrainConfig, fit
from sslpoison.train.tracker import TrackerConfig, epoch_loggers, tracking


class Regression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.linear(x).squeeze(1) - y).pow(2).mean()


def train(epochs: int = 3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5])
    cfg = TrainConfig(epochs=epochs, batch_size=16, progress=False, optimizer={"lr": 0.05})
    return fit(Regression(), TensorBatches(x, y, batch_size=16), cfg, desc="regression")


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_losses_and_metrics_land_in_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = TrackerConfig(kind="tensorboard")
    with tracking(cfg, tmp_path) as tracker:
        first, second = train(3), train(2)
        stages = {"pretrain": {"cached": True, "losses": [3.0, 2.0]}, "attack": {"losses": [1]}}
        tracker.log_results({"d/asr": 0.75}, {"total": 12.5}, {"name": "x"}, stages)
    logged = scalars(tmp_path / "tensorboard")
    assert [s for s, _ in logged["loss/regression"]] == [1, 2, 3]
    assert [v for _, v in logged["loss/regression"]] == pytest.approx(first.losses)
    assert [v for _, v in logged["loss/regression #2"]] == pytest.approx(second.losses)
    assert logged["metrics/d/asr"] == [(0, pytest.approx(0.75))]
    assert logged["time/total"] == [(0, pytest.approx(12.5))]
    assert logged["loss/pretrain (cached)"] == [(1, 3.0), (2, 2.0)]
    assert "loss/attack (cached)" not in logged  # trained in this run: logged by its fit
    assert epoch_loggers("after") == []  # inactive once the block ends
    train(1)
    assert len(scalars(tmp_path / "tensorboard")["loss/regression"]) == 3


def test_no_tracker_unless_configured_and_installed(tmp_path, monkeypatch, caplog):
    with tracking(None, tmp_path) as tracker:
        assert tracker is None and epoch_loggers("x") == []
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    with caplog.at_level(logging.WARNING), tracking(TrackerConfig(), tmp_path) as tracker:
        assert tracker is None
        train(1)
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "sslpoison[tracking]" in message
    assert not (tmp_path / "tensorboard").exists()
