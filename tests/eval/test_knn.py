"""Weighted cosine k-NN against a plain loop reference and an obvious 2-D case."""

from __future__ import annotations

import math

import pytest
import torch

from sslpoison.eval.knn import knn_predict


def knn_reference(
    train: torch.Tensor,
    labels: torch.Tensor,
    test: torch.Tensor,
    num_classes: int,
    k: int,
    temperature: float,
) -> list[int]:
    """Loop over test points: cosine similarity to every train point, sort, weigh, sum."""
    train_rows = train.double().tolist()
    train_labels = labels.tolist()

    def unit(v: list[float]) -> list[float]:
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    train_rows = [unit(r) for r in train_rows]
    out = []
    for q in test.double().tolist():
        q = unit(q)
        sims = [
            (sum(a * b for a, b in zip(q, r, strict=True)), i) for i, r in enumerate(train_rows)
        ]
        sims.sort(key=lambda s: -s[0])
        scores = [0.0] * num_classes
        for sim, i in sims[: min(k, len(sims))]:
            scores[train_labels[i]] += math.exp(sim / temperature)
        out.append(max(range(num_classes), key=lambda c: (scores[c], -c)))
    return out


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.1), (5, 0.1), (10, 0.5), (100, 0.07)])
def test_knn_matches_loop_reference(k: int, temperature: float) -> None:
    g = torch.Generator().manual_seed(k)
    train = torch.randn(40, 8, generator=g)
    labels = torch.randint(0, 4, (40,), generator=g)
    test = torch.randn(15, 8, generator=g)
    # k = 100 > 40 train points: clipped to all of them
    got = knn_predict(train, labels, test, num_classes=4, k=k, temperature=temperature)
    assert got.dtype == torch.long
    assert got.shape == (15,)
    assert got.tolist() == knn_reference(train, labels, test, 4, k, temperature)


def test_knn_obvious_2d_case() -> None:
    # class 0 points along +x, class 1 along +y, class 2 along -x (norms differ: cosine ignores
    # them); queries sit near one direction each.
    train = torch.tensor(
        [
            [1.0, 0.05],
            [3.0, -0.1],
            [2.0, 0.0],
            [0.0, 1.0],
            [0.1, 5.0],
            [-0.05, 2.0],
            [-1.0, 0.0],
            [-4.0, 0.2],
            [-2.0, -0.1],
        ]
    )
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    test = torch.tensor([[10.0, 0.5], [0.2, 3.0], [-0.7, 0.01], [0.001, 0.9]])
    pred = knn_predict(train, labels, test, num_classes=3, k=3)
    assert pred.tolist() == [0, 1, 2, 1]


def test_knn_weighting_beats_majority() -> None:
    # k = 3: one very close class-1 neighbour (sim 1) against two far class-0 ones (sim 0).
    # weights at T = 0.1: class 1 -> e^10, class 0 -> 2 * e^0 = 2 -> class 1 wins
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    labels = torch.tensor([1, 0, 0])
    test = torch.tensor([[1.0, 0.0]])
    assert knn_predict(train, labels, test, 2, k=3, temperature=0.1).tolist() == [1]
    # a very soft vote (T = 100) weighs all three about equally -> majority class 0
    assert knn_predict(train, labels, test, 2, k=3, temperature=100.0).tolist() == [0]


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_knn_chunking_is_identical(chunk: int) -> None:
    g = torch.Generator().manual_seed(1)
    train = torch.randn(120, 16, generator=g)
    labels = torch.randint(0, 5, (120,), generator=g)
    test = torch.randn(50, 16, generator=g)
    whole = knn_predict(train, labels, test, 5, k=20, chunk=1024)
    assert torch.equal(knn_predict(train, labels, test, 5, k=20, chunk=chunk), whole)


def test_knn_small_temperature_does_not_overflow() -> None:
    g = torch.Generator().manual_seed(2)
    train = torch.randn(30, 4, generator=g)
    labels = torch.randint(0, 3, (30,), generator=g)
    test = torch.randn(10, 4, generator=g)
    got = knn_predict(train, labels, test, 3, k=30, temperature=1e-3)
    # with a tiny temperature the nearest neighbour dominates: 1-NN
    assert torch.equal(got, knn_predict(train, labels, test, 3, k=1))


def test_knn_empty_test_set() -> None:
    out = knn_predict(torch.randn(5, 3), torch.zeros(5, dtype=torch.long), torch.empty(0, 3), 2)
    assert out.shape == (0,)
    assert out.dtype == torch.long


def test_knn_errors() -> None:
    train = torch.randn(6, 3)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    test = torch.randn(2, 3)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        knn_predict(train, labels, torch.randn(2, 4), 2)
    with pytest.raises(ValueError, match="2-D"):
        knn_predict(train[0], labels, test, 2)
    with pytest.raises(ValueError, match="train_labels must have shape"):
        knn_predict(train, labels[:5], test, 2)
    with pytest.raises(ValueError, match="outside"):
        knn_predict(train, labels, test, 1)
    with pytest.raises(ValueError, match="empty"):
        knn_predict(torch.empty(0, 3), torch.empty(0, dtype=torch.long), test, 2)
    with pytest.raises(ValueError, match="k must"):
        knn_predict(train, labels, test, 2, k=0)
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(train, labels, test, 2, temperature=0.0)
    with pytest.raises(ValueError, match="chunk"):
        knn_predict(train, labels, test, 2, chunk=0)
