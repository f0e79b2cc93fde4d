"""The downstream-data defenses (sphere, slab, k-NN label sanitization) on hand-made feature
sets: what they drop or relabel, with and without a clean reference to calibrate on."""

from __future__ import annotations

import pytest
import torch

from sslpoison.defenses import DEFENSES, DownstreamDataDefense
from sslpoison.hooks import Hook


def blobs(n_per=60, d=5, seed=0):
    """Three Gaussian blobs (unit variance) at ±4 along the first two axes."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor(
        [[4.0] + [0.0] * (d - 1), [0.0, 4.0] + [0.0] * (d - 2), [-4.0] + [0.0] * (d - 1)]
    )
    labels = torch.arange(3).repeat_interleave(n_per)
    return centres[labels] + torch.randn(len(labels), d, generator=g), labels


def planted(name: str, count: int = 8, seed: int = 1):
    """``count`` points an attacker could add: far out along class 0's direction (label 0),
    or, for k-NN, class-1 labels inside class 0's blob. (The defenses standardise the
    features first, which shrinks the long first axis: the outliers sit far out on it.)"""
    g = torch.Generator().manual_seed(seed)
    if name == "knn":
        return torch.tensor([4.0, 0, 0, 0, 0]) + 0.5 * torch.randn(count, 5, generator=g), 1
    return torch.tensor([30.0, 0, 0, 0, 0]) + 0.3 * torch.randn(count, 5, generator=g), 0


def test_they_are_registered_downstream_data_defenses():
    for name in ("sphere", "slab", "knn"):
        assert issubclass(DEFENSES[name], DownstreamDataDefense)
        assert DEFENSES[name].hook is Hook.DOWNSTREAM_DATA
    assert DEFENSES["knn"]().mode == "relabel"  # Paudice et al.'s, by default
    assert DEFENSES["knn"]().relabels() and not DEFENSES["knn"](mode="drop").relabels()


@pytest.mark.parametrize("name", ["sphere", "slab", "knn"])
def test_each_drops_a_planted_cluster_of_outliers(name):
    features, labels = blobs()
    x_p, y_p = planted(name)
    x = torch.cat([features, x_p])
    y = torch.cat([labels, torch.full((8,), y_p)])
    kwargs = {"mode": "drop"} if name == "knn" else {"remove": 0.15}
    done = DEFENSES[name](**kwargs).sanitize(x, y)
    assert not done.kept[-8:].any()  # every planted point removed
    assert done.kept[:-8].float().mean() > 0.85  # most of the clean ones kept
    assert torch.equal(done.labels, y)  # dropping relabels nothing


def test_knn_relabels_to_the_neighbours_majority():
    features, labels = blobs()
    x_p, y_p = planted("knn")
    x = torch.cat([features, x_p])
    y = torch.cat([labels, torch.full((8,), y_p)])
    done = DEFENSES["knn"]().sanitize(x, y)
    assert done.kept.all()  # nothing dropped
    assert (done.labels[-8:] == 0).all()  # the flipped points get class 0's label back
    assert (done.labels[:-8] == labels).float().mean() > 0.97  # the clean ones keep theirs


def test_knn_relabels_only_where_enough_neighbours_agree():
    # Two groups of four points on a line, k = 3 (neighbours by distance, itself excluded).
    x = torch.tensor([0.0, 1, 2, 3, 10, 11, 12, 13])[:, None]
    # One wrong label per group (points 2 and 6): all three neighbours of each hold the
    # other label, every other point's majority is its own.
    one = torch.tensor([0, 0, 1, 0, 1, 1, 0, 1])
    for agree in (0.5, 1.0):
        done = DEFENSES["knn"](k=3, agree=agree).sanitize(x, one)
        assert done.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and done.kept.all()
    dropped = DEFENSES["knn"](k=3, agree=0.5, mode="drop").sanitize(x, one)
    assert dropped.kept.tolist() == [True, True, False, True, True, True, False, True]
    # Points 0–3 labelled 0 1 1 0: each one's neighbours hold the other label 2 to 1, so each
    # flips with agree 0.5 and none with 0.7; point 6's neighbours are unanimous.
    two = torch.tensor([0, 1, 1, 0, 1, 1, 0, 1])
    assert DEFENSES["knn"](k=3, agree=0.5).sanitize(x, two).labels.tolist() == [
        1, 0, 0, 1, 1, 1, 1, 1,
    ]  # fmt: skip
    assert DEFENSES["knn"](k=3, agree=0.7).sanitize(x, two).labels.tolist() == [
        0, 1, 1, 0, 1, 1, 1, 1,
    ]  # fmt: skip


@pytest.mark.parametrize("name", ["sphere", "slab"])
def test_a_clean_reference_sets_the_threshold_so_any_number_of_poisons_goes(name):
    """Without a reference the defender drops ``remove`` of each class, so 30 planted points
    in a class of 60 overflow it; calibrated on clean held-out points, every point beyond the
    clean points' 1 − remove quantile goes, however many there are."""
    features, labels = blobs()
    x_p, y_p = planted(name, count=30)
    x = torch.cat([features, x_p])
    y = torch.cat([labels, torch.full((30,), y_p)])
    cfg = DEFENSES[name](remove=0.05)
    alone = cfg.sanitize(x, y)
    assert alone.kept[-30:].sum() > 0  # 5 % of 90 class-0 points: 4-5 removed, not 30
    reference = blobs(seed=7)
    calibrated = cfg.sanitize(x, y, reference)
    assert not calibrated.kept[-30:].any()
    clean_removed = 1 - calibrated.kept[:-30].float().mean()
    assert clean_removed < 0.2  # about remove (5 %) of the clean points, up to sampling
    assert DEFENSES[name](reference=100).reference_count() == 100


def test_sphere_with_a_reference_matches_a_hand_computation():
    # 1-D, one class. Training set: 0, 1, 2, 10; reference: 0 … 9 of the same class (both
    # standardised with the reference's std s). Centroid of the reference: 4.5; scores
    # |x − 4.5| / s. remove 0.2: threshold = the 0.8-quantile of the reference scores
    # |0..9 − 4.5|, sorted .5 .5 1.5 1.5 2.5 2.5 3.5 3.5 4.5 4.5 → 3.7 / s (linear
    # interpolation), so training points 0 (4.5 / s) and 10 (5.5 / s) go, 1 (3.5 / s) and
    # 2 (2.5 / s) stay.
    x = torch.tensor([0.0, 1.0, 2.0, 10.0])[:, None]
    y = torch.zeros(4, dtype=torch.long)
    ref = (torch.arange(10.0)[:, None], torch.zeros(10, dtype=torch.long))
    kept = DEFENSES["sphere"](remove=0.2).sanitize(x, y, ref).kept
    assert kept.tolist() == [False, True, True, False]
