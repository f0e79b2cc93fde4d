"""bf16 only where the hardware has it: ``amp_cpu: auto | true | false``."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn

from sslpoison.train import precision
from sslpoison.train.engine import STAGE_KEY, TensorBatches, TrainConfig, fit
from sslpoison.train.precision import cpu_has_native_bf16 as real_cpu_has_native_bf16


@pytest.fixture
def cpu_bf16(monkeypatch):
    """``cpu_bf16(native)``: pretend the CPU does (or does not) have native bf16."""

    def set_native(native: bool) -> None:
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
        monkeypatch.setattr(precision, "_told", set())

    return set_native


@pytest.mark.parametrize(("native", "expected"), [(False, "fp32"), (True, "bf16")])
def test_auto_follows_the_cpu(cpu_bf16, native, expected):
    cpu_bf16(native)
    assert TrainConfig().amp_cpu == "auto"  # the default
    assert TrainConfig().precision("cpu") == expected
    assert TrainConfig(amp_cpu=False).precision("cpu") == "fp32"
    assert TrainConfig(amp_cpu=True).precision("cpu") == "bf16"
    # CUDA follows `amp` alone
    assert TrainConfig(amp=True, amp_cpu=False).precision("cuda") == "bf16"
    assert TrainConfig(amp=False, amp_cpu=True).precision("cuda") == "fp32"


@pytest.mark.parametrize(
    ("bf16_units", "capability", "native"),
    [(True, "AVX512", True), (True, "AVX2", False), (False, "AVX512", False)],
)
def test_native_bf16_needs_the_units_and_kernels_that_use_them(
    monkeypatch, bf16_units, capability, native
):
    """AVX512-BF16 / AMX units count only when torch's kernels run at AVX-512: with
    ``ATEN_CPU_CAPABILITY=avx2`` (capability ``AVX2``) bf16 is emulated."""
    check = real_cpu_has_native_bf16.__wrapped__  # the uncached function
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16_units)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(precision, "cpu_capability", lambda: capability)
    assert check() is native


def test_yaml_values_parse():
    assert TrainConfig.model_validate({"amp_cpu": "auto"}).amp_cpu == "auto"
    assert TrainConfig.model_validate({"amp_cpu": True}).amp_cpu is True
    with pytest.raises(ValueError, match="amp_cpu"):
        TrainConfig.model_validate({"amp_cpu": "sometimes"})


class _Quadratic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x @ self.w.unsqueeze(1)) ** 2).mean()


def _fit(cfg: TrainConfig):
    data = TensorBatches(torch.randn(8, 4), batch_size=4, seed=0)
    return fit(_Quadratic(), data, cfg)


def test_fit_logs_its_choice_and_warns_when_bf16_is_forced_on_an_emulating_cpu(cpu_bf16, caplog):
    cpu_bf16(False)
    base = TrainConfig(epochs=1, batch_size=4, progress=False, checkpoint_every=0)
    with caplog.at_level(logging.INFO, logger="sslpoison.train.precision"):
        assert _fit(base).precision == "fp32"
    auto = [r for r in caplog.records if "precision" in r.getMessage()]
    assert len(auto) == 1 and auto[0].levelno == logging.INFO
    assert "fp32" in auto[0].getMessage() and "no native bf16" in auto[0].getMessage()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sslpoison.train.precision"):
        assert _fit(base.model_copy(update={"amp_cpu": True})).precision == "bf16"
        _fit(base.model_copy(update={"amp_cpu": True}))  # said once per process
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "emulated" in warned[0].getMessage()

    cpu_bf16(True)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sslpoison.train.precision"):
        assert _fit(base.model_copy(update={"amp_cpu": True})).precision == "bf16"
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_the_stage_key_holds_the_precision_not_the_setting(cpu_bf16):
    key = {STAGE_KEY: torch.device("cpu")}
    cpu_bf16(True)
    auto = TrainConfig().model_dump(mode="json", context=key)
    forced = TrainConfig(amp_cpu=True, progress=False).model_dump(mode="json", context=key)
    assert auto == forced  # the same run: bf16 either way
    assert auto["precision"] == "bf16"
    assert not {"amp", "amp_cpu", "progress", "checkpoint_every"} & set(auto)
    cpu_bf16(False)
    assert TrainConfig().model_dump(mode="json", context=key)["precision"] == "fp32"
    # without the context the config dumps as written
    assert TrainConfig().model_dump(mode="json")["amp_cpu"] == "auto"
