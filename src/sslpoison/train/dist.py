"""Distributed helpers: set-up under ``torchrun`` (DDP), rank facts, gathers with gradient.

Nothing here runs at import time. Single-process code paths see rank 0 of world size 1.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group that ``torchrun`` set up (gloo on CPU, NCCL on CUDA).

    Returns the device this rank should use (``cuda:LOCAL_RANK`` on GPU machines).
    A no-op outside ``torchrun`` or when already initialised.
    """
    if not launched_by_torchrun():
        return device
    local = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def leave_group() -> bool:
    """End the process group (if any) once the ranks' joint work is done; returns whether
    this process goes on alone (rank 0, or the only process)."""
    if not is_distributed():
        return True
    main = rank() == 0
    dist.destroy_process_group()
    return main


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B×…) from every rank along dim 0, keeping gradients to the local part."""
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over ranks (a copy; ``x`` itself is unchanged)."""
    if not is_distributed():
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / world_size()


def barrier() -> None:
    if is_distributed():
        dist.barrier()
