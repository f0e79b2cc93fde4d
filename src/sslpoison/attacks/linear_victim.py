"""The victim of an indiscriminate downstream-data attack, as the attacker models it, and the
tools the attacks build on that model (Lu, Yang, Kamath, Yu, SaTML 2024).

The victim trains a linear head on the frozen encoder's features the way the linear probe
does (:mod:`sslpoison.eval.probes`): per-dimension standardised features, multinomial
logistic regression, mean cross-entropy + λ‖W‖², λ chosen on held-out labels. The attacker
knows the encoder and the clean training set, so it can rebuild that head and its λ.

* :func:`gradpc` — target parameters θ* (GradPC: Sun et al., AAAI 2021; Lu, Kamath, Yu,
  ICML 2023): normalised gradient ascent on the clean loss within an L2 ball.
* :func:`gc_objective` — gradient canceling (Lu, Kamath, Yu, ICML 2023): ‖∇θ L(clean ∪
  poisons; θ*)‖², the victim's training-objective gradient at θ*.
* :func:`implicit_surrogate` — the total gradient of a loss of the *retrained* head with
  respect to the poisons, −v·∂²L/∂θ∂φ with v = H⁻¹∇θ(loss) by conjugate gradient on
  Hessian-vector products (TGDA: Lu, Kamath, Yu, TMLR 2022), as a scalar whose gradient it is.

Everything here works in float64 on features: an N×D matrix of the encoder's outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslpoison.eval.probes import ProbeConfig, fit_logistic, select_l2, standardiser

#: A loss of the head's parameters: (W K×D, b K) → scalar.
HeadLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class LinearVictim:
    """The attacker's model of the linear-head victim: the clean training set's
    standardisation (``mean``, ``std``: D), the victim's L2 strength and class count."""

    mean: torch.Tensor
    std: torch.Tensor
    l2: float
    num_classes: int

    @classmethod
    def of(
        cls, features: torch.Tensor, labels: torch.Tensor, num_classes: int, probe: ProbeConfig,
        seed: int = 0,
    ) -> LinearVictim:  # fmt: skip
        """The victim the linear probe makes of clean N×D ``features`` (λ chosen as it does)."""
        mean, std = standardiser(features)
        l2 = select_l2((features - mean) / std, labels, num_classes, probe, seed)
        return cls(mean, std, l2, num_classes)

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        """N×D raw features → N×D standardised with the clean set's statistics."""
        return (features - self.mean) / self.std

    def raw(self, standardised: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`standardise`."""
        return standardised * self.std + self.mean

    def fit(
        self, x: torch.Tensor, labels: torch.Tensor, init: nn.Linear | None = None,
        max_iter: int = 300,
    ) -> nn.Linear:  # fmt: skip
        """The head on standardised N×D ``x`` (L-BFGS; warm-started from ``init``)."""
        return fit_logistic(x, labels, self.num_classes, self.l2, max_iter, init=init)

    def retrain(
        self, x: torch.Tensor, labels: torch.Tensor, poisons: torch.Tensor,
        poison_labels: torch.Tensor, max_iter: int = 300,
    ) -> nn.Linear:  # fmt: skip
        """The head the victim trains on clean (standardised N×D ``x``) ∪ poisons
        (standardised P×D): it standardises the union with the union's own statistics and
        fits there; returned as the same function of the features in the clean
        standardisation (this model's coordinates)."""
        raw = self.raw(torch.cat([x, poisons.detach()]))
        mean, std = standardiser(raw)
        y = torch.cat([labels, poison_labels])
        head = fit_logistic((raw - mean) / std, y, self.num_classes, self.l2, max_iter)
        weight = head.weight.detach() * self.std / std
        bias = head.bias.detach() + head.weight.detach() @ ((self.mean - mean) / std)
        return _linear(weight, bias)

    def training_loss(
        self, weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, labels: torch.Tensor,
        total: int,
    ) -> torch.Tensor:  # fmt: skip
        """Σ cross-entropy of (``x``, ``labels``) / ``total`` + the share ``len(x)/total`` of
        λ‖W‖²: summing this over disjoint parts of a set of ``total`` points gives the
        victim's objective on the whole set."""
        ce = F.cross_entropy(x @ weight.T + bias, labels, reduction="sum")
        return (ce + x.shape[0] * self.l2 * weight.pow(2).sum()) / total


def gradpc(
    head: nn.Linear, x: torch.Tensor, labels: torch.Tensor, radius: float,
    batch_size: int = 64, seed: int = 0,
) -> nn.Linear:  # fmt: skip
    """Target parameters by GradPC: one seeded pass over (standardised ``x``, ``labels``) in
    batches, each a unit step of normalised gradient **ascent** on the batch's mean
    cross-entropy (the gradient divided by its global L2 norm over W and b), the accumulated
    change projected onto the L2 ball of radius ``radius``·‖(W, b)‖ around ``head``.

    Returns a new head; ``head`` is left as it was."""
    w0, b0 = head.weight.detach(), head.bias.detach()
    limit = radius * torch.cat([w0.flatten(), b0]).norm()
    w, b = w0.clone(), b0.clone()
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    for batch in order.to(x.device).split(batch_size):
        w.requires_grad_(True)
        b.requires_grad_(True)
        loss = F.cross_entropy(x[batch] @ w.T + b, labels[batch])
        gw, gb = torch.autograd.grad(loss, (w, b))
        with torch.no_grad():
            norm = torch.cat([gw.flatten(), gb]).norm().clamp_min(1e-12)
            dw, db = w + gw / norm - w0, b + gb / norm - b0
            shrink = (limit / torch.cat([dw.flatten(), db]).norm().clamp_min(1e-12)).clamp(max=1)
            w, b = w0 + dw * shrink, b0 + db * shrink
    return _linear(w, b)


def refit_bias(head: nn.Linear, x: torch.Tensor, labels: torch.Tensor) -> nn.Linear:
    """``head`` with its bias re-fitted (W fixed) to minimise the mean cross-entropy of
    (standardised ``x``, ``labels``): the bias part of the clean gradient then vanishes, so
    poisons need not cancel it. Each poison can shift the predicted class counts by at most
    one, and the bias part of a GradPC target's clean gradient asks for more shift than ε·N
    poisons have (the target's "poisonability" in Lu, Kamath, Yu, ICML 2023)."""
    logits = (x @ head.weight.detach().T).detach()
    bias = head.bias.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [bias], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits + bias, labels)
        loss.backward()
        return loss

    opt.step(closure)
    return _linear(head.weight.detach(), bias.detach())


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    d, k = weight.shape[1], weight.shape[0]
    head = nn.utils.skip_init(nn.Linear, d, k, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return head.requires_grad_(False)


@dataclass
class CleanSums:
    """What the gradient-canceling objective needs of the clean set at a target (so a step
    costs O(P·D·K), not O(N·D·K)): its size, Σx and Σx² per dimension (D), and the target's
    Σ(p − e_y) xᵀ (K×D) and Σ(p − e_y) (K), on raw features."""

    n: int
    sum_x: torch.Tensor
    sum_x2: torch.Tensor
    residual_x: torch.Tensor
    residual: torch.Tensor


def raw_head(victim: LinearVictim, head: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """The head on standardised features as a function of raw ones: (A K×D, c K) with
    logits = A·x + c."""
    a = head.weight.detach() / victim.std
    return a, head.bias.detach() - a @ victim.mean


def clean_sums(
    victim: LinearVictim, target: nn.Linear, features: torch.Tensor, labels: torch.Tensor
) -> CleanSums:
    """:class:`CleanSums` of raw N×D clean ``features`` at the ``target`` head."""
    a, c = raw_head(victim, target)
    residual = torch.softmax(features @ a.T + c, 1) - F.one_hot(labels, victim.num_classes)
    residual = residual.to(features.dtype)
    return CleanSums(
        features.shape[0], features.sum(0), features.pow(2).sum(0),
        residual.T @ features, residual.sum(0),
    )  # fmt: skip


def gc_objective(
    victim: LinearVictim, target: nn.Linear, clean: CleanSums, poisons: torch.Tensor,
    poison_labels: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """‖∇θ L(clean ∪ poisons; θ*)‖²: the squared norm of the victim's training-objective
    gradient at the target head θ*, with poisons (raw P×D features, labels P).

    The victim standardises with the statistics of clean ∪ poisons (μ′, σ′), so θ* is taken as
    the function of raw features it computes (logits A·x + c) and expressed in the victim's
    parameters W′ = A·diag(σ′), b′ = c + A·μ′; the gradient is then
    (1/M)·[Σ (p − e_y)(x − μ′)ᵀ]·diag(1/σ′) + 2λW′ for W′ and (1/M)·Σ (p − e_y) for b′, over
    all M = N + P points. Differentiable with respect to ``poisons``."""
    a, c = raw_head(victim, target)
    n, m = clean.n, clean.n + poisons.shape[0]
    mean = (clean.sum_x + poisons.sum(0)) / m
    spread = clean.sum_x2 - 2 * mean * clean.sum_x + n * mean.pow(2)
    std = ((spread + (poisons - mean).pow(2).sum(0)) / (m - 1)).clamp_min(1e-12).sqrt()
    onehot = F.one_hot(poison_labels, victim.num_classes).to(poisons.dtype)
    residual = torch.softmax(poisons @ a.T + c, 1) - onehot
    rx = clean.residual_x + residual.T @ poisons
    r = clean.residual + residual.sum(0)
    grad_w = (rx - r[:, None] * mean[None]) / std / m + 2 * victim.l2 * a * std
    grad_b = r / m
    return grad_w.pow(2).sum() + grad_b.pow(2).sum()


def conjugate_gradient(
    hvp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iterations: int = 16,
    tolerance: float = 1e-10, x0: torch.Tensor | None = None,
    precondition: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:  # fmt: skip
    """x ≈ H⁻¹b for a symmetric positive-definite H given as ``hvp(v) = H·v``: at most
    ``iterations`` steps, stopping once the squared residual ‖b − Hx‖² is below
    ``tolerance``; started from ``x0`` (default 0), preconditioned by ``precondition(r) ≈
    H⁻¹r`` when given."""
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - hvp(x) if x0 is not None else b.clone()
    if r @ r < tolerance:
        return x
    z = precondition(r) if precondition is not None else r
    p = z.clone()
    rz = r @ z
    for _ in range(iterations):
        hp = hvp(p)
        alpha = rz / (p @ hp).clamp_min(1e-30)
        x = x + alpha * p
        r = r - alpha * hp
        if r @ r < tolerance:
            break
        z = precondition(r) if precondition is not None else r
        new = r @ z
        p = z + (new / rz) * p
        rz = new
    return x


def with_ones(x: torch.Tensor) -> torch.Tensor:
    """N×D → N×(D+1), a column of ones appended (the bias input)."""
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], 1)


def curvature(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Rows of (diag(p) − p pᵀ)·z for N×K probabilities ``p`` and N×K ``z``: the softmax
    cross-entropy's curvature applied to logit directions."""
    pz = p * z
    return pz - p * pz.sum(1, keepdim=True)


class HeadObjective:
    """The victim's training objective on standardised N×D ``x`` (labels ``y``) as a function
    of the head Θ = [W | b] (K×(D+1)): mean cross-entropy + λ‖W‖², with its gradient and
    Hessian-vector products in closed form (no second-order autograd)."""

    def __init__(self, victim: LinearVictim, x: torch.Tensor, y: torch.Tensor) -> None:
        self.victim, self.xt, self.y = victim, with_ones(x), y
        self.onehot = F.one_hot(y, victim.num_classes).to(x.dtype)

    def value(self, theta: torch.Tensor) -> float:
        ce = F.cross_entropy(self.xt @ theta.T, self.y)
        return (ce + self.victim.l2 * theta[:, :-1].pow(2).sum()).item()

    def gradient(self, theta: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(self.xt @ theta.T, 1)
        g = (p - self.onehot).T @ self.xt / self.xt.shape[0]
        return g + F.pad(2 * self.victim.l2 * theta[:, :-1], (0, 1))

    def hvp(
        self, theta: torch.Tensor, damping: float = 0.0
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """v ↦ H·v (flat K(D+1) vectors) at ``theta``, plus ``damping``·v."""
        p = torch.softmax(self.xt @ theta.T, 1)
        shape, m = theta.shape, self.xt.shape[0]

        def product(v: torch.Tensor) -> torch.Tensor:
            v = v.view(shape)
            hv = curvature(p, self.xt @ v.T).T @ self.xt / m
            return (hv + F.pad(2 * self.victim.l2 * v[:, :-1], (0, 1)) + damping * v).flatten()

        return product


def theta_of(head: nn.Linear) -> torch.Tensor:
    """A head's parameters as Θ = [W | b], K×(D+1)."""
    return torch.cat([head.weight.detach(), head.bias.detach()[:, None]], 1)


def newton_refit(
    victim: LinearVictim, head: nn.Linear, x: torch.Tensor, y: torch.Tensor,
    cg_iterations: int = 32,
) -> nn.Linear:  # fmt: skip
    """``head`` moved by one Newton step (Hessian by conjugate gradient) on the victim's
    objective over standardised ``x``, ``y``; kept only if it lowers the objective (else an
    L-BFGS re-fit from ``head``). From a head that was optimal for a nearby set (the
    follower one leader step later) one step lands next to the new optimum."""
    objective = HeadObjective(victim, x, y)
    theta = theta_of(head)
    g = objective.gradient(theta)
    tolerance = (1e-10 * g.norm()).pow(2).item()
    step = conjugate_gradient(objective.hvp(theta, 1e-8), g.flatten(), cg_iterations, tolerance)
    moved = theta - step.view_as(theta)
    if objective.value(moved) <= objective.value(theta):
        return _linear(moved[:, :-1], moved[:, -1])
    return victim.fit(x, y, init=head)


def implicit_surrogate(
    victim: LinearVictim, head: nn.Linear, x_clean: torch.Tensor, y_clean: torch.Tensor,
    x_poison: torch.Tensor, y_poison: torch.Tensor, outer: HeadLoss, cg_iterations: int = 16,
    damping: float = 1e-6,
) -> torch.Tensor:  # fmt: skip
    """A scalar whose gradient with respect to the (standardised) poisons ``x_poison`` is the
    total derivative of ``outer`` at the head retrained on clean ∪ poisons — ``head``, which
    must be that minimiser (the follower, at convergence).

    By the implicit function theorem, d outer/dφ = −vᵀ·∂²L/∂θ∂φ with v = H⁻¹·∇θ outer, H the
    Hessian of the victim's training objective L at ``head`` (damped by ``damping``); v is
    found by :func:`conjugate_gradient` on Hessian-vector products, and −v·∇θ L_poisons(θ; φ)
    (v and θ fixed) has that gradient — here −(1/M)·Σ_poisons (softmax(Θx̃) − e_y)ᵀ·V x̃.
    Shapes: x_clean N×D, x_poison P×D."""
    theta = theta_of(head)
    x_all = torch.cat([x_clean, x_poison.detach()])
    objective = HeadObjective(victim, x_all, torch.cat([y_clean, y_poison]))
    w = theta[:, :-1].clone().requires_grad_(True)
    b = theta[:, -1].clone().requires_grad_(True)
    gw, gb = torch.autograd.grad(outer(w, b), (w, b))
    outer_grad = torch.cat([gw, gb[:, None]], 1).flatten()
    tolerance = (1e-10 * outer_grad.norm()).pow(2).item()
    v = conjugate_gradient(objective.hvp(theta, damping), outer_grad, cg_iterations, tolerance)
    v = v.view_as(theta)
    pt = with_ones(x_poison)
    residual = torch.softmax(pt @ theta.T, 1) - F.one_hot(y_poison, victim.num_classes).to(
        x_poison.dtype
    )
    return -(residual * (pt @ v.T)).sum() / x_all.shape[0]


def confused_labels(head: nn.Linear, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """For each row of standardised ``x``, the class ``head`` rates highest after its own
    label (the class it confuses the point with most)."""
    with torch.no_grad():
        logits = head(x).clone()
        logits[torch.arange(x.shape[0], device=x.device), labels] = -math.inf
        return logits.argmax(1)


__all__ = [
    "CleanSums",
    "HeadLoss",
    "HeadObjective",
    "LinearVictim",
    "clean_sums",
    "confused_labels",
    "conjugate_gradient",
    "curvature",
    "gc_objective",
    "gradpc",
    "implicit_surrogate",
    "newton_refit",
    "raw_head",
    "refit_bias",
    "theta_of",
    "with_ones",
]
