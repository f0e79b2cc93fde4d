"""Probes: the L-BFGS logistic regression against scikit-learn, λ selection, the MLP probe."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from sslpoison.eval.probes import ProbeConfig, fit_logistic, train_probe


def _blobs(n: int = 300, d: int = 5, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(classes, d, generator=g)
    y = torch.arange(n) % classes
    x = centres[y] + torch.randn(n, d, generator=g)
    return x, y


def test_logistic_regression_matches_scikit_learn():
    x, y = _blobs()
    n, c = x.shape[0], 1.0
    # sklearn minimises C·ΣCE + ½‖W‖²; ours mean CE + λ‖W‖², so λ = 1 / (2·C·n).
    head = fit_logistic(x.double(), y, 3, l2=1.0 / (2 * c * n), max_iter=500)
    ref = LogisticRegression(C=c, max_iter=5000, tol=1e-10).fit(x.numpy(), y.numpy())
    with torch.no_grad():
        ours = torch.softmax(head(x.double()), 1).numpy()
    np.testing.assert_allclose(ours, ref.predict_proba(x.numpy()), atol=2e-4)


def test_linear_probe_chooses_its_penalty_on_held_out_data():
    g = torch.Generator().manual_seed(0)
    y = torch.cat([torch.zeros(630), torch.ones(135), torch.full((135,), 2)]).long()
    x = 2.0 * torch.eye(3)[y].repeat(1, 4) + torch.randn(900, 12, generator=g)
    perm = torch.randperm(900, generator=g)
    x, y = x[perm], y[perm]
    x, y, xt, yt = x[:600], y[:600], x[600:], y[600:]
    acc = lambda p: (p.predict(xt) == yt).float().mean().item()  # noqa: E731
    # λ = 10 shrinks W to ~0: the unpenalised bias then predicts the majority class (~0.7).
    strong = train_probe(x, y, 3, "linear", ProbeConfig(l2_grid=[10.0]))
    chosen = train_probe(x, y, 3, "linear", ProbeConfig(l2_grid=[10.0, 1e-4]))
    assert acc(strong) < 0.75
    assert acc(chosen) > 0.9


def test_mlp_probe_learns_a_non_linear_rule():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(800, 2, generator=g) * 2 - 1
    y = ((x[:, 0] * x[:, 1]) > 0).long()  # XOR of signs: no linear probe can do this
    cfg = ProbeConfig(epochs=60, lr=1e-2, hidden=64)
    mlp = train_probe(x[:600], y[:600], 2, "mlp", cfg)
    linear = train_probe(x[:600], y[:600], 2, "linear", cfg)
    acc = lambda p: (p.predict(x[600:]) == y[600:]).float().mean().item()  # noqa: E731
    assert acc(mlp) > 0.9 and acc(linear) < 0.7


def test_l2_normalisation_matches_a_plain_computation():
    x, y = _blobs()
    x = x + 3.0  # away from the origin, where the norm would be ill-defined
    cfg = ProbeConfig(normalize="l2", l2_grid=[1e-3])
    probe = train_probe(x, y, 3, "linear", cfg)
    z = x / x.norm(dim=1, keepdim=True)  # each vector to unit length ...
    mean, std = z.mean(0), (z.var(0) + 1e-5).sqrt()  # ... then standardised (CompRess's)
    torch.testing.assert_close(probe.mean, mean)
    torch.testing.assert_close(probe.std, std)
    head = fit_logistic((z - mean) / std, y, 3, 1e-3, cfg.max_iter)
    with torch.no_grad():
        torch.testing.assert_close(probe(x), head((z - mean) / std), atol=1e-4, rtol=1e-4)
    scale = torch.rand(len(x), 1, generator=torch.Generator().manual_seed(1)) * 10 + 0.1
    assert torch.equal(probe.predict(x * scale), probe.predict(x))  # blind to each norm
    plain = train_probe(x, y, 3, "linear", ProbeConfig(l2_grid=[1e-3]))  # the default: none
    torch.testing.assert_close(plain.mean, x.mean(0))
    torch.testing.assert_close(plain.std, x.std(0))
