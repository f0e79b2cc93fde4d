"""CompRess distillation defense: the loss, the queues, student init, training and resume."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sslpoison.defenses.distill as distill_module
from sslpoison.data.synthetic import synthetic
from sslpoison.defenses import DEFENSES, DistillConfig, compress_loss, make_student, reinitialise
from sslpoison.defenses.distill import DistillTask
from sslpoison.eval.features import extract_features
from sslpoison.models import build_backbone
from sslpoison.train.engine import TrainConfig, fit
from sslpoison.train.optim import OptimConfig


def reference_compress_loss(sq, tq, sb, tb, tau_s, tau_t) -> float:
    """Per query: Σ_j p_t(j) log(p_t(j) / p_s(j)) with softmaxed cosines; mean over queries."""

    def cos(a, b) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    def softmax(logits: list[float]) -> list[float]:
        top = max(logits)
        e = [math.exp(v - top) for v in logits]
        return [v / sum(e) for v in e]

    total = 0.0
    for s, t in zip(sq.tolist(), tq.tolist(), strict=True):
        ps = softmax([cos(s, a) / tau_s for a in sb.tolist()])
        pt = softmax([cos(t, a) / tau_t for a in tb.tolist()])
        total += sum(p * math.log(p / q) for p, q in zip(pt, ps, strict=True))
    return total / sq.shape[0]


@pytest.mark.parametrize(
    ("b", "ds", "dt", "k", "tau_s", "tau_t"),
    [(4, 3, 5, 6, 0.5, 0.5), (3, 8, 8, 10, 0.2, 0.1), (1, 2, 4, 1, 1.0, 0.3)],
)
def test_loss_matches_a_loop_reference(b, ds, dt, k, tau_s, tau_t):
    g = torch.Generator().manual_seed(b * 100 + k)
    sq, tq, sb, tb = (
        torch.randn(*shape, generator=g, dtype=torch.float64)
        for shape in [(b, ds), (b, dt), (k, ds), (k, dt)]
    )
    expected = reference_compress_loss(sq, tq, sb, tb, tau_s, tau_t)
    got = compress_loss(sq, tq, sb, tb, tau_s, tau_t)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_loss_is_zero_for_a_copy_and_trains_the_student_query_only():
    g = torch.Generator().manual_seed(0)
    q, bank = torch.randn(5, 4, generator=g), torch.randn(7, 4, generator=g)
    assert float(compress_loss(q, 3 * q, bank, bank, 0.04, 0.04)) == pytest.approx(0, abs=1e-6)
    sq = torch.randn(5, 3, generator=g, requires_grad=True)
    tq = torch.randn(5, 4, generator=g, requires_grad=True)
    sb = torch.randn(7, 3, generator=g, requires_grad=True)
    tb = bank.clone().requires_grad_(True)
    compress_loss(sq, tq, sb, tb).backward()
    assert sq.grad is not None and tq.grad is None and sb.grad is None and tb.grad is None
    with pytest.raises(ValueError, match="banks differ"):
        compress_loss(sq, tq, sb[:3], tb)


def test_queues_are_fifo_and_wrap_around():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 6))
    student = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    k, b = 5, 3
    t_bank0, s_bank0 = F.normalize(torch.randn(k, 6), dim=1), F.normalize(torch.randn(k, 4), dim=1)
    task = DistillTask(student, teacher, nn.Identity(), t_bank0, s_bank0, None, None, 0.1, 0.1)
    task.train()
    assert not teacher.training and task.momentum_pairs() == []
    assert [n for n, _ in task.named_parameters()] == ["student.1.weight", "student.1.bias"]
    assert set(task.state_dict()) == {
        "student.1.weight",
        "student.1.bias",
        "teacher_bank",
        "student_bank",
        "bank_ptr",
    }
    x1, x2 = (torch.randint(0, 256, (b, 1, 4, 4), dtype=torch.uint8) for _ in range(2))

    def embed(net, x):
        with torch.no_grad():
            return F.normalize(net(x.float() / 255), dim=1)

    loss1 = task(x1)
    expected = compress_loss(embed(student, x1), embed(teacher, x1), s_bank0, t_bank0, 0.1, 0.1)
    torch.testing.assert_close(loss1.detach(), expected)  # against the queues before the write
    assert int(task.bank_ptr) == 3
    torch.testing.assert_close(task.teacher_bank[:3], embed(teacher, x1))
    torch.testing.assert_close(task.student_bank[:3], embed(student, x1))
    torch.testing.assert_close(task.teacher_bank[3:], t_bank0[3:])
    task(x2)  # slots 3, 4, then wraps to 0
    assert int(task.bank_ptr) == 1
    torch.testing.assert_close(task.teacher_bank[[3, 4, 0]], embed(teacher, x2))
    torch.testing.assert_close(task.student_bank[[3, 4, 0]], embed(student, x2))
    torch.testing.assert_close(task.teacher_bank[1:3], embed(teacher, x1)[1:])
    task.eval()
    before = task.teacher_bank.clone()
    task(x1)
    assert torch.equal(task.teacher_bank, before) and int(task.bank_ptr) == 1


def test_one_queue_variant_compares_the_projected_student_with_teacher_anchors():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 6))
    student = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    head = nn.Linear(4, 6)
    bank = F.normalize(torch.randn(5, 6), dim=1)
    task = DistillTask(student, teacher, nn.Identity(), bank, None, head, 0.99, 0.2, 0.1).train()
    assert task.student_bank is None and task.momentum is None
    x = torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8)
    loss = task(x)
    with torch.no_grad():
        s, t = head(student(x.float() / 255)), teacher(x.float() / 255)
    torch.testing.assert_close(loss.detach(), compress_loss(s, t, bank, bank, 0.2, 0.1))
    torch.testing.assert_close(task.teacher_bank[:3], F.normalize(t, dim=1))


def _backbone(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_backbone("resnet18", width=0.125, in_channels=1)


def test_reinitialise_draws_independent_weights_from_the_seed():
    teacher = _backbone()
    teacher.train()
    with torch.no_grad():
        teacher(torch.rand(8, 1, 16, 16) * 3)  # BatchNorm statistics move away from 0 / 1
    rng = torch.get_rng_state()
    a, b, c = reinitialise(teacher, 1), reinitialise(teacher, 1), reinitialise(teacher, 2)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left alone
    for (name, pt), pa, pb, pc in zip(
        teacher.named_parameters(), a.parameters(), b.parameters(), c.parameters(), strict=True
    ):
        assert torch.equal(pa, pb), name
        if pt.ndim > 1:  # conv / linear weights: no value shared with the teacher or seed 2
            assert not (pa == pt).any(), name
            assert not (pa == pc).any(), name
    bn = [m for m in a.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(m.running_mean, torch.zeros_like(m.running_mean)) for m in bn)
    assert all(torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in bn)
    assert all(int(m.num_batches_tracked) == 0 for m in bn)
    assert not torch.equal(teacher.layer1[0].bn1.running_mean, bn[1].running_mean)
    assert torch.equal(a.mean, teacher.mean) and torch.equal(a.std, teacher.std)

    class Bare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))
            self.fc = nn.Linear(3, 3)

    with pytest.raises(ValueError, match="scale"):
        reinitialise(Bare(), 0)


def _cfg(epochs: int, batch: int = 32, **kw) -> DistillConfig:
    train = TrainConfig(
        epochs=epochs,
        batch_size=batch,
        progress=False,
        checkpoint_every=1,
        optimizer=OptimConfig(name="adam", lr=3e-3, weight_decay=0.0),
    )
    return DistillConfig(train=train, **kw)


def _heldout_kl(student: nn.Module, teacher: nn.Module, images: torch.Tensor) -> float:
    """CompRess loss of un-augmented held-out queries against held-out anchors (τ 0.1)."""
    zs, zt = extract_features(student, images), extract_features(teacher, images)
    half = images.shape[0] // 2
    return float(compress_loss(zs[:half], zt[:half], zs[half:], zt[half:], 0.1, 0.1))


def test_distillation_moves_the_student_toward_the_teacher():
    assert DEFENSES["distill"] is DistillConfig
    teacher = _backbone(0).eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    clean = synthetic(n=128, num_classes=4, size=16, channels=1, seed=0)
    heldout = synthetic(n=64, num_classes=4, size=16, channels=1, seed=0, split="test").images
    cfg = _cfg(
        6,
        augment={"crop_scale": (0.5, 1.0)},
        bank=1000,
        temperature_student=0.1,
        temperature_teacher=0.1,
    )
    out = cfg.apply(teacher, clean, seed=0)
    start = make_student(teacher, "random", seed=0)
    kl_random, kl_distilled = (
        _heldout_kl(start, teacher, heldout),
        _heldout_kl(out.encoder, teacher, heldout),
    )
    assert kl_distilled < 0.5 * kl_random, (kl_random, kl_distilled)
    assert out.record == {
        "student_init": "random",
        "student_arch": "resnet18",
        "variant": "2q",
        "bank": 128,  # capped at the clean images
        "clean_images": 128,
        "student_dim": 64,
        "teacher_dim": 64,
    }
    assert len(out.fit.losses) == 6 and not out.encoder.training
    # the teacher is left as it was given
    assert not teacher.training and all(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())


def test_teacher_init_starts_from_the_teacher_weights(monkeypatch):
    teacher = _backbone(0)
    clone = make_student(teacher, "teacher")
    assert clone is not teacher and clone.training
    for a, b in zip(teacher.state_dict().values(), clone.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    seen = {}

    def spy_fit(task, *args, **kwargs):
        seen["student"] = {k: v.clone() for k, v in task.student.state_dict().items()}
        seen["pairs"] = task.momentum_pairs()
        return fit(task, *args, **kwargs)

    monkeypatch.setattr(distill_module, "fit", spy_fit)
    clean = synthetic(n=32, num_classes=4, size=16, channels=1, seed=0)
    out = _cfg(1, batch=16, student="teacher").apply(teacher, clean, seed=0)
    assert out.record["student_init"] == "teacher"
    for k, v in teacher.state_dict().items():
        assert torch.equal(seen["student"][k], v), k
    assert len(seen["pairs"]) == 1  # 2q with the momentum student filling its queue
    assert out.encoder is not teacher
    with pytest.raises(ValueError, match=r"defense\.train\.batch_size: 64 is larger than the 32"):
        _cfg(1, batch=64).apply(teacher, clean)


@pytest.mark.parametrize("variant", ["2q", "1q"])
def test_an_interrupted_run_resumes_to_the_same_student(tmp_path, monkeypatch, variant):
    clean = synthetic(n=32, num_classes=4, size=16, channels=1, seed=0)
    cfg = _cfg(2, batch=16, variant=variant, bank=24)
    teacher = _backbone(0)
    straight = cfg.apply(teacher, clean, seed=3).encoder

    class Interrupt(Exception):
        pass

    def stop_after_1(epoch: int, _loss: float) -> None:
        if epoch == 1:
            raise Interrupt

    def interrupted_fit(*args, **kwargs):
        return fit(*args, **kwargs, on_epoch_end=[stop_after_1])

    with monkeypatch.context() as m:
        m.setattr(distill_module, "fit", interrupted_fit)
        with pytest.raises(Interrupt):
            cfg.apply(teacher, clean, seed=3, checkpoint_dir=tmp_path)
    torch.manual_seed(123)  # another process state: the checkpoint restores what matters
    resumed = cfg.apply(teacher, clean, seed=3, checkpoint_dir=tmp_path)
    assert resumed.fit.resumed_from == 1
    for a, b in zip(
        straight.state_dict().values(), resumed.encoder.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_config_is_strict_and_picks_the_clean_subset():
    cfg = DistillConfig(clean=10)
    assert cfg.train.optimizer.lr == 0.01 and cfg.temperature_teacher == 0.04
    data = synthetic(n=64, num_classes=4, size=16, channels=1, seed=0)
    subset = cfg.clean_subset(data, seed=1)
    assert len(subset) == 10 and torch.equal(subset.images, cfg.clean_subset(data, 1).images)
    assert len(DistillConfig(clean=0.25).clean_subset(data)) == 16
    with pytest.raises(ValueError, match="queue"):
        DistillConfig(queue=10)
    with pytest.raises(ValueError, match="crop_scale"):
        DistillConfig(augment={"crop_scale": (0.9, 0.5)})
    with pytest.raises(ValueError, match="momentum"):
        DistillConfig(momentum=1.0)
