"""Rows for results.json files older than stored rows: made from the config with the key
functions the evaluation uses, kept where the metrics have the key."""

from __future__ import annotations

from sslpoison.attacks.indiscriminate import POISONS, REMOVED_POISONS
from sslpoison.attacks.indiscriminate import Rows as PoisoningRows
from sslpoison.detectors import DETECTORS
from sslpoison.eval.backdoor import backdoor_row
from sslpoison.eval.encoder import probe_key
from sslpoison.eval.rows import Row, metrics_of
from sslpoison.eval.zero_shot import ZERO_SHOT, zs_key
from sslpoison.results.legacy_rows import reconstruct_rows


def by_key(rows):
    return sorted(rows, key=lambda r: r.key)


def test_backdoor_defense_zero_shot_and_detector_rows_come_back_typed():
    config = {
        "attack": {
            "name": "badencoder",
            "targets": [
                {"dataset": "a", "target_class": "cat"},
                {"dataset": "a", "target_class": "dog"},
            ],
        },
        "defenses": [{"name": "mimic", "control": True}],
        "detectors": [{"name": "decree"}],
        "eval": {"datasets": ["a", "b"], "probes": ["mlp", "linear"]},
    }
    rows = []
    for i, probe in enumerate(("mlp", "linear")):
        suffix = "" if i == 0 else f"_{probe}"
        for encoder in ("clean", "attacked", "mimic", "mimic_on_clean"):
            for dataset in ("a", "b"):
                rows.append(backdoor_row(encoder, dataset, probe, "acc", 0.5, suffix))
                rows.append(backdoor_row(encoder, dataset, probe, "asr", 0.25, suffix))
    rows.append(backdoor_row("attacked", "a", "mlp", "asr", 0.75, target="cat"))
    rows.append(backdoor_row("clean", "b", "mlp", "fp", 12))
    rows.append(Row("a", "attacked", ZERO_SHOT, "zs_asr", 0.9, zs_key("attacked", "a", "zs_asr")))
    record = {"mask_l1": 10.0, "relative_norm": 0.01, "flagged": True, "score": 0.01}
    decree = DETECTORS["decree"]()
    rows += decree.rows("attacked", record)
    metrics = metrics_of(rows) | {"unknown/key": 1.0}
    stages = {"detect:decree:attacked": record}
    found = reconstruct_rows(config, metrics, stages)
    assert by_key(found) == by_key(rows)  # every key typed, the unknown one left out
    assert [r.key for r in found] == [k for k in metrics if k != "unknown/key"]


def test_unattacked_and_indiscriminate_rows_come_back_typed():
    plain = {"eval": {"datasets": ["a"], "probes": ["linear", "knn"], "baselines": ["pixels"]}}
    rows = [
        Row("a", who, probe, "acc", 0.5, probe_key("a", probe, who))
        for who in ("clean", "pixels")
        for probe in ("linear", "knn")
    ]
    assert by_key(reconstruct_rows(plain, metrics_of(rows), {})) == by_key(rows)

    poisoning = {
        "attack": {"name": "gc", "countermeasures": [{"name": "sphere"}]},
        "eval": {"datasets": ["a"], "probes": ["linear"]},
    }
    made = PoisoningRows("a")
    made.add(POISONS, 30)
    made.accuracies("linear", None, 0.9, 0.8)
    made.accuracies("finetune", "sphere", 0.9, 0.85)
    made.add(REMOVED_POISONS, 3, "linear", "sphere")
    found = reconstruct_rows(poisoning, metrics_of(made.rows), {})
    assert by_key(found) == by_key(made.rows)
    assert isinstance(next(r for r in found if r.metric == "poisons").value, int)
