"""Stage 1 and gradient canceling in feature space, on toy problems whose answer is known: the
Newton distance against a dense computation, poisons that move the retrained head onto the
target, and the bisection for the largest reachable radius."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslpoison.attacks import target_head
from sslpoison.attacks.linear_victim import LinearVictim, gradpc
from sslpoison.attacks.newton import NewtonDistance
from sslpoison.attacks.target_head import (
    RadiusSearch,
    TargetHeadConfig,
    choose_target,
    gc_in_features,
    head_distance,
    target_at,
)
from sslpoison.eval.probes import standardiser


def toy(n: int = 300, d: int = 5, k: int = 3, seed: int = 0, l2: float = 1e-3):
    """Three Gaussian blobs (raw float64 features, labels) and the victim of them."""
    g = torch.Generator().manual_seed(seed)
    centres = 2 * torch.randn(k, d, generator=g, dtype=torch.float64)
    labels = torch.arange(n) % k
    features = centres[labels] + torch.randn(n, d, generator=g, dtype=torch.float64) + 3.0
    mean, std = standardiser(features)
    return features, labels, LinearVictim(mean, std, l2, k)


def dense_newton(victim, target, x, labels, poisons, poison_labels):
    """‖H⁻¹g‖² / ‖θ*‖² by autograd: the victim's objective in the clean standardisation
    (mean CE over clean ∪ poisons + λ Σ W² s², s = the union's std over the clean one), its
    gradient and full Hessian at θ*, and a dense solve."""
    k, d = target.weight.shape
    raw = victim.raw(torch.cat([x, poisons]))
    s = raw.std(0) / victim.std
    x_all, y_all = torch.cat([x, poisons]), torch.cat([labels, poison_labels])
    theta = torch.cat([target.weight, target.bias[:, None]], 1).detach().flatten()
    theta.requires_grad_(True)

    def objective(t):
        t = t.view(k, d + 1)
        ce = F.cross_entropy(x_all @ t[:, :-1].T + t[:, -1], y_all)
        return ce + victim.l2 * (t[:, :-1].pow(2) * s.pow(2)).sum()

    grad = torch.autograd.grad(objective(theta), theta, create_graph=True)[0]
    rows = [torch.autograd.grad(grad[i], theta, create_graph=True)[0] for i in range(len(theta))]
    hessian = torch.stack(rows) + 1e-9 * torch.eye(len(theta), dtype=theta.dtype)
    step = torch.linalg.solve(hessian, grad)
    return step.pow(2).sum() / theta.detach().pow(2).sum()


def test_the_newton_distance_and_its_gradient_match_a_dense_computation():
    features, labels, victim = toy(n=150, d=4)
    x = victim.standardise(features)
    target = gradpc(victim.fit(x, labels), x, labels, 0.3, batch_size=16)
    g = torch.Generator().manual_seed(1)
    poisons = x[:12] + torch.randn(12, 4, generator=g, dtype=torch.float64)
    poison_labels = (labels[:12] + 1) % 3
    p1, p2 = poisons.clone().requires_grad_(True), poisons.clone().requires_grad_(True)
    ours = NewtonDistance(victim, target, x, labels, cg_iterations=200, tolerance=1e-12)
    value = ours(p1, poison_labels)
    reference = dense_newton(victim, target, x, labels, p2, poison_labels)
    assert torch.allclose(value, reference, rtol=1e-9), (value, reference)
    (g1,) = torch.autograd.grad(value, p1)
    (g2,) = torch.autograd.grad(reference, p2)
    assert torch.allclose(g1, g2, rtol=1e-7, atol=1e-12)
    # the same without the dense clean Hessian (products from the features)
    free = NewtonDistance(victim, target, x, labels, cg_iterations=200, tolerance=1e-12)
    free.h_clean = None
    assert torch.allclose(free(poisons, poison_labels), reference, rtol=1e-8)


def test_feature_space_gc_moves_the_retrained_head_onto_the_target():
    features, labels, victim = toy()
    x = victim.standardise(features)
    head = victim.fit(x, labels)
    target = target_at(head, x, labels, 0.1, TargetHeadConfig(), seed=0)
    base = torch.arange(0, 300, 10)  # 30 poisons, 10 % of the set, with their true labels
    runs = {}
    for objective in ("newton", "gradient"):
        poisons, values = gc_in_features(
            victim, target, x, labels, x[base], labels[base], steps=150, lr=0.1, seed=0,
            desc="test", objective=objective,
        )  # fmt: skip
        assert values[-1] < values[0]
        assert (poisons >= x.min(0).values).all() and (poisons <= x.max(0).values).all()
        runs[objective] = head_distance(victim.retrain(x, labels, poisons, labels[base]), target)
    clean = head_distance(head, target)
    assert runs["newton"] < 0.1 * clean  # the retrained head is on the target
    assert runs["gradient"] > 2 * runs["newton"]  # a small gradient left it further away


def test_the_radius_search_finds_the_reachability_threshold_by_bisection(monkeypatch):
    """A toy where the answer is known: a stand-in GC reaches exactly the radii ≤ 0.137."""
    features, labels, victim = toy(n=90)
    x = victim.standardise(features)
    head = victim.fit(x, labels)
    threshold, tried = 0.137, []

    def fake_gc(victim, target, x, labels, start, poison_labels, **kw):
        tried.append(float(kw["desc"].split()[-1]))
        return start, [1.0, 0.5]

    def fake_retrain(self, x, labels, poisons, poison_labels):
        radius = tried[-1]
        goal = target_at(head, x, labels, radius, TargetHeadConfig(), 0)
        share = 0.1 if radius <= threshold else 0.9  # of the way left from the clean head
        mixed = torch.nn.Linear(x.shape[1], 3).double()
        with torch.no_grad():
            mixed.weight.copy_(goal.weight + share * (head.weight - goal.weight))
            mixed.bias.copy_(goal.bias + share * (head.bias - goal.bias))
        return mixed

    monkeypatch.setattr(target_head, "gc_in_features", fake_gc)
    monkeypatch.setattr(LinearVictim, "retrain", fake_retrain)
    search = RadiusSearch(low=0.01, high=1.0, steps=6, gc_steps=1)
    cfg = TargetHeadConfig(radius="auto", search=search)
    found = choose_target(victim, head, x, labels, x[:9], labels[:9], cfg, seed=0)
    ratio = (1.0 / 0.01) ** (1 / 2**6)  # the bracket after 6 halvings on a log scale
    assert threshold / ratio < found.radius <= threshold
    assert len(tried) == 6 and found.poisons is not None
    assert [t["reached"] for t in found.facts["radius_search"]] == [t <= threshold for t in tried]
    # nothing reachable: the lowest radius, tried once more
    threshold, tried[:] = 0.001, []
    found = choose_target(victim, head, x, labels, x[:9], labels[:9], cfg, seed=0)
    assert found.radius == 0.01 and len(tried) == 7 and found.poisons is None
