"""The training engine: schedule, EMA hook, checkpoints, exact resume, DDP on gloo."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn as nn

from sslpoison.train.checkpoint import load_checkpoint
from sslpoison.train.engine import TensorBatches, TrainConfig, ema_momentum, ema_update, fit
from sslpoison.train.optim import OptimConfig, build_optimizer, lr_factor
from sslpoison.utils import seeded


class Regression(nn.Module):
    """A noisy least-squares task: dropout makes the loss depend on the global RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.net(x).squeeze(1) - y).pow(2).mean()


def _data(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(n, generator=g)


def _cfg(**kw) -> TrainConfig:
    name = kw.pop("opt", "sgd")
    # LARS adapts every tensor here: plain-SGD biases at a LARS learning rate would diverge.
    opt = OptimConfig(
        name=name, lr=kw.pop("lr", 0.01), warmup_epochs=1, exclude_bias_norm=name != "lars"
    )
    return TrainConfig(
        epochs=kw.pop("epochs", 6), batch_size=16, optimizer=opt, progress=False, **kw
    )


def test_fit_reduces_the_loss():
    torch.manual_seed(0)
    task = Regression()
    x, y = _data()
    result = fit(task, TensorBatches(x, y, batch_size=16), _cfg(epochs=10))
    assert result.losses[-1] < 0.2 * result.losses[0]
    assert result.steps == 10 * (96 // 16)


@pytest.mark.parametrize(
    ("opt", "lr"), [("sgd", 0.01), ("lars", 20.0), ("adam", 0.05), ("adamw", 0.05)]
)
def test_every_optimizer_trains(opt, lr):
    torch.manual_seed(0)
    task = Regression()
    x, y = _data()
    result = fit(task, TensorBatches(x, y, batch_size=16), _cfg(opt=opt, lr=lr, epochs=8))
    assert result.losses[-1] < 0.5 * result.losses[0]


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    x, y = _data()
    torch.manual_seed(0)
    straight = Regression()
    fit(straight, TensorBatches(x, y, batch_size=16), _cfg(), seed=3)

    class Interrupt(Exception):
        pass

    def stop_after_3(epoch: int, _loss: float) -> None:
        if epoch == 3:
            raise Interrupt

    torch.manual_seed(0)
    first = Regression()
    with pytest.raises(Interrupt):
        fit(
            first,
            TensorBatches(x, y, batch_size=16),
            _cfg(),
            seed=3,
            checkpoint_dir=tmp_path,
            on_epoch_end=[stop_after_3],
        )
    assert load_checkpoint(tmp_path)[0] == 3
    torch.manual_seed(123)  # a different process state: the checkpoint must restore it all
    resumed = Regression()
    result = fit(
        resumed, TensorBatches(x, y, batch_size=16), _cfg(), seed=3, checkpoint_dir=tmp_path
    )
    assert result.resumed_from == 3
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert len(list(tmp_path.glob("ckpt-*.safetensors"))) == 1  # old checkpoints pruned


def test_fit_trains_from_its_seed_and_leaves_the_global_rng_as_it_was():
    x, y = _data()
    trained = []
    for state in (1, 2):  # whatever the global state is before
        with seeded(0):
            task = Regression()
        torch.manual_seed(state)
        before = torch.get_rng_state()
        fit(task, TensorBatches(x, y, batch_size=16), _cfg(epochs=2), seed=3)
        assert torch.equal(torch.get_rng_state(), before)
        trained.append([p.detach() for p in task.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*trained, strict=True))


def test_lr_schedule_warms_up_then_follows_a_cosine():
    cfg = OptimConfig(lr=1.0, warmup_epochs=1, final_lr_ratio=0.0)
    factors = [lr_factor(s, 110, 10, cfg) for s in range(110)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))


def test_ema_hook_moves_the_target_toward_the_online_module():
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = target.weight.detach().clone()
    ema_update([(online, target)], 0.9)
    torch.testing.assert_close(target.weight, 0.9 * before + 0.1 * online.weight.detach())
    assert ema_momentum(0.99, 1.0, 0, 100) == pytest.approx(0.99)
    assert ema_momentum(0.99, 1.0, 100, 100) == pytest.approx(1.0)


def test_engine_applies_the_task_momentum_pairs():
    class WithTarget(Regression):
        momentum = (0.5, 0.5)

        def __init__(self) -> None:
            super().__init__()
            self.target = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))
            self.target.load_state_dict(self.net.state_dict())
            self.target.requires_grad_(False)

        def momentum_pairs(self):
            return [(self.net, self.target)]

    torch.manual_seed(0)
    task = WithTarget()
    x, y = _data()
    fit(task, TensorBatches(x, y, batch_size=16), _cfg(epochs=1))
    w_online, w_target = task.net[0].weight, task.target[0].weight
    assert not torch.equal(w_online, w_target)  # it lags behind ...
    assert torch.allclose(w_online, w_target, atol=0.5)  # ... but follows


def test_no_trainable_parameter_is_refused():
    frozen = Regression().requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        build_optimizer(frozen, OptimConfig())


def test_non_finite_loss_stops_with_a_clear_error():
    class Exploding(Regression):
        def forward(self, x, y):
            return super().forward(x, y) * float("nan")

    x, y = _data()
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        fit(Exploding(), TensorBatches(x, y, batch_size=16), _cfg(epochs=1))


def test_batches_cover_the_epoch_without_repeats():
    x = torch.arange(50)
    batches = TensorBatches(x, batch_size=8, drop_last=False, seed=1)
    seen = torch.cat([b[0] for b in batches.epoch(0)])
    assert len(batches) == 7 and sorted(seen.tolist()) == list(range(50))
    again = torch.cat([b[0] for b in batches.epoch(0)])
    assert torch.equal(seen, again)
    assert not torch.equal(seen, torch.cat([b[0] for b in batches.epoch(1)]))
