"""The attacker's model of the linear-head victim: GradPC, the gradient-canceling objective and
the implicit (total) gradient, each against a plain computation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslpoison.attacks.linear_victim import (
    LinearVictim,
    clean_sums,
    conjugate_gradient,
    gc_objective,
    gradpc,
    implicit_surrogate,
    raw_head,
    refit_bias,
)
from sslpoison.eval.probes import ProbeConfig, fit_logistic, standardiser


def toy(n: int = 300, d: int = 6, k: int = 3, seed: int = 0):
    """Three Gaussian blobs in d dimensions, raw (not standardised) features, float64."""
    g = torch.Generator().manual_seed(seed)
    centres = 2 * torch.randn(k, d, generator=g, dtype=torch.float64)
    labels = torch.arange(n) % k
    features = centres[labels] + torch.randn(n, d, generator=g, dtype=torch.float64) + 3.0
    return features, labels


def victim_of(features, labels, l2=1e-2):
    mean, std = standardiser(features)
    return LinearVictim(mean, std, l2, int(labels.max()) + 1)


def reference_gc(victim, target, features, labels, poisons, poison_labels):
    """‖∇‖² by autograd on the victim's own objective: standardise clean ∪ poisons with their
    statistics, express θ* in those coordinates, differentiate mean CE + λ‖W‖²."""
    x_all = torch.cat([features, poisons])
    y_all = torch.cat([labels, poison_labels])
    mean, std = x_all.mean(0), x_all.std(0)
    a, c = raw_head(victim, target)
    w = (a * std).clone().requires_grad_(True)
    b = (c + a @ mean).clone().requires_grad_(True)
    loss = F.cross_entropy(((x_all - mean) / std) @ w.T + b, y_all) + victim.l2 * w.pow(2).sum()
    gw, gb = torch.autograd.grad(loss, (w, b), create_graph=True)
    return gw.pow(2).sum() + gb.pow(2).sum()


def test_gc_objective_matches_autograd_on_the_victims_objective():
    features, labels = toy()
    victim = victim_of(features, labels)
    x = victim.standardise(features)
    target = gradpc(victim.fit(x, labels), x, labels, radius=0.3, batch_size=32)
    g = torch.Generator().manual_seed(1)
    poisons = features[:20] + torch.randn(20, features.shape[1], generator=g, dtype=torch.float64)
    poison_labels = (labels[:20] + 1) % 3
    sums = clean_sums(victim, target, features, labels)
    ours = gc_objective(victim, target, sums, poisons, poison_labels)
    ref = reference_gc(victim, target, features, labels, poisons, poison_labels)
    assert torch.allclose(ours, ref, rtol=1e-8), (ours, ref)
    # and its gradient with respect to the poisons
    p1 = poisons.clone().requires_grad_(True)
    p2 = poisons.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(gc_objective(victim, target, sums, p1, poison_labels), p1)
    ref_loss = reference_gc(victim, target, features, labels, p2, poison_labels)
    (g2,) = torch.autograd.grad(ref_loss, p2)
    assert torch.allclose(g1, g2, rtol=1e-6, atol=1e-12)


def test_poisons_that_cancel_the_gradient_keep_the_target_stationary():
    features, labels = toy()
    g = torch.Generator().manual_seed(2)
    poisons = features[:30] + 2 * torch.randn(30, features.shape[1], generator=g).double()
    poison_labels = (labels[:30] + 1) % 3
    # θ*: the head the victim trains on clean ∪ these poisons; they cancel its gradient
    x_all, y_all = torch.cat([features, poisons]), torch.cat([labels, poison_labels])
    mean, std = standardiser(x_all)
    l2 = 1e-2
    fitted = fit_logistic((x_all - mean) / std, y_all, 3, l2, max_iter=500)
    victim = victim_of(features, labels, l2)  # the attacker's coordinates: clean statistics
    target = torch.nn.Linear(features.shape[1], 3).double()
    with torch.no_grad():  # the same function of raw features, in the clean coordinates
        a = fitted.weight / std
        c = fitted.bias - a @ mean
        target.weight.copy_(a * victim.std)
        target.bias.copy_(c + a @ victim.mean)
    sums = clean_sums(victim, target, features, labels)
    assert gc_objective(victim, target, sums, poisons, poison_labels) < 1e-10
    # A head trained from θ* on clean ∪ poisons stays (nearly) where it started ...
    again = fit_logistic((x_all - mean) / std, y_all, 3, l2, max_iter=200, init=fitted)
    moved = torch.cat([(again.weight - fitted.weight).flatten(), again.bias - fitted.bias])
    assert moved.norm() < 1e-4 * torch.cat([fitted.weight.flatten(), fitted.bias]).norm()
    # ... while without the poisons it moves away
    x_clean = (features - mean) / std
    away = fit_logistic(x_clean, labels, 3, l2, max_iter=200, init=fitted)
    assert (away.weight - fitted.weight).norm() > 100 * moved.norm()


def test_gradpc_stays_in_its_ball_and_raises_the_clean_loss():
    features, labels = toy()
    victim = victim_of(features, labels)
    x = victim.standardise(features)
    head = victim.fit(x, labels)
    theta = torch.cat([head.weight.flatten(), head.bias]).detach()
    before = F.cross_entropy(head(x), labels)
    for radius in (0.01, 0.1, 0.5):
        target = gradpc(head, x, labels, radius, batch_size=16)
        moved = torch.cat([target.weight.flatten(), target.bias]) - theta
        assert moved.norm() <= radius * theta.norm() * (1 + 1e-9)
        assert moved.norm() >= 0.99 * radius * theta.norm()  # unit steps reach the boundary
        assert F.cross_entropy(target(x), labels) > before
    assert torch.equal(torch.cat([head.weight.flatten(), head.bias]).detach(), theta)


def test_refit_bias_zeroes_the_bias_gradient():
    features, labels = toy()
    victim = victim_of(features, labels)
    x = victim.standardise(features)
    target = refit_bias(gradpc(victim.fit(x, labels), x, labels, 0.5), x, labels)
    b = target.bias.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(x @ target.weight.T + b, labels), b)
    assert grad.abs().max() < 1e-6


def test_conjugate_gradient_solves_a_positive_definite_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(8, 8, generator=g, dtype=torch.float64)
    h = m @ m.T + 0.5 * torch.eye(8, dtype=torch.float64)
    b = torch.randn(8, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: h @ v, b, iterations=50, tolerance=1e-24)
    assert torch.allclose(h @ x, b, atol=1e-9)


def test_implicit_surrogate_gives_the_derivative_of_the_retrained_heads_loss():
    features, labels = toy(n=150, d=4)
    victim = victim_of(features, labels, l2=5e-2)
    x = victim.standardise(features)
    g = torch.Generator().manual_seed(3)
    poisons = x[:10] + torch.randn(10, 4, generator=g, dtype=torch.float64)
    poison_labels = (labels[:10] + 1) % 3
    probe_x, probe_y = x[::3], labels[::3]

    def outer(w, b):
        return F.cross_entropy(probe_x @ w.T + b, probe_y)

    def retrained_loss(p):
        head = victim.fit(torch.cat([x, p]), torch.cat([labels, poison_labels]), max_iter=500)
        return outer(head.weight, head.bias).item()

    head = victim.fit(torch.cat([x, poisons]), torch.cat([labels, poison_labels]), max_iter=500)
    p = poisons.clone().requires_grad_(True)
    surrogate = implicit_surrogate(
        victim, head, x, labels, p, poison_labels, outer, cg_iterations=100, damping=0.0
    )
    (grad,) = torch.autograd.grad(surrogate, p)
    direction = torch.randn(poisons.shape, generator=g, dtype=torch.float64)
    step = 1e-4
    numeric = (
        retrained_loss(poisons + step * direction) - retrained_loss(poisons - step * direction)
    ) / (2 * step)
    # the retrained heads are L-BFGS solutions (gradient tolerance 1e-6): agreement to 2 %
    assert abs((grad * direction).sum().item() - numeric) < 0.02 * abs(numeric)


def test_the_victim_model_picks_the_probes_l2():
    features, labels = toy()
    probe = ProbeConfig(l2_grid=[1.0, 1e-4])
    victim = LinearVictim.of(features, labels, 3, probe)
    assert victim.l2 in (1.0, 1e-4)
    assert torch.allclose(
        victim.standardise(features).mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-9
    )


def test_one_newton_step_follows_a_small_move_of_the_poisons_to_the_new_optimum():
    from sslpoison.attacks.linear_victim import HeadObjective, newton_refit, theta_of

    features, labels = toy(n=150, d=4)
    victim = victim_of(features, labels, l2=1e-3)
    x = victim.standardise(features)
    g = torch.Generator().manual_seed(4)
    poisons = x[:15] + torch.randn(15, 4, generator=g, dtype=torch.float64)
    poison_labels = (labels[:15] + 1) % 3
    x_all, y_all = torch.cat([x, poisons]), torch.cat([labels, poison_labels])
    head = victim.fit(x_all, y_all, max_iter=500)
    moved = torch.cat([x, poisons + 0.05 * torch.randn(15, 4, generator=g, dtype=torch.float64)])
    objective = HeadObjective(victim, moved, y_all)
    before = objective.gradient(theta_of(head)).norm()
    once = newton_refit(victim, head, moved, y_all)
    after = objective.gradient(theta_of(once)).norm()
    twice = objective.gradient(theta_of(newton_refit(victim, once, moved, y_all))).norm()
    assert after < 0.02 * before and twice < 1e-3 * after  # quadratic convergence
