"""The tables of a run, made from its rows (never from key strings)."""

from __future__ import annotations

import pytest

from sslpoison.eval.backdoor import backdoor_row
from sslpoison.eval.encoder import evaluate_encoder, probe_key
from sslpoison.eval.rows import Row, metrics_of
from sslpoison.eval.zero_shot import ZERO_SHOT, zs_key
from sslpoison.results.report import (
    format_backdoor_table,
    format_detections,
    format_summary,
    format_zero_shot,
    summary_tables,
)


def rows_of(*specs) -> list[Row]:
    """Backdoor rows from (encoder, dataset, metric, value[, target]) with the ``mlp`` probe."""
    return [
        backdoor_row(e, d, "mlp", m, v, target=t) for e, d, m, v, *t in specs for t in (t or [None])
    ]


def test_backdoor_table_has_one_row_per_dataset_and_encoder():
    rows = rows_of(
        ("clean", "b", "acc", 0.5),
        ("attacked", "b", "acc", 0.5),
        ("clean", "a", "acc", 0.9),
        ("attacked", "a", "acc", 0.89),
        ("attacked", "a", "asr", 0.97),
        ("clean", "a", "asr", 0.01),
    )
    assert [r.key for r in rows] == ["b/ca", "b/ba", "a/ca", "a/ba", "a/asr", "a/asr_b"]
    lines = format_backdoor_table(rows, "mlp").splitlines()
    assert lines[0].split() == ["dataset", "encoder", "accuracy", "ASR"]
    assert lines[2].split() == ["a", "clean", "0.9000", "0.0100"]
    assert lines[3].split() == ["a", "attacked", "0.8900", "0.9700"]
    assert lines[5].split() == ["b", "attacked", "0.5000", "-"]
    rows += rows_of(
        ("clean", "a", "fp", 3),
        ("attacked", "a", "fp", 40),
        ("kd", "a", "acc", 0.88),
        ("kd", "a", "asr", 0.02),
        ("kd", "a", "fp", 2),
        ("attacked", "a", "asr", 0.5, "Bag"),  # one target's of several: not a table row
    )
    rows.append(backdoor_row("attacked", "a", "linear", "acc", 0.1, suffix="_linear"))
    stages = {"defense:kd": {"clean_images": 64, "wall_s": 12.3}}
    lines = format_backdoor_table(rows, "mlp", stages).splitlines()
    assert lines[0].split() == ["dataset", "encoder", "accuracy", "ASR", "FP", "clean", "time", "s"]
    assert lines[2].split() == ["a", "clean", "0.9000", "0.0100", "3", "-", "-"]
    assert lines[3].split() == ["a", "attacked", "0.8900", "0.9700", "40", "-", "-"]
    assert lines[4].split() == ["a", "kd", "0.8800", "0.0200", "2", "64", "12"]
    assert [line.split()[:2] for line in lines[5:7]] == [["b", "clean"], ["b", "attacked"]]
    assert lines[6].split()[2:] == ["0.5000", "-", "-", "-", "-"]
    assert len(lines) == 9  # no "kd" row for b: the defense was not measured there (2 footnotes)
    assert "0.1000" in format_backdoor_table(rows, "linear")  # another probe's numbers
    plain = [Row("a", "clean", "linear", "acc", 0.8, probe_key("a", "linear"))]
    assert format_backdoor_table(plain, "linear") is None


def test_zero_shot_table_and_detections():
    rows = [
        Row("d", role, ZERO_SHOT, metric, value, zs_key(role, "d", metric))
        for role, metric, value in [
            ("clean", "zs_acc", 0.8),
            ("attacked", "zs_acc", 0.75),
            ("attacked", "zs_asr", 0.6),
            ("clean", "zs_asr", 0.1),
        ]
    ]
    rows.append(Row("d", "attacked", "linear", "targeted_success", 0.5, "d/targeted_success_probe"))
    lines = format_zero_shot(rows).splitlines()
    assert lines[0].split() == [
        "dataset", "CLIP", "zero-shot", "acc.", "zero-shot", "ASR", "targeted", "success", "(probe)"
    ]  # fmt: skip
    assert lines[2].split() == ["d", "clean", "0.8000", "0.1000", "-"]
    assert lines[3].split() == ["d", "poisoned", "0.7500", "0.6000", "0.5000"]
    # The clean model alone (CLIP pre-training without an attack) makes no table.
    assert format_zero_shot(rows[:1]) is None
    found = {"pl1": 0.05, "norm": 12.8, "flagged": 1}
    rows += [
        Row(None, "attacked", "decree", m, v, f"decree/attacked_{m}") for m, v in found.items()
    ]
    rows.append(Row(None, "clean", "decree", "flagged", 0, "decree/clean_flagged"))
    assert format_detections(rows).splitlines() == [
        "decree: attacked encoder judged BACKDOORED (PL1 norm 0.0500, L1 12.8)",
        "decree: clean encoder judged clean",
    ]
    tables = summary_tables(rows, "linear")
    assert tables[0].startswith("metric")  # no backdoor table: every metric
    assert len(tables) == 3
    assert format_summary("run", tables).startswith("# run\n\n```\nmetric")
    assert format_summary("run", tables).count("```") == 6


def test_metrics_are_the_rows_keys_and_a_key_is_used_once():
    rows = rows_of(("clean", "a", "acc", 0.9), ("attacked", "a", "acc", 0.8))
    assert metrics_of(rows) == {"a/ca": 0.9, "a/ba": 0.8}
    with pytest.raises(ValueError, match="two results under the key 'a/ca'"):
        metrics_of([*rows, rows[0]])


def test_baseline_rows_are_keyed_by_probe_and_baseline(tiny_set):
    """``<dataset>/<probe>_acc`` for the encoder, ``…_<baseline>`` for the baselines."""
    import torch

    from sslpoison.eval.downstream import Downstream, EvalConfig
    from sslpoison.eval.features import FeatureCache
    from sslpoison.models import build_backbone

    cfg = EvalConfig(datasets=["synthetic"], labelled=64, test_subset=64, probes=["knn"])
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", width=0.125, in_channels=1)
    downstream = Downstream(cfg, 16, 1)
    rows = evaluate_encoder(encoder, downstream, cfg, cache=FeatureCache(), random_init=encoder)
    assert [(r.encoder, r.key) for r in rows] == [
        ("clean", "synthetic/knn_acc"),
        ("random_init", "synthetic/knn_acc_random_init"),
        ("pixels", "synthetic/knn_acc_pixels"),
    ]
    assert rows[0].value == rows[1].value  # the same encoder twice


def test_the_null_controls_stand_beside_their_effects():
    rows = rows_of(
        ("clean", "a", "acc", 0.9),
        ("clean", "a", "asr", 0.01),
        ("clean", "a", "asr_other_trigger", 0.02),
        ("clean", "a", "fp", 3),
        ("clean", "a", "fp_other_trigger", 4.5),
        ("attacked", "a", "acc", 0.89),
        ("attacked", "a", "asr", 0.97),
        ("attacked", "a", "asr_other_trigger", 0.05),
        ("attacked", "a", "fp", 40),
        ("attacked", "a", "fp_other_trigger", 2.0),
        ("kd_on_clean", "a", "acc", 0.85),
        ("kd_on_clean", "a", "asr", 0.03),
        ("kd", "a", "acc", 0.86),
        ("kd", "a", "asr", 0.04),
    )
    lines = format_backdoor_table(rows, "mlp").splitlines()
    head = ["dataset", "encoder", "accuracy", "ASR", "ASR", "other", "FP", "FP", "other", "clean"]
    assert lines[0].split() == [*head, "time", "s"]
    assert lines[2].split() == ["a", "clean", "0.9000", "0.0100", "0.0200", "3", "4.5", "-", "-"]
    assert lines[3].split()[2:7] == ["0.8900", "0.9700", "0.0500", "40", "2.0"]
    assert [line.split()[1] for line in lines[4:6]] == ["kd", "kd_on_clean"]  # side by side
    control = next(line for line in lines if line.startswith("a, kd_on_clean:"))
    assert "accuracy cost CA − acc 0.0500, ASR 0.0300" in control
    assert sum("unseen triggers" in line for line in lines) == 1


def test_the_filters_table_and_the_zero_shot_rows_of_a_defense():
    from sslpoison.results.report import format_filters, summary_tables

    rows = [
        Row(None, "spectral", "filter", "poison_precision", 0.5, "spectral/poison_precision"),
        Row(None, "spectral", "filter", "poison_recall", 0.25, "spectral/poison_recall"),
        Row(None, "spectral", "filter", "removed", 30, "spectral/removed"),
        Row(None, "safeclip", "filter", "clean_removed", 0.1, "safeclip/clean_removed"),
    ]
    lines = format_filters(rows).splitlines()
    assert lines[0].split() == ["defense", "precision", "recall", "clean", "out", "removed"]
    assert lines[2].split() == ["safeclip", "-", "-", "0.1000", "-"]
    assert lines[3].split() == ["spectral", "0.5000", "0.2500", "-", "30"]
    assert "spectral: spectral signatures (Tran et al.)" in lines
    assert format_filters(rows[:0]) is None
    zs = [
        Row("d", "clean", "zero_shot", "zs_acc", 0.8, "d/zs_acc_clean"),
        Row("d", "attacked", "zero_shot", "zs_acc", 0.79, "d/zs_acc"),
        Row("d", "attacked", "zero_shot", "zs_asr", 0.99, "d/zs_asr"),
        Row("d", "safeclip", "zero_shot", "zs_acc", 0.77, "safeclip/d/zs_acc"),
        Row("d", "safeclip", "zero_shot", "zs_asr", 0.01, "safeclip/d/zs_asr"),
    ]
    table = format_zero_shot(zs).splitlines()
    assert table[4].split() == ["d", "safeclip", "0.7700", "0.0100"]
    assert any("precision" in t for t in summary_tables(rows + zs, "linear"))
