"""What the HTML report gathers from stored runs (typed records), and the names it shows:
read from the registries' classes, never from lists of its own."""

from __future__ import annotations

import json

from handmade import backdoor_rows

from sslpoison.attacks import ATTACKS
from sslpoison.attacks.indiscriminate import Rows
from sslpoison.defenses import DEFENSES
from sslpoison.detectors import DETECTORS
from sslpoison.eval.backdoor import ACC, ASR, backdoor_row
from sslpoison.eval.controls import ACC_DROP, ACC_DROP_NULL
from sslpoison.eval.rows import Headline, Metric, Row
from sslpoison.results import names
from sslpoison.results.compare import group_runs
from sslpoison.results.report import format_poisoning_table
from sslpoison.results.report_data import (
    Classes,
    Cost,
    Judged,
    Line,
    classes,
    defense_cost,
    detector_numbers,
    encoder_numbers,
    filter_numbers,
    headline_points,
    over_seeds,
)
from sslpoison.results.store import StoredRun


def stored(rows, seed=0, attack="badencoder", stages=None, artifacts=None, **config):
    """A run as the store holds it, made by hand (no folder)."""
    config = {"name": "p", "seed": seed, "attack": {"name": attack} if attack else {}} | config
    stages, artifacts = stages or {}, artifacts or {}
    return StoredRun("u", "f", config, {}, rows, {}, stages, artifacts, {"seed": seed}, "json")


def test_an_encoder_s_numbers_by_line_with_ca_minus_ba():
    rows = backdoor_rows({"clean": {"acc": 0.9, "asr": 0.1}, "attacked": {"acc": 0.8, "asr": 0.9}})
    rows.append(backdoor_row("attacked", "synthetic", "linear", "acc", 0.5, "_linear"))  # 2nd probe
    rows.append(Row(None, "attacked", "decree", "flagged", 1, "decree/attacked_flagged"))
    found = encoder_numbers(stored(rows, eval={"probes": ["mlp", "linear"]}))
    attacked = Line("synthetic", "attacked", "mlp")
    assert set(found) == {Line("synthetic", "clean", "mlp"), attacked}  # no verdict, no 2nd probe
    assert found[attacked] == {ACC.name: 0.8, ASR.name: 0.9, ACC_DROP.name: 0.9 - 0.8}
    assert ACC_DROP.name not in found[Line("synthetic", "clean", "mlp")]


def test_numbers_over_seeds_filters_detectors_and_costs():
    runs = []
    for seed, value in enumerate((0.5, 0.7)):
        rows = [
            Row(None, "patchsearch", "filter", "poison_recall", value, "patchsearch/poison_recall"),
            Row(None, "attacked", "decree", "flagged", seed, "decree/attacked_flagged"),
        ]
        stages = {"defense:patchsearch": {"clean_images": 10, "wall_s": 5.0, "retrain_s": 2.0}}
        runs.append(stored(rows, seed, stages=stages))
    (group,) = group_runs(runs)
    assert over_seeds(group, filter_numbers) == {"patchsearch": {"poison_recall": [0.5, 0.7]}}
    verdicts = over_seeds(group, detector_numbers)
    assert verdicts == {Judged("decree", "attacked"): {"flagged": [0, 1]}}
    assert defense_cost(runs[0], "patchsearch") == Cost(10, 7.0)
    assert defense_cost(runs[0], "mimic") == Cost(None, None)


def test_class_names_come_from_the_confusion_matrices(tmp_path):
    path = tmp_path / "confusion.json"
    path.write_text(json.dumps({"d": {"classes": ["cat", "dog"], "triggered": {"dog": {}}}}))
    found = classes(stored([], artifacts={"confusion": str(path)}))
    assert found == Classes({"d": ["cat", "dog"]}, {"d": ["dog"]})
    assert found.name("d", 1) == "dog" and found.name("d", 7) == "7" and found.name("e", 0) == "0"
    assert found.target(Line("d", "attacked", "mlp")) == "dog"
    assert found.target(Line("d", "attacked", "mlp", target="cat")) == "cat"
    assert classes(stored([], artifacts={"confusion": str(tmp_path / "gone.json")})) == Classes()


def test_headline_points_one_per_setting_and_encoder_line():
    runs = []
    for seed in (0, 1):
        made = Rows("d")
        made.accuracies("linear", None, 0.9, 0.8 - 0.1 * seed)
        made.null(["linear"], None, 0.9, 0.89)
        made.accuracies("linear", "sphere", 0.9, 0.88)
        made.null(["linear"], "sphere", 0.9, 0.9)
        runs.append(stored(made.rows, seed, attack="gc"))
    points = headline_points(group_runs(runs), Headline(ACC_DROP_NULL, ACC_DROP, diagonal=True))
    found = [(p.colour, p.marker) for p in points]
    assert found == [("p", "clean · none"), ("p", "clean · sphere")]
    plain = points[0]
    assert round(plain.y, 6) == 0.15 and round(plain.x, 6) == 0.01 and plain.y_std > 0
    assert plain.x_std == 0


def test_reports_read_titles_and_metrics_from_the_registries(monkeypatch):
    for registry in (ATTACKS, DEFENSES, DETECTORS):
        for kind in registry.values():
            metric_names = [m.name for m in kind.metrics]
            assert len(set(metric_names)) == len(metric_names), kind
    assert all(kind.title for kind in ATTACKS.values())
    assert names.attack_title("badencoder") == ATTACKS["badencoder"].title == "BadEncoder"
    assert names.detector_title("decree") == "DECREE (Feng et al.)"
    assert names.attack_title("unknown") == "unknown"
    assert names.attack_title(None) == names.NO_ATTACK
    assert all(kind.headline is not None for kind in ATTACKS.values())
    # A new attack declares its own title, numbers and columns; the reports pick them up.
    special = Metric("special", "special number", 2)

    class Mine(ATTACKS["label_flip"]):
        title = "My attack"
        metrics = (*ATTACKS["label_flip"].metrics, special)
        summary_columns = (ACC_DROP, special)

    monkeypatch.setitem(ATTACKS, "mine", Mine)
    assert names.attack_title("mine") == "My attack"
    assert special in names.encoder_metrics()
    made = Rows("d")
    made.accuracies("linear", None, 0.9, 0.8)
    made.add(special, 0.123)
    table = format_poisoning_table(made.rows).splitlines()
    assert table[0].split()[-2:] == ["special", "number"] and table[2].split()[-1] == "0.12"
