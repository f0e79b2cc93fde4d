"""Small shared helpers: atomic writes, stable hashing, device choice, seeded blocks."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def current_umask() -> int:
    """The process's umask (read without changing it where Linux allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_via(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place.

    The file gets the mode a plain ``open(path, "w")`` would give it (``0o666`` less the
    umask), not ``mkstemp``'s private ``0o600``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except OSError as e:  # e.g. a full disk: named by the file meant, not the temporary one
        Path(tmp).unlink(missing_ok=True)
        if e.filename in (tmp, str(tmp)) and e.errno is not None:
            raise type(e)(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_via(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def safe_name(text: str, default: str = "run") -> str:
    """``text`` as one safe file name: every run of characters other than letters, digits,
    ``.``, ``-``, ``_``, ``=``, ``+`` and ``,`` becomes ``_`` (so no ``/``), as does a run
    of dots (no ``..``); leading dots are dropped (no hidden file); ``default`` when nothing
    is left."""
    name = re.sub(r"[^\w.=,+-]+|\.{2,}", "_", text).lstrip(".")[:200]
    return name if name.strip("_") else default


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short sha256 of ``obj``'s canonical JSON (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def tensor_hash(*tensors: torch.Tensor, length: int = 16) -> str:
    """A short sha256 over the bytes, dtypes and shapes of tensors."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():  # the tensor's own buffer, not a copy of it
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()[:length]


def module_hash(module: torch.nn.Module, length: int = 16) -> str:
    """A short sha256 over a module's state dict (names and tensors)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor_hash(t, length=64).encode())
    return h.hexdigest()[:length]


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    return dev


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); the CPU when it has neither."""
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


@contextmanager
def seeded(seed: int | None = None, device: torch.device | str | None = None) -> Iterator[None]:
    """A block that draws from torch's global RNG seeded with ``seed`` (None: as it is) and
    leaves it as it found it: the CPU's state and that of the CUDA ``device`` (default: the
    current one, once CUDA is initialised) are put back afterwards."""
    cuda = torch.device(device) if device is not None else None
    if cuda is not None and cuda.type == "cuda":
        devices = [cuda]
    elif torch.cuda.is_available() and torch.cuda.is_initialized():
        devices = [torch.cuda.current_device()]
    else:
        devices = []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield


@contextmanager
def frozen(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``module`` in eval mode with ``requires_grad`` off for the block (gradients still reach
    its input); its mode and each parameter's ``requires_grad`` are put back afterwards, so a
    defense or detector leaves the encoder it was given as it was."""
    was_training = module.training
    grads = [p.requires_grad for p in module.parameters()]
    try:
        yield module.requires_grad_(False).eval()
    finally:
        for p, g in zip(module.parameters(), grads, strict=True):
            p.requires_grad_(g)
        module.train(was_training)
