"""BYOL: the regression loss against an explicit-cosine reference, and the module end to end."""

from __future__ import annotations

import pytest
import torch

from sslpoison.data.augment import RECIPES
from sslpoison.models import build_backbone
from sslpoison.ssl import BYOL, METHODS
from sslpoison.ssl.byol import byol_loss


def reference_byol_loss(p: torch.Tensor, z: torch.Tensor) -> float:
    total = 0.0
    for i in range(p.shape[0]):
        cos = float(p[i] @ z[i]) / (float(p[i].norm()) * float(z[i].norm()))
        total += 2 - 2 * cos
    return total / p.shape[0]


def test_byol_loss_matches_loop_reference() -> None:
    g = torch.Generator().manual_seed(0)
    for b, d in [(4, 3), (7, 16), (1, 2)]:
        p = torch.randn(b, d, generator=g, dtype=torch.float64)
        z = torch.randn(b, d, generator=g, dtype=torch.float64)
        expected = torch.tensor(reference_byol_loss(p, z), dtype=torch.float64)
        torch.testing.assert_close(byol_loss(p, z), expected)


def test_byol_loss_range_and_gradient_to_predictions_only() -> None:
    x = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(byol_loss(x, 3 * x), torch.zeros((), dtype=torch.float64))
    torch.testing.assert_close(byol_loss(x, -x), torch.full((), 4.0, dtype=torch.float64))
    p = torch.randn(5, 4, requires_grad=True)
    z = torch.randn(5, 4, requires_grad=True)
    byol_loss(p, z).backward()
    assert p.grad is not None and z.grad is None


def tiny_byol(**kwargs) -> BYOL:
    backbone = build_backbone("resnet18", width=0.125, in_channels=1)
    return BYOL(backbone, proj_hidden=32, proj_dim=16, pred_hidden=32, **kwargs)


def test_byol_registered_with_its_recipe_and_schedule() -> None:
    assert METHODS["byol"] is BYOL
    assert BYOL.augmentation == "byol" and BYOL.augmentation in RECIPES
    assert tiny_byol().momentum == (0.99, 1.0)
    assert tiny_byol(momentum_base=0.996).momentum == (0.996, 1.0)
    with pytest.raises(ValueError, match="momentum_base"):
        tiny_byol(momentum_base=1.5)


def test_byol_module_end_to_end() -> None:
    torch.manual_seed(0)
    method = tiny_byol().train()
    views = [torch.rand(8, 1, 16, 16), torch.rand(8, 1, 16, 16)]

    pairs = method.momentum_pairs()
    assert [(o, t) for o, t in pairs] == [
        (method.backbone, method.target_backbone),
        (method.projector, method.target_projector),
    ]
    for online, target in pairs:
        online_state, target_state = online.state_dict(), target.state_dict()
        assert online_state.keys() == target_state.keys()
        for name, value in online_state.items():
            assert value.shape == target_state[name].shape
            assert torch.equal(value, target_state[name])
            assert value.data_ptr() != target_state[name].data_ptr()
        assert all(not p.requires_grad for p in target.parameters())

    loss = method(views)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad
    assert 0 <= float(loss.detach()) <= 8
    loss.backward()
    for module in (method.backbone, method.projector, method.predictor):
        assert all(p.grad is not None for p in module.parameters())
    for _, target in pairs:
        assert all(p.grad is None for p in target.parameters())

    # the sum of both directions (the paper's symmetrised loss)
    with torch.no_grad():
        p1, p2 = (method.predictor(method.projector(method.backbone(v))) for v in views)
        z1, z2 = (method.target_projector(method.target_backbone(v)) for v in views)
    torch.testing.assert_close(loss.detach(), byol_loss(p1, z2) + byol_loss(p2, z1))
