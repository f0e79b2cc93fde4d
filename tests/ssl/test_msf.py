"""MSF: the mean-shift loss against a sort-based kNN reference, the bank, the module."""

from __future__ import annotations

import pytest
import torch

from sslpoison.data.augment import RECIPES
from sslpoison.models import build_backbone
from sslpoison.ssl import METHODS, MSF
from sslpoison.ssl.byol import byol_loss
from sslpoison.ssl.msf import msf_loss


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b) / (float(a.norm()) * float(b.norm()))


def reference_msf_loss(q: torch.Tensor, t: torch.Tensor, bank: torch.Tensor, k: int) -> float:
    """Per sample: sort the candidates (this batch's targets + bank) by cosine to t_i, take the
    first k, average 2 − 2·cos(q_i, ·) over them; then average over the batch."""
    candidates = list(t) + list(bank)
    total = 0.0
    for i in range(q.shape[0]):
        ranked = sorted(candidates, key=lambda c, i=i: cos(t[i], c), reverse=True)
        total += sum(2 - 2 * cos(q[i], c) for c in ranked[:k]) / k
    return total / q.shape[0]


def test_msf_loss_matches_sort_based_reference() -> None:
    g = torch.Generator().manual_seed(0)
    for b, d, m, k in [(4, 3, 10, 3), (6, 8, 20, 5), (2, 4, 1, 3), (3, 5, 6, 1)]:
        q = torch.randn(b, d, generator=g, dtype=torch.float64)
        t = torch.randn(b, d, generator=g, dtype=torch.float64)
        bank = torch.randn(m, d, generator=g, dtype=torch.float64)
        expected = torch.tensor(reference_msf_loss(q, t, bank, k), dtype=torch.float64)
        torch.testing.assert_close(msf_loss(q, t, bank, k), expected)


def test_msf_loss_k1_is_byol_and_gradient_flows_to_queries_only() -> None:
    g = torch.Generator().manual_seed(1)
    q = torch.randn(5, 4, generator=g, requires_grad=True)
    t = torch.randn(5, 4, generator=g, requires_grad=True)
    bank = torch.randn(9, 4, generator=g, requires_grad=True)
    loss = msf_loss(q, t, bank, 1)  # each target's nearest candidate is itself
    torch.testing.assert_close(loss, byol_loss(q, t))
    loss.backward()
    assert q.grad is not None and t.grad is None and bank.grad is None
    with pytest.raises(ValueError, match="k must be"):
        msf_loss(q, t, bank, 15)


def tiny_msf(**kwargs) -> MSF:
    backbone = build_backbone("resnet18", width=0.125, in_channels=1)
    return MSF(backbone, proj_hidden=32, proj_dim=16, pred_hidden=32, **kwargs)


def test_msf_registered_with_its_recipe_and_schedule() -> None:
    assert METHODS["msf"] is MSF
    assert MSF.augmentation == "byol" and MSF.augmentation in RECIPES
    assert tiny_msf().momentum == (0.99, 0.99)
    assert tiny_msf(momentum_base=0.9, momentum_final=1.0).momentum == (0.9, 1.0)
    default = MSF(build_backbone("resnet18", width=0.125, in_channels=1))
    assert default.bank.shape == (4096, 16) and default.k == 5  # d = 64: proj d // 4
    with pytest.raises(ValueError, match="k must be"):
        tiny_msf(k=0)


def test_msf_module_end_to_end() -> None:
    torch.manual_seed(0)
    b, size = 8, 12
    method = tiny_msf(k=3, memory_size=size).train()
    views = [torch.rand(b, 1, 16, 16), torch.rand(b, 1, 16, 16)]

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

    bank_before = method.bank.clone()
    torch.testing.assert_close(bank_before.norm(dim=1), torch.ones(size))
    loss = method(views)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    for module in (method.backbone, method.projector, method.predictor):
        assert all(p.grad is not None for p in module.parameters())
    for _, target in pairs:
        assert all(p.grad is None for p in target.parameters())

    # one direction: view 1 queries, view 2 targets, bank as it was before this step
    with torch.no_grad():
        q = method.predictor(method.projector(method.backbone(views[0])))
        t = method.target_projector(method.target_backbone(views[1]))
    torch.testing.assert_close(loss.detach(), msf_loss(q, t, bank_before, 3))

    # the normalised targets were enqueued: pointer 0 → 8, then 16 → wraps to 4
    t = torch.nn.functional.normalize(t, dim=1)
    assert int(method.bank_ptr) == b
    torch.testing.assert_close(method.bank[:b], t)
    torch.testing.assert_close(method.bank[b:], bank_before[b:])
    method(views)
    assert int(method.bank_ptr) == (2 * b) % size
    torch.testing.assert_close(method.bank[:4], t[4:])
    torch.testing.assert_close(method.bank[b:], t[:4])

    method.eval()
    frozen = method.bank.clone()
    with torch.no_grad():
        assert torch.isfinite(method(views))
    assert torch.equal(method.bank, frozen) and int(method.bank_ptr) == 4


def test_msf_symmetric_averages_both_directions_and_enqueues_2b() -> None:
    torch.manual_seed(1)
    method = tiny_msf(k=2, memory_size=20, symmetric=True).train()
    views = [torch.rand(8, 1, 16, 16), torch.rand(8, 1, 16, 16)]
    bank_before = method.bank.clone()
    loss = method(views)
    with torch.no_grad():
        q1, q2 = (method.predictor(method.projector(method.backbone(v))) for v in views)
        t1, t2 = (method.target_projector(method.target_backbone(v)) for v in views)
    expected = 0.5 * (msf_loss(q1, t2, bank_before, 2) + msf_loss(q2, t1, bank_before, 2))
    torch.testing.assert_close(loss.detach(), expected)
    assert int(method.bank_ptr) == 16
    method(views)
    assert int(method.bank_ptr) == 12
