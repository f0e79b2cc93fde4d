"""Feature extraction, done once per (encoder, dataset) and cached on disk as safetensors."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from sslpoison.data.augment import to_float
from sslpoison.data.imageset import ImageSet
from sslpoison.errors import ModelFileError, warn
from sslpoison.models.io import check_finite, read_safetensors
from sslpoison.utils import atomic_write_via, module_hash

log = logging.getLogger(__name__)


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    images: torch.Tensor,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Encoder features of uint8 images, in eval mode.

    Shapes: images N×C×H×W uint8 → N×D float32 (on the encoder's device).
    """
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    out = [encoder(to_float(chunk.to(device))).float() for chunk in images.split(batch_size)]
    encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


class FeatureCache:
    """Features keyed by the hashes of the encoder's weights and of the images.

    ``get(encoder, imageset)`` returns the cached N×D tensor, extracting it on a miss. With
    ``directory=None`` the cache lives in memory only.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.memory: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def key(self, encoder: nn.Module, data: ImageSet) -> str:
        return f"{module_hash(encoder)}-{data.images_hash()}"

    def get(self, encoder: nn.Module, data: ImageSet, batch_size: int = 1024) -> torch.Tensor:
        key = self.key(encoder, data)
        device = next(encoder.parameters()).device
        if key in self.memory:
            self.hits += 1
            return self.memory[key].to(device)
        path = self.directory / f"{key}.safetensors" if self.directory is not None else None
        feats = self._read(path, len(data)) if path is not None and path.exists() else None
        if feats is not None:
            self.hits += 1
        else:
            self.misses += 1
            feats = extract_features(encoder, data.images, batch_size, device).cpu()
            if path is not None:
                atomic_write_via(path, lambda tmp: save_file({"features": feats}, str(tmp)))
        self.memory[key] = feats
        return feats.to(device)

    @staticmethod
    def _read(path: Path, n: int) -> torch.Tensor | None:
        """The N×D features cached at ``path``, or None (with a warning: they are extracted
        again and replaced) when the file is damaged or holds another number of rows."""
        try:
            feats = read_safetensors(path).get("features")
            if feats is None or feats.dim() != 2 or feats.shape[0] != n:
                raise ModelFileError(f"{path}: no N×D 'features' tensor for {n} images")
            check_finite({"features": feats}, path)
        except ModelFileError as e:
            warn(f"feature cache: {e}; extracting them again")
            return None
        return feats
