"""Which precision a training run uses: bf16 autocast only where the hardware has it.

On a CPU, bf16 is fast only with native support (AVX512-BF16 or AMX); elsewhere (plain AVX2:
most laptops, AMD and older Intel servers) torch emulates it, and a step runs 8–100× slower
than in fp32. ``amp_cpu: auto`` therefore chooses bf16 only where the CPU has it.
"""

from __future__ import annotations

import functools
import logging
from typing import Literal

import torch

log = logging.getLogger(__name__)

#: ``amp_cpu``: ``"auto"`` (bf16 where native), ``True`` (force bf16), ``False`` (fp32).
AmpSetting = bool | Literal["auto"]

Precision = Literal["bf16", "fp32"]


def cpu_capability() -> str:
    """torch's name for the CPU's vector instruction set (``AVX2``, ``AVX512``, ...)."""
    return torch.backends.cpu.get_cpu_capability()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX, as torch reports it) and
    torch's kernels use it (``ATEN_CPU_CAPABILITY=avx2`` limits them to AVX2, where bf16 is
    emulated)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    has = any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return has and cpu_capability().startswith("AVX512")


def resolve_precision(amp: bool, amp_cpu: AmpSetting, device: torch.device | str) -> Precision:
    """The precision a run on ``device`` uses: ``amp`` decides on CUDA, ``amp_cpu`` on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if amp else "fp32"
    if amp_cpu == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "bf16" if amp_cpu else "fp32"


_told: set[tuple[str, str, str]] = set()


def explain_precision(amp: bool, amp_cpu: AmpSetting, device: torch.device | str) -> Precision:
    """:func:`resolve_precision`, logging once per process and setting why it was chosen (a
    warning when bf16 is forced on a CPU that emulates it)."""
    device = torch.device(device)
    chosen = resolve_precision(amp, amp_cpu, device)
    seen = (device.type, str(amp if device.type == "cuda" else amp_cpu), chosen)
    if seen in _told:
        return chosen
    _told.add(seen)
    if device.type == "cuda":
        log.info("precision: %s on CUDA (train.amp: %s)", chosen, amp)
        return chosen
    native = cpu_has_native_bf16()
    where = f"CPU capability {cpu_capability()}, {'native' if native else 'no native'} bf16"
    if amp_cpu is True and not native:
        log.warning(
            "precision: bf16 forced (amp_cpu: true) on a CPU without native bf16 (%s): it is "
            "emulated and typically 8-100x slower than fp32; use amp_cpu: auto",
            where,
        )
    elif amp_cpu == "auto":
        log.info("precision: %s (amp_cpu: auto; %s)", chosen, where)
    else:
        log.info("precision: %s (amp_cpu: %s; %s)", chosen, str(amp_cpu).lower(), where)
    return chosen
