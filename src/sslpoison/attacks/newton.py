"""Gradient canceling measured as a distance: the Newton step ‖H⁻¹g‖ between the target head
θ* and the head the victim trains on clean ∪ poisons.

Lu, Kamath and Yu (ICML 2023) cancel the gradient g of the victim's training objective at θ*
(‖g‖² → 0, :func:`~sslpoison.attacks.linear_victim.gc_objective`). Under a weak L2 penalty λ
the objective is nearly flat along some directions of the head, where a small residual
gradient still leaves the trained head far from θ*. One Newton step from θ* predicts the
trained head at θ* − H⁻¹g (H the Hessian of the objective at θ*), so the squared distance
gᵀH⁻²g weighs each direction by 1/curvature² — the flat ones count.

Everything is in the attacker's coordinates: features standardised with the clean set's
statistics (:class:`~sslpoison.attacks.linear_victim.LinearVictim`), the head Θ = [W | b]
(K×(D+1)) acting on x̃ = [x, 1]. The victim standardises with the statistics of clean ∪
poisons instead (std σ′ = s·σ per dimension); its objective in our coordinates is
mean cross-entropy + λ Σ W²·s² (the same functions of the features, the same minimiser).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslpoison.attacks.linear_victim import (
    LinearVictim,
    conjugate_gradient,
    curvature,
    with_ones,
)

#: Above this many head parameters the clean Hessian is not held as a dense matrix.
DENSE_LIMIT = 8192


def curvature_sum(p: torch.Tensor, xt: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Σ over points of (diag(p) − p pᵀ) ⊗ x̃ x̃ᵀ for N×K probabilities ``p`` and N×E inputs
    ``xt``: the cross-entropy Hessian (summed, not averaged) of a linear head Θ (K×E), as a
    KE-square matrix in the layout of Θ flattened row by row."""
    k, e = p.shape[1], xt.shape[1]
    h = torch.zeros(k * e, k * e, dtype=xt.dtype, device=xt.device)
    for rows in torch.arange(xt.shape[0], device=xt.device).split(chunk):
        pr, xr = p[rows], xt[rows]
        z = (pr[:, :, None] * xr[:, None, :]).reshape(len(rows), k * e)  # p ⊗ x̃ per point
        h -= z.T @ z
        for c in range(k):  # the diagonal blocks: Σ p_c x̃ x̃ᵀ
            block = slice(c * e, (c + 1) * e)
            h[block, block] += (xr * pr[:, c : c + 1]).T @ xr
    return h


class NewtonDistance:
    """The squared relative Newton distance ‖H⁻¹g‖² / ‖θ*‖² of the victim's objective on
    clean (standardised N×D ``x``, ``labels``) ∪ P poisons at the ``target`` head, with its
    gradient with respect to the (standardised) poisons.

    H⁻¹g and H⁻²g are found by conjugate gradient on Hessian-vector products (at most
    ``cg_iterations``, to a relative residual of ``tolerance``), warm-started from the last
    call and preconditioned by the Cholesky factor of the Hessian at the first poisons seen.
    The clean part of H is built once as a dense matrix (K(D+1) squared, float64) when that
    is at most :data:`DENSE_LIMIT` wide, else applied from the features at every product.
    """

    def __init__(
        self, victim: LinearVictim, target: nn.Linear, x: torch.Tensor, labels: torch.Tensor,
        cg_iterations: int = 100, tolerance: float = 1e-8, damping: float = 1e-9,
    ) -> None:  # fmt: skip
        self.victim, self.x, self.labels = victim, x, labels
        self.cg_iterations, self.tolerance, self.damping = cg_iterations, tolerance, damping
        self.theta = torch.cat([target.weight.detach(), target.bias.detach()[:, None]], 1)
        self.k, self.d = target.weight.shape
        self.xt = with_ones(x)
        self.p_clean = torch.softmax(self.xt @ self.theta.T, 1)
        residual = self.p_clean - F.one_hot(labels, self.k).to(x.dtype)
        self.grad_clean = residual.T @ self.xt  # Σ over the clean points, K×(D+1)
        self.sum_x, self.sum_x2 = x.sum(0), x.pow(2).sum(0)
        size = self.k * (self.d + 1)
        self.h_clean = curvature_sum(self.p_clean, self.xt) if size <= DENSE_LIMIT else None
        self._factor: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._u: torch.Tensor | None = None

    # ---- pieces of the objective ------------------------------------------------------
    def scale2(self, poisons: torch.Tensor) -> torch.Tensor:
        """s² (D): the victim's variance of clean ∪ poisons per dimension, over the clean
        set's (which is 1 in these coordinates, up to the clean set's own std)."""
        n, m = self.x.shape[0], self.x.shape[0] + poisons.shape[0]
        clean_var = (self.sum_x2 - self.sum_x.pow(2) / n) / (n - 1)
        total, total2 = self.sum_x + poisons.sum(0), self.sum_x2 + poisons.pow(2).sum(0)
        return ((total2 - total.pow(2) / m) / (m - 1)) / clean_var.clamp_min(1e-12)

    def gradient(self, poisons: torch.Tensor, poison_labels: torch.Tensor) -> torch.Tensor:
        """g: the gradient of the victim's objective at θ* (K×(D+1)), differentiable with
        respect to the standardised P×D ``poisons``."""
        m = self.x.shape[0] + poisons.shape[0]
        pt = with_ones(poisons)
        residual = torch.softmax(pt @ self.theta.T, 1) - F.one_hot(poison_labels, self.k).to(
            poisons.dtype
        )
        g = (self.grad_clean + residual.T @ pt) / m
        penalty = 2 * self.victim.l2 * self.theta[:, :-1] * self.scale2(poisons)
        return g + F.pad(penalty, (0, 1))

    def hvp(self, v: torch.Tensor, poisons: torch.Tensor) -> torch.Tensor:
        """H·v for a K×(D+1) ``v`` (differentiable with respect to ``poisons``)."""
        m = self.x.shape[0] + poisons.shape[0]
        pt = with_ones(poisons)
        p = torch.softmax(pt @ self.theta.T, 1)
        hv = curvature(p, pt @ v.T).T @ pt
        if self.h_clean is not None:
            hv = hv + (self.h_clean @ v.flatten()).view_as(v)
        else:
            hv = hv + curvature(self.p_clean, self.xt @ v.T).T @ self.xt
        penalty = 2 * self.victim.l2 * v[:, :-1] * self.scale2(poisons)
        return hv / m + F.pad(penalty, (0, 1)) + self.damping * v

    # ---- solving and the objective ----------------------------------------------------
    def _precondition(self, poisons: torch.Tensor) -> torch.Tensor | None:
        """The Cholesky factor of H at ``poisons`` (dense clean part only), else None."""
        if self.h_clean is None:
            return None
        m = self.x.shape[0] + poisons.shape[0]
        pt = with_ones(poisons)
        h = (self.h_clean + curvature_sum(torch.softmax(pt @ self.theta.T, 1), pt)) / m
        pen = 2 * self.victim.l2 * F.pad(self.scale2(poisons), (0, 1))
        h = h + torch.diag(pen.repeat(self.k) + self.damping)
        return torch.linalg.cholesky(h)

    def solve(
        self, poisons: torch.Tensor, poison_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(g, v = H⁻¹g, u = H⁻¹v) at the (detached) ``poisons``, K×(D+1) each."""
        poisons = poisons.detach()
        with torch.no_grad():
            if self._factor is None:
                self._factor = self._precondition(poisons)
            g = self.gradient(poisons, poison_labels)
            shape = g.shape

            def hvp(flat: torch.Tensor) -> torch.Tensor:
                return self.hvp(flat.view(shape), poisons).flatten()

            factor = self._factor
            pre = None
            if factor is not None:

                def pre(r: torch.Tensor) -> torch.Tensor:
                    return torch.cholesky_solve(r[:, None], factor)[:, 0]

            def cg(b: torch.Tensor, x0: torch.Tensor | None) -> torch.Tensor:
                tol = (self.tolerance * b.norm()).pow(2).item()
                return conjugate_gradient(hvp, b, self.cg_iterations, tol, x0, pre)

            v = cg(g.flatten(), self._v)
            u = cg(v, self._u)
        self._v, self._u = v, u
        return g, v.view(shape), u.view(shape)

    def distance(self, poisons: torch.Tensor, poison_labels: torch.Tensor) -> float:
        """‖H⁻¹g‖ / ‖θ*‖ at ``poisons``: the predicted distance of the trained head from θ*."""
        _, v, _ = self.solve(poisons, poison_labels)
        return (v.norm() / self.theta.norm()).item()

    def __call__(self, poisons: torch.Tensor, poison_labels: torch.Tensor) -> torch.Tensor:
        """‖H⁻¹g‖² / ‖θ*‖² as a scalar whose gradient with respect to ``poisons`` is its
        derivative: d(vᵀv) = 2uᵀ(dg − dH·v), with v = H⁻¹g and u = H⁻¹v held fixed."""
        _, v, u = self.solve(poisons, poison_labels)
        norm2 = self.theta.pow(2).sum()
        value = v.pow(2).sum() / norm2
        surrogate = 2 * (u * (self.gradient(poisons, poison_labels) - self.hvp(v, poisons))).sum()
        surrogate = surrogate / norm2
        return value + surrogate - surrogate.detach()


__all__ = ["DENSE_LIMIT", "NewtonDistance", "curvature_sum"]
