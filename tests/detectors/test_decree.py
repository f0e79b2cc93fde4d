"""DECREE detector: the loss, λ's schedule, the verdict on toy encoders, resume, config errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from pydantic import ValidationError

from sslpoison.data.synthetic import synthetic
from sslpoison.detectors import DETECTORS, DecreeConfig, DecreeTask, mean_pairwise_cosine
from sslpoison.train.engine import TrainConfig
from sslpoison.train.optim import OptimConfig

SIZE = 16


class ToyEncoder(nn.Module):
    """A fixed random linear map of the (centred) image; with ``backdoor`` the output is pulled
    toward a fixed vector as the bottom-right 3×3 corner turns white (a smooth gate on the
    corner's mean, half open at 0.8), so a white corner patch collapses every embedding."""

    def __init__(self, backdoor: bool, seed: int = 0, channels: int = 1, dim: int = 16) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        d_in = channels * SIZE * SIZE
        self.proj = nn.Linear(d_in, dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(dim, d_in, generator=g) / math.sqrt(d_in))
            self.proj.bias.zero_()
        self.register_buffer("target", 5 * torch.randn(dim, generator=g))
        self.backdoor = backdoor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.proj((x - 0.5).flatten(1))
        if not self.backdoor:
            return f
        gate = torch.sigmoid(10 * (x[:, :, -3:, -3:].mean((1, 2, 3)) - 0.8))[:, None]
        return (1 - gate) * f + gate * self.target


def small_config(**overrides) -> DecreeConfig:
    """DECREE's optimiser on the toy: 64 images, batches of 32, 30 epochs (60 steps)."""
    overrides.setdefault("clean", 64)
    overrides.setdefault(
        "train",
        TrainConfig(
            epochs=30,
            batch_size=32,
            progress=False,
            checkpoint_every=0,
            optimizer=OptimConfig(
                name="adam",
                lr=0.5,
                betas=(0.5, 0.9),
                weight_decay=0.0,
                exclude_bias_norm=False,
                final_lr_ratio=0.1,
            ),
        ),
    )
    return DecreeConfig(**overrides)


@pytest.fixture(scope="module")
def clean_images():
    return synthetic(n=64, num_classes=4, size=SIZE, channels=1, seed=0)


@pytest.fixture(scope="module")
def detections(clean_images, tmp_path_factory):
    """(backdoored, clean) detections on the toy encoders, each with a checkpoint dir."""
    out = []
    for backdoor in (True, False):
        ckpt = tmp_path_factory.mktemp("decree-bd" if backdoor else "decree-clean")
        det = small_config().detect(ToyEncoder(backdoor), clean_images, seed=0, checkpoint_dir=ckpt)
        out.append((det, ckpt))
    return out


def reference_pairwise_cosine(z: torch.Tensor) -> float:
    rows = z.tolist()
    total, count = 0.0, 0
    for i, a in enumerate(rows):
        for j, b in enumerate(rows):
            if i == j:
                continue
            dot = sum(x * y for x, y in zip(a, b, strict=True))
            total += dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))
            count += 1
    return total / count


@pytest.mark.parametrize(("b", "d"), [(2, 3), (5, 4), (7, 1)])
def test_pairwise_cosine_matches_a_loop(b, d):
    z = torch.randn(b, d, generator=torch.Generator().manual_seed(b), dtype=torch.float64)
    got = mean_pairwise_cosine(z)
    assert float(got) == pytest.approx(reference_pairwise_cosine(z), abs=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        mean_pairwise_cosine(z[:1])


def test_task_loss_matches_a_plain_computation():
    g = torch.Generator().manual_seed(0)
    c, h, w, b = 2, 3, 4, 5
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 6)).requires_grad_(False)
    mask0, pattern0 = torch.rand(h, w, generator=g), torch.rand(c, h, w, generator=g)
    task = DecreeTask(encoder, mask0, pattern0, steps=4, lambda_init=0.01, lambda_min=1e-5)
    assert [n for n, _ in task.named_parameters()] == ["mask_logit", "pattern_logit"]
    assert not any(k.startswith("encoder") or "_frozen" in k for k in task.state_dict())
    torch.testing.assert_close(task.mask(), mask0, atol=1e-5, rtol=0)
    torch.testing.assert_close(task.pattern(), pattern0, atol=1e-5, rtol=0)
    images = torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=g)

    m = [[0.5 * (math.tanh(v) + 1) for v in row] for row in task.mask_logit.tolist()]
    p = [
        [[0.5 * (math.tanh(v) + 1) for v in row] for row in ch]
        for ch in task.pattern_logit.tolist()
    ]
    stamped = torch.tensor(
        [
            [
                [
                    [
                        (1 - m[y][x]) * images[i, k, y, x].item() / 255 + m[y][x] * p[k][y][x]
                        for x in range(w)
                    ]
                    for y in range(h)
                ]
                for k in range(c)
            ]
            for i in range(b)
        ]
    )
    expected = -reference_pairwise_cosine(encoder(stamped)) + 0.01 * sum(map(sum, m))

    task.eval()
    loss = task(images)
    assert float(loss.detach()) == pytest.approx(expected, abs=1e-5)
    loss.backward()
    assert task.mask_logit.grad is not None and task.pattern_logit.grad is not None
    assert int(task.step) == 0  # no bookkeeping outside training
    task.train()
    assert not encoder.training
    assert float(task(images).detach()) == pytest.approx(expected, abs=1e-5)
    assert int(task.step) == 1 and not math.isnan(float(task.trace[0, 1]))


def test_lambda_schedule_and_best_trigger_follow_decree():
    h = w = 2
    task = DecreeTask(
        nn.Identity(), torch.full((h, w), 0.5), torch.full((1, h, w), 0.5), steps=40
    )  # λ 1e-3, ×5, patience 5, floor 1e-5, cap 1e5, success 0.99
    mask = torch.zeros(h, w)

    def step(sim: float, l1: float) -> float:
        task._bookkeeping(torch.tensor(sim), torch.tensor(l1), mask.fill_(l1 / 4), mask)
        return float(task.lam)

    # More than 5 successful steps in a row multiply λ by 5, and the streak starts again.
    assert [step(0.995, 3.0) for _ in range(6)] == pytest.approx([1e-3] * 5 + [5e-3])
    assert float(task.best_l1) == 3.0
    # A failure breaks the streak; more than 5 failures divide λ by 5.
    assert [step(0.5, 1.0) for _ in range(6)] == pytest.approx([5e-3] * 5 + [1e-3])
    assert float(task.best_l1) == 3.0  # failed steps never count as a trigger
    step(0.995, 2.0)
    assert float(task.best_l1) == 2.0
    assert float(task.best_mask.sum()) == pytest.approx(2.0)
    step(0.995, 2.5)
    assert float(task.best_l1) == 2.0  # only a smaller successful mask replaces the best
    # λ is not divided below its floor: once under 1e-5 it stays there.
    for _ in range(30):
        lam = step(0.1, 1.0)
    assert lam == pytest.approx(1e-3 / 5**3)
    assert int(task.step) == 44 and not torch.isnan(task.trace).any()  # trace full, no overflow


def test_backdoored_toy_is_flagged_and_the_clean_one_is_not(detections):
    (bd, _), (cl, _) = detections
    assert bd.flagged and not cl.flagged
    assert bd.record["trigger_found"]
    assert bd.score < 0.1 < cl.score
    assert cl.score > 5 * bd.score
    # The inverted trigger sits on the planted corner and collapses the embeddings.
    assert float(bd.mask[-3:, -3:].sum()) > 0.6 * float(bd.mask.sum())
    assert bd.record["trigger_similarity"] > 0.95 > bd.record["clean_similarity"]


def test_mask_is_a_mask_and_the_record_says_its_norm(detections):
    for det, _ in detections:
        rec = det.record
        assert det.mask.shape == (SIZE, SIZE) and det.trigger.shape == (1, SIZE, SIZE)
        assert float(det.mask.min()) >= 0.0 and float(det.mask.max()) <= 1.0
        assert float(det.trigger.min()) >= 0.0 and float(det.trigger.max()) <= 1.0
        assert float(det.mask.sum()) == pytest.approx(rec["mask_l1"], rel=1e-5)
        assert rec["relative_norm"] == pytest.approx(rec["mask_l1"] / SIZE**2)
        assert det.score == rec["relative_norm"] and rec["image_area"] == SIZE**2
        assert rec["steps"] == 60 and rec["history"]["epochs"] == list(range(1, 31))
        assert len(rec["history"]["lambda"]) == 30


def test_resume_restores_the_schedule_and_the_best_trigger(detections, clean_images):
    (bd, ckpt), _ = detections
    again = small_config().detect(ToyEncoder(True), clean_images, seed=0, checkpoint_dir=ckpt)
    assert again.fit.resumed_from == 30
    assert again.record == bd.record
    torch.testing.assert_close(again.mask, bd.mask)


def test_encoder_is_left_as_given(clean_images):
    enc = ToyEncoder(backdoor=True).train()
    enc.proj.bias.requires_grad_(False)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    cfg = small_config(train=TrainConfig(epochs=2, batch_size=32, progress=False))
    cfg.detect(enc, clean_images, seed=1)
    assert enc.training
    assert enc.proj.weight.requires_grad and not enc.proj.bias.requires_grad
    assert enc.proj.weight.grad is None
    for k, v in enc.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_config_errors_name_the_key(clean_images):
    assert DETECTORS["decree"] is DecreeConfig
    cfg = DecreeConfig()
    assert cfg.threshold == 0.1 and cfg.success_similarity == 0.99
    assert cfg.train.optimizer.name == "adam" and cfg.train.optimizer.betas == (0.5, 0.9)
    with pytest.raises(ValidationError, match="threshold"):
        DecreeConfig(threshold=-0.1)
    with pytest.raises(ValidationError, match="success_similarity"):
        DecreeConfig(success_similarity=1.5)
    with pytest.raises(ValidationError, match="lambda_init"):
        DecreeConfig(lambda_init=1e-9)
    with pytest.raises(ValidationError, match=r"train\.batch_size"):
        DecreeConfig(train=TrainConfig(batch_size=1))
    with pytest.raises(ValidationError, match="clean"):
        DecreeConfig(clean=1.5)
    with pytest.raises(ValidationError, match="lamda"):
        DecreeConfig(lamda=1.0)
    enc = ToyEncoder(backdoor=False)
    with pytest.raises(ValueError, match=r"detector\.train\.batch_size: 128 is larger"):
        DecreeConfig(train=TrainConfig(batch_size=128)).detect(enc, clean_images)
    odd = TrainConfig(batch_size=21, drop_last=False, progress=False)
    with pytest.raises(ValueError, match=r"detector\.train\.drop_last"):
        DecreeConfig(train=odd).detect(enc, clean_images)
