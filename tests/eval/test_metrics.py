"""Metrics on hand-made predictions, with the expected numbers worked out in comments."""

from __future__ import annotations

import pytest
import torch

from sslpoison.eval.metrics import (
    accuracy,
    accuracy_drop,
    attack_success_rate,
    confusion_matrix,
    false_positives,
    poison_rates,
)


def t(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


# ----------------------------------------------------------------------------- accuracy


def test_accuracy_hand_made() -> None:
    # pred   [0, 1, 2, 2, 1]
    # labels [0, 1, 1, 2, 0] -> correct at 0, 1, 3 -> 3/5
    assert accuracy(t([0, 1, 2, 2, 1]), t([0, 1, 1, 2, 0])) == pytest.approx(0.6)


def test_accuracy_all_right_and_all_wrong() -> None:
    labels = t([3, 1, 4, 1])
    assert accuracy(labels.clone(), labels) == 1.0
    assert accuracy((labels + 1) % 5, labels) == 0.0


def test_accuracy_returns_python_float() -> None:
    assert isinstance(accuracy(t([1]), t([1])), float)


def test_accuracy_accepts_int32() -> None:
    pred = torch.tensor([0, 1, 1], dtype=torch.int32)
    # correct at 0, 1 -> 2/3
    assert accuracy(pred, t([0, 1, 0])) == pytest.approx(2 / 3)


def test_accuracy_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        accuracy(t([0, 1, 2]), t([0, 1]))


def test_accuracy_empty() -> None:
    with pytest.raises(ValueError, match="empty"):
        accuracy(t([]), t([]))


def test_accuracy_rejects_float_and_2d() -> None:
    with pytest.raises(TypeError, match="integer"):
        accuracy(torch.tensor([0.0, 1.0]), t([0, 1]))
    with pytest.raises(ValueError, match="1-D"):
        accuracy(t([[0, 1]]), t([0, 1]))


# ------------------------------------------------------------------- ASR and false positives


def test_asr_and_fp_hand_made() -> None:
    # labels [0, 1, 2, 3, 1], target 1, triggered predictions [1, 1, 0, 1, 2]
    # non-target inputs (true label != 1): indices 0, 2, 3
    # predicted as target among them: index 0 (pred 1) and index 3 (pred 1); index 2 -> 0
    # -> ASR 2/3, FP 2 (index 1 is a target-class input predicted as 1: not counted)
    labels = t([0, 1, 2, 3, 1])
    pred = t([1, 1, 0, 1, 2])
    assert attack_success_rate(pred, labels, 1) == pytest.approx(2 / 3)
    assert false_positives(pred, labels, 1) == 2


def test_asr_b_base_rate_same_function() -> None:
    # clean encoder on the same triggered inputs: labels [0, 1, 2, 3, 1], target 1,
    # predictions [0, 1, 2, 1, 1] -> non-target 0, 2, 3 -> only index 3 hits -> 1/3, FP 1
    labels = t([0, 1, 2, 3, 1])
    pred = t([0, 1, 2, 1, 1])
    assert attack_success_rate(pred, labels, 1) == pytest.approx(1 / 3)
    assert false_positives(pred, labels, 1) == 1


def test_asr_zero_and_one() -> None:
    labels = t([0, 2, 2, 1])
    # target 0: non-target 1, 2, 3; all predicted 0 -> ASR 1, FP 3
    assert attack_success_rate(t([0, 0, 0, 0]), labels, 0) == 1.0
    assert false_positives(t([0, 0, 0, 0]), labels, 0) == 3
    # predictions equal to labels -> no non-target input predicted 0 -> ASR 0, FP 0
    assert attack_success_rate(labels.clone(), labels, 0) == 0.0
    assert false_positives(labels.clone(), labels, 0) == 0


def test_fp_returns_python_int() -> None:
    assert type(false_positives(t([1, 1]), t([0, 1]), 1)) is int


def test_asr_all_inputs_of_target_class() -> None:
    with pytest.raises(ValueError, match="target class 2"):
        attack_success_rate(t([2, 0, 2]), t([2, 2, 2]), 2)
    with pytest.raises(ValueError, match="undefined"):
        false_positives(t([2, 0, 2]), t([2, 2, 2]), 2)


def test_asr_target_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        attack_success_rate(t([0, 1]), t([0, 1]), -1)
    with pytest.raises(ValueError, match=r"out of range: must be \[0, 3\)"):
        attack_success_rate(t([0, 1]), t([0, 1]), 3, num_classes=3)
    with pytest.raises(ValueError, match="out of range"):
        false_positives(t([0, 1]), t([0, 1]), 5, num_classes=3)


def test_asr_target_must_be_int() -> None:
    with pytest.raises(TypeError, match="target"):
        attack_success_rate(t([0, 1]), t([0, 1]), 1.0)  # type: ignore[arg-type]


def test_asr_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        attack_success_rate(t([0, 1, 1]), t([0, 1]), 1)
    with pytest.raises(ValueError, match="differ in length"):
        false_positives(t([0]), t([0, 1]), 1)


# --------------------------------------------------------------------- confusion matrix


def test_confusion_matrix_hand_made() -> None:
    # (true, pred) pairs: (0,0) (0,1) (1,1) (2,1) (2,2) (2,2) (1,0)
    labels = t([0, 0, 1, 2, 2, 2, 1])
    pred = t([0, 1, 1, 1, 2, 2, 0])
    expected = torch.tensor(
        [
            [1, 1, 0],  # true 0: one right, one predicted 1
            [1, 1, 0],  # true 1: one predicted 0, one right
            [0, 1, 2],  # true 2: one predicted 1, two right
        ],
        dtype=torch.long,
    )
    cm = confusion_matrix(pred, labels, 3)
    assert cm.dtype == torch.long
    assert torch.equal(cm, expected)
    # rows sum to the class counts, trace = number correct
    assert cm.sum(dim=1).tolist() == [2, 2, 3]
    assert int(cm.trace()) == 4


def test_confusion_matrix_unseen_classes_are_zero_rows() -> None:
    # 4 classes, only classes 0 and 3 appear: (0,3) (3,3)
    cm = confusion_matrix(t([3, 3]), t([0, 3]), 4)
    expected = torch.zeros(4, 4, dtype=torch.long)
    expected[0, 3] = 1
    expected[3, 3] = 1
    assert torch.equal(cm, expected)


def test_confusion_matrix_matches_loop() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (200,), generator=g)
    pred = torch.randint(0, 5, (200,), generator=g)
    ref = torch.zeros(5, 5, dtype=torch.long)
    for y, p in zip(labels.tolist(), pred.tolist(), strict=True):
        ref[y, p] += 1
    assert torch.equal(confusion_matrix(pred, labels, 5), ref)


def test_confusion_matrix_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"pred holds class indices in \[0, 3\]"):
        confusion_matrix(t([0, 3]), t([0, 1]), 3)
    with pytest.raises(ValueError, match="labels holds class indices"):
        confusion_matrix(t([0, 1]), t([-1, 1]), 3)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(t([0]), t([0]), 0)
    with pytest.raises(ValueError, match="differ in length"):
        confusion_matrix(t([0]), t([0, 1]), 2)


# ----------------------------------------------------------- accuracy drop, poison rates


def test_accuracy_drop() -> None:
    # 0.92 clean - 0.71 poisoned = 0.21
    assert accuracy_drop(0.92, 0.71) == pytest.approx(0.21)
    assert accuracy_drop(0.5, 0.6) == pytest.approx(-0.1)


def test_poison_rates_both_ways() -> None:
    # SSL-Backdoor-like: 650 of a 1300-image target class, 130 000 images in all
    # -> 650 / 130 000 = 0.005, 650 / 1300 = 0.5
    rates = poison_rates(650, 130_000, 1300)
    assert rates == pytest.approx({"rate_of_set": 0.005, "rate_of_target_class": 0.5})


def test_poison_rates_without_target() -> None:
    # 500 / 50 000 = 0.01, no target class key
    assert poison_rates(500, 50_000) == {"rate_of_set": 0.01}


def test_poison_rates_errors() -> None:
    with pytest.raises(ValueError, match="num_total"):
        poison_rates(1, 0)
    with pytest.raises(ValueError, match="num_poisoned"):
        poison_rates(-1, 10)
    with pytest.raises(ValueError, match="exceeds"):
        poison_rates(11, 10)
    with pytest.raises(ValueError, match="num_target_class"):
        poison_rates(1, 10, 0)
