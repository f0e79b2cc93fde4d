"""MoCo v2: the loss against a loop-based InfoNCE, the queue, and the module end to end."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sslpoison.data.augment import RECIPES
from sslpoison.models import build_backbone
from sslpoison.ssl import METHODS, MoCo
from sslpoison.ssl.moco import enqueue, moco_loss


def reference_moco_loss(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
) -> float:
    """Per query: −log( exp(q·k⁺/τ) / (exp(q·k⁺/τ) + Σ_negatives exp(q·n/τ)) ), cosines."""

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(a @ b) / (float(a.norm()) * float(b.norm()))

    total = 0.0
    for i in range(q.shape[0]):
        pos = cos(q[i], k[i]) / temperature
        negs = [cos(q[i], n) / temperature for n in queue]
        total += -pos + math.log(math.exp(pos) + sum(math.exp(s) for s in negs))
    return total / q.shape[0]


def test_moco_loss_matches_loop_reference() -> None:
    g = torch.Generator().manual_seed(0)
    for b, d, k, tau in [(4, 3, 5, 0.2), (3, 8, 16, 0.07), (1, 2, 1, 1.0)]:
        q = torch.randn(b, d, generator=g, dtype=torch.float64)
        key = torch.randn(b, d, generator=g, dtype=torch.float64)
        queue = torch.randn(k, d, generator=g, dtype=torch.float64)
        expected = torch.tensor(reference_moco_loss(q, key, queue, tau), dtype=torch.float64)
        torch.testing.assert_close(moco_loss(q, key, queue, tau), expected)


def test_moco_loss_gradient_flows_to_queries_only() -> None:
    g = torch.Generator().manual_seed(1)
    q = torch.randn(4, 6, generator=g, requires_grad=True)
    k = torch.randn(4, 6, generator=g, requires_grad=True)
    queue = torch.randn(10, 6, generator=g, requires_grad=True)
    moco_loss(q, k, queue, 0.2).backward()
    assert q.grad is not None and k.grad is None and queue.grad is None


def reference_enqueue(queue: torch.Tensor, ptr: int, keys: torch.Tensor) -> tuple[list, int]:
    rows = [row.clone() for row in queue]
    for key in keys:
        rows[ptr] = key.clone()
        ptr = (ptr + 1) % len(rows)
    return rows, ptr


@pytest.mark.parametrize(("size", "ptr", "n"), [(8, 0, 4), (5, 3, 4), (6, 2, 6), (3, 1, 7)])
def test_enqueue_wraps_around_like_one_by_one_writes(size: int, ptr: int, n: int) -> None:
    g = torch.Generator().manual_seed(size * 100 + ptr * 10 + n)
    queue = torch.randn(size, 3, generator=g)
    keys = torch.randn(n, 3, generator=g)
    rows, expected_ptr = reference_enqueue(queue, ptr, keys)
    pointer = torch.tensor([ptr])
    enqueue(queue, pointer, keys)
    torch.testing.assert_close(queue, torch.stack(rows))
    assert int(pointer) == expected_ptr


def tiny_moco(**kwargs) -> MoCo:
    backbone = build_backbone("resnet18", width=0.125, in_channels=1)
    return MoCo(backbone, proj_hidden=32, proj_dim=16, **kwargs)


def test_moco_registered_with_its_recipe_and_schedule() -> None:
    assert METHODS["mocov2"] is MoCo
    assert MoCo.augmentation == "mocov2" and MoCo.augmentation in RECIPES
    assert tiny_moco(momentum=0.999).momentum == (0.999, 0.999)
    with pytest.raises(ValueError, match="temperature"):
        tiny_moco(temperature=0.0)


def test_moco_module_end_to_end() -> None:
    torch.manual_seed(0)
    method = tiny_moco(queue_size=20, temperature=0.2)
    method.train()
    b = 8
    views = [torch.rand(b, 1, 16, 16), torch.rand(b, 1, 16, 16)]

    pairs = method.momentum_pairs()
    assert [type(t) for _, t in pairs] == [type(method.backbone), type(method.projector)]
    for online, target in pairs:
        online_state, target_state = online.state_dict(), target.state_dict()
        assert online_state.keys() == target_state.keys()
        for name, value in online_state.items():
            assert value.shape == target_state[name].shape
            assert torch.equal(value, target_state[name])
            assert value.data_ptr() != target_state[name].data_ptr()
        assert all(not p.requires_grad for p in target.parameters())
        assert all(p.requires_grad for p in online.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in method.projector.modules())

    queue_before = method.queue.clone()
    target_before = [p.clone() for _, t in pairs for p in t.parameters()]
    torch.testing.assert_close(method.queue.norm(dim=1), torch.ones(20))
    loss = method(views)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    for online, target in pairs:
        assert all(p.grad is not None for p in online.parameters())
        assert all(p.grad is None for p in target.parameters())
    # the method never moves its target itself
    for before, p in zip(target_before, (p for _, t in pairs for p in t.parameters()), strict=True):
        assert torch.equal(before, p)

    # loss = mean of both directions against the queue as it was *before* this step
    with torch.no_grad():
        q1, q2 = (method.projector(method.backbone(v)) for v in views)
        k1, k2 = (method.key_projector(method.key_backbone(v)) for v in views)
        expected = 0.5 * (
            moco_loss(q1, k2, queue_before, 0.2) + moco_loss(q2, k1, queue_before, 0.2)
        )
    torch.testing.assert_close(loss.detach(), expected)

    # both views' normalised keys were enqueued: 2B = 16 slots, pointer 0 → 16
    assert int(method.queue_ptr) == 2 * b
    keys = torch.nn.functional.normalize(torch.cat([k1, k2]), dim=1)
    torch.testing.assert_close(method.queue[: 2 * b], keys)
    torch.testing.assert_close(method.queue[2 * b :], queue_before[2 * b :])
    method(views)  # 16 + 16 = 32 → wraps to 12
    assert int(method.queue_ptr) == (4 * b) % 20
    torch.testing.assert_close(method.queue[:12], keys[4:])
    torch.testing.assert_close(method.queue[16:], keys[:4])

    # eval mode leaves the queue alone
    method.eval()
    frozen = method.queue.clone()
    with torch.no_grad():
        assert torch.isfinite(method(views))
    assert torch.equal(method.queue, frozen) and int(method.queue_ptr) == 12


def test_moco_asymmetric_uses_view1_as_query_and_enqueues_b_keys() -> None:
    torch.manual_seed(1)
    method = tiny_moco(queue_size=12, symmetric=False).train()
    views = [torch.rand(8, 1, 16, 16), torch.rand(8, 1, 16, 16)]
    queue_before = method.queue.clone()
    loss = method(views)
    with torch.no_grad():
        q1 = method.projector(method.backbone(views[0]))
        k2 = method.key_projector(method.key_backbone(views[1]))
    torch.testing.assert_close(loss.detach(), moco_loss(q1, k2, queue_before, 0.2))
    assert int(method.queue_ptr) == 8
    method(views)
    assert int(method.queue_ptr) == 4


def _ddp_worker(rank: int, world: int, tmp: str) -> None:
    """One gloo rank: a MoCo step and an MSF step on this rank's data; results to a file."""
    import datetime

    import torch.nn.functional as F

    from sslpoison.ssl import MSF
    from sslpoison.ssl.msf import msf_loss

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{tmp}/store",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        g = torch.Generator().manual_seed(100 + rank)  # different data on every rank
        views = [torch.rand(4, 1, 16, 16, generator=g) for _ in range(2)]
        torch.manual_seed(0)  # same initial weights and queue on every rank
        moco = tiny_moco(queue_size=24).train()
        moco(views).backward()
        with torch.no_grad():
            keys = torch.cat([moco.key_projector(moco.key_backbone(v)) for v in views])
        torch.manual_seed(0)
        backbone = build_backbone("resnet18", width=0.125, in_channels=1)
        msf = MSF(backbone, k=3, memory_size=24, proj_hidden=32, proj_dim=16, pred_hidden=32)
        msf.train()
        bank_before = msf.bank.clone()
        loss = msf(views)
        loss.backward()
        with torch.no_grad():
            q = msf.predictor(msf.projector(msf.backbone(views[0])))
            t = F.normalize(msf.target_projector(msf.target_backbone(views[1])), dim=1)
            other = msf.bank[4 * (1 - rank) : 4 * (2 - rank)]  # the other rank's targets
            expected = msf_loss(q, t, torch.cat([other, bank_before]), 3)
        out = {
            "moco": (moco.queue, moco.queue_ptr, F.normalize(keys, dim=1)),
            "msf": (msf.bank, msf.bank_ptr, t),
            "msf_loss": (loss.detach(), expected),
        }
        torch.save(out, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(
    not dist.is_available() or "fork" not in mp.get_all_start_methods(),
    reason="needs torch.distributed (gloo) and fork",
)
def test_moco_and_msf_gather_from_every_rank_under_ddp(tmp_path) -> None:
    """Two gloo ranks: every rank's queue/bank gets every rank's new entries, in rank order,
    and MSF searches the other ranks' current targets too."""
    world = 2
    # fork: the children start at once, without re-importing torch (one thread each)
    mp.start_processes(_ddp_worker, (world, str(tmp_path)), nprocs=world, start_method="fork")
    out = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    for name, per_rank in [("moco", 8), ("msf", 4)]:
        (queue0, ptr0, new0), (queue1, ptr1, new1) = out[0][name], out[1][name]
        assert int(ptr0) == int(ptr1) == per_rank * world
        torch.testing.assert_close(queue0, queue1)
        torch.testing.assert_close(queue0[: per_rank * world], torch.cat([new0, new1]))
    for r in range(world):
        torch.testing.assert_close(*out[r]["msf_loss"])
