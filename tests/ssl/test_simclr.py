"""SimCLR's NT-Xent against a loop-based reference, and the module end to end."""

from __future__ import annotations

import math

import torch

from sslpoison.data.augment import RECIPES
from sslpoison.models import build_backbone
from sslpoison.ssl import METHODS, SimCLR
from sslpoison.ssl.simclr import nt_xent


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    """Plain NT-Xent: each of the 2B anchors, log-softmax over the other 2B − 1 samples."""
    z = [v / v.norm() for v in torch.cat([z1, z2])]
    n, b = len(z), z1.shape[0]
    total = 0.0
    for i in range(n):
        partner = (i + b) % n
        sims = {j: float(z[i] @ z[j]) / temperature for j in range(n) if j != i}
        log_denominator = math.log(sum(math.exp(s) for s in sims.values()))
        total += -(sims[partner] - log_denominator)
    return total / n


def test_nt_xent_matches_loop_reference() -> None:
    g = torch.Generator().manual_seed(0)
    for b, d, tau in [(4, 3, 0.5), (6, 8, 0.2), (1, 5, 1.0)]:
        z1 = torch.randn(b, d, generator=g, dtype=torch.float64)
        z2 = torch.randn(b, d, generator=g, dtype=torch.float64)
        expected = torch.tensor(reference_nt_xent(z1, z2, tau), dtype=torch.float64)
        torch.testing.assert_close(nt_xent(z1, z2, tau), expected)


def test_nt_xent_is_lower_for_aligned_views_with_orthogonal_negatives() -> None:
    b, d, tau = 4, 8, 0.5
    aligned = torch.eye(b, d, dtype=torch.float64)  # orthonormal rows
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(b, d, generator=g, dtype=torch.float64)
    z2 = torch.randn(b, d, generator=g, dtype=torch.float64)
    assert nt_xent(aligned, aligned.clone(), tau) < nt_xent(z1, z2, tau)
    # Closed form: partner at cos 1, the 2B − 2 others at cos 0.
    closed = -1 / tau + math.log(math.exp(1 / tau) + 2 * b - 2)
    torch.testing.assert_close(
        nt_xent(aligned, aligned.clone(), tau), torch.tensor(closed, dtype=torch.float64)
    )


def test_simclr_module_end_to_end() -> None:
    torch.manual_seed(0)
    assert METHODS["simclr"] is SimCLR
    assert SimCLR.augmentation in RECIPES
    method = SimCLR(build_backbone("resnet18", width=0.125, in_channels=1), proj_hidden=32)
    views = [torch.rand(8, 1, 16, 16), torch.rand(8, 1, 16, 16)]
    loss = method(views)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    assert all(p.grad is not None for p in method.parameters())
    assert method.momentum_pairs() == []
